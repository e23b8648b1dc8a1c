"""Top-popular on Spark: the same list as :func:`musicrec.candidates.popular.top_popular`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from musicrec.candidates.base import GLOBAL_SCHEMA
from musicrec.io import write_parquet
from musicrec.schema import C
from musicrec.spark.frames import STARTED_NS, day_ns, ns_date, read_interactions, to_polars

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def top_popular(interactions: DataFrame, n: int = 100, days: int | None = None) -> pl.DataFrame:
    """The ``n`` tracks with the most distinct listeners over the last ``days`` (all when None).

    ``interactions`` has ``user_id``, ``track_id`` and :data:`~musicrec.spark.frames.STARTED_NS`
    (:func:`~musicrec.spark.frames.read_interactions`). The same definition as the local one:
    ``score`` = distinct listeners, ties broken by the smaller ``track_id``, ``rank`` 1..n; the
    window starts at midnight ``days - 1`` days before the day of the last listen. Returns a
    polars frame in :data:`~musicrec.candidates.base.GLOBAL_SCHEMA` (the list is small).
    """
    from pyspark.sql import functions as F

    frame = interactions
    if days is not None:
        last = frame.agg(F.max(STARTED_NS)).first()[0]
        if last is not None:
            start = ns_date(int(last)) - dt.timedelta(days=days - 1)
            frame = frame.filter(F.col(STARTED_NS) >= F.lit(day_ns(start)))
    top = (
        frame.groupBy(C.track_id)
        .agg(F.countDistinct(C.user_id).alias(C.score))
        .orderBy(F.col(C.score).desc(), F.col(C.track_id).asc())
        .limit(n)
    )
    result = to_polars(top)
    if result.is_empty():  # no listens: the empty list, typed like the local one
        return pl.DataFrame(schema=GLOBAL_SCHEMA)
    return (
        result.sort([C.score, C.track_id], descending=[True, False])
        .with_columns(pl.int_range(1, pl.len() + 1).alias(C.rank))
        .select(list(GLOBAL_SCHEMA))
        .cast(GLOBAL_SCHEMA)
    )


def top_popular_parquet(
    spark: SparkSession, interactions: str | Path, out: str | Path, n: int = 100, days: int | None = None
) -> pl.DataFrame:
    """:func:`top_popular` from an interactions parquet, written to ``out`` (one parquet file,
    atomically, the local engine's schema); returns the list."""
    result = top_popular(read_interactions(spark, interactions), n, days)
    write_parquet(result, out)
    return result
