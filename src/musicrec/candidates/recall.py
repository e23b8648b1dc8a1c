"""Candidate recall: how many of the labels-window listens the generators' lists contain.

It bounds what a ranker trained on these candidates can reach.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from musicrec.generators import USER_LISTS
from musicrec.schema import C


def candidate_recall(folder: Path, targets: pl.DataFrame, ns: list[int]) -> pl.DataFrame:
    """Share of ``targets`` (``user_id, track_id`` listens) found in each generator's top ``n``.

    ``top_popular`` counts as the same list for every user. The ``union`` row is the
    share found in at least one generator's top ``n`` (top-popular included). A list
    shorter than ``n`` (i2i and content lists can be) counts in full.
    """
    targets = targets.select(C.user_id, C.track_id).unique()
    total = targets.height
    rows = []
    for n in ns:
        found_any = targets.with_columns(pl.lit(False).alias("found"))
        popular_path = folder / "top_popular.parquet"
        if popular_path.is_file():
            popular = pl.read_parquet(popular_path)
            top = popular.filter(pl.col(C.rank) <= n).get_column(C.track_id)
            hit = targets.get_column(C.track_id).is_in(top.implode())
            rows.append(_row("top_popular", n, int(hit.sum()), total))
            found_any = found_any.with_columns((pl.col("found") | hit).alias("found"))
        for name in USER_LISTS:
            path = folder / f"{name}.parquet"
            if not path.is_file():
                continue
            # stream the lists past a hash of the (smaller) targets: memory stays flat at full scale
            hits = (
                pl.scan_parquet(path)
                .filter(pl.col(C.rank) <= n)
                .select(C.user_id, C.track_id)
                .join(targets.lazy(), on=[C.user_id, C.track_id], how="inner")
                .unique()
                .with_columns(pl.lit(True).alias(name))
                .collect(engine="streaming")
            )
            found_any = found_any.join(hits, on=[C.user_id, C.track_id], how="left")
            hit = found_any.get_column(name).fill_null(False)
            rows.append(_row(name, n, int(hit.sum()), total))
            found_any = found_any.with_columns((pl.col("found") | hit).alias("found")).drop(name)
        rows.append(_row("union", n, int(found_any.get_column("found").sum()), total))
    return pl.DataFrame(rows)


def _row(generator: str, n: int, found: int, total: int) -> dict:
    return {
        "generator": generator,
        "n": n,
        "found": found,
        "targets": total,
        "recall": found / total if total else float("nan"),
    }
