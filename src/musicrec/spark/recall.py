"""Candidate recall on Spark: the same table as :func:`musicrec.candidates.recall.candidate_recall`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from musicrec.candidates.recall import _row
from musicrec.generators import USER_LISTS
from musicrec.schema import C

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _pairs(frame: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return frame.select(
        F.col(C.user_id).cast("int").alias(C.user_id), F.col(C.track_id).cast("int").alias(C.track_id)
    )


def candidate_recall(spark: SparkSession, folder: Path, targets: DataFrame, ns: list[int]) -> pl.DataFrame:
    """Share of ``targets`` (``user_id, track_id``) found in each generator's top ``n``.

    The same definition as the local one: targets are distinct pairs; ``top_popular`` is one
    list for every user; a list shorter than ``n`` counts in full; the ``union`` row counts a
    target found by at least one generator. A generator's list is ``<folder>/<name>.parquet``,
    a file or (written by Spark) a folder of part files. Returns the small table as polars.
    """
    from pyspark.sql import functions as F

    folder = Path(folder)
    targets = _pairs(targets).distinct().cache()
    total = targets.count()
    rows = []
    for n in ns:
        found = []
        popular_path = folder / "top_popular.parquet"
        if popular_path.exists():
            top = spark.read.parquet(str(popular_path)).filter(F.col(C.rank) <= n)
            top = top.select(F.col(C.track_id).cast("int").alias(C.track_id)).distinct()
            hit = targets.join(F.broadcast(top), on=C.track_id, how="left_semi")
            rows.append(_row("top_popular", n, hit.count(), total))
            found.append(hit.select(C.user_id, C.track_id))
        for name in USER_LISTS:
            path = folder / f"{name}.parquet"
            if not path.exists():
                continue
            lists = _pairs(spark.read.parquet(str(path)).filter(F.col(C.rank) <= n)).distinct()
            hit = targets.join(lists, on=[C.user_id, C.track_id], how="left_semi")
            rows.append(_row(name, n, hit.count(), total))
            found.append(hit)
        union = 0
        if found:
            merged = found[0]
            for other in found[1:]:
                merged = merged.unionByName(other)
            union = merged.distinct().count()
        rows.append(_row("union", n, union, total))
    targets.unpersist()
    return pl.DataFrame(rows)
