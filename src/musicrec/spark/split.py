"""The three time windows on Spark: the same labels and ``split.json`` as :mod:`musicrec.split`."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import TYPE_CHECKING

from musicrec.config import SplitConfig
from musicrec.schema import C, DataContractError
from musicrec.spark.frames import STARTED_NS, day_ns, ns_date, read_interactions
from musicrec.split import split_summary

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def window_column(label_start: dt.date, test_start: dt.date) -> Column:
    """``history``/``labels``/``test`` for each row, from its :data:`~musicrec.spark.frames.STARTED_NS`
    (before midnight of ``label_start``: history; before midnight of ``test_start``: labels)."""
    from pyspark.sql import functions as F

    ts = F.col(STARTED_NS)
    return (
        F.when(ts < F.lit(day_ns(label_start)), F.lit("history"))
        .when(ts < F.lit(day_ns(test_start)), F.lit("labels"))
        .otherwise(F.lit("test"))
        .alias("window")
    )


def with_windows(interactions: DataFrame, label_start: dt.date, test_start: dt.date) -> DataFrame:
    """``interactions`` with a ``window`` column (:func:`window_column`)."""
    return interactions.withColumn("window", window_column(label_start, test_start))


def compute_split(
    spark: SparkSession,
    interactions: str | Path | DataFrame,
    cfg: SplitConfig,
    file: str = "interactions.parquet",
) -> dict:
    """:func:`musicrec.split.compute_split` on Spark: the resolved boundaries and the row, user and
    cold-user counts per window, as the same dict (what ``split.json`` holds)."""
    from pyspark.sql import DataFrame as SparkFrame
    from pyspark.sql import functions as F

    lf = interactions if isinstance(interactions, SparkFrame) else read_interactions(spark, interactions)
    bounds = lf.agg(F.min(STARTED_NS), F.max(STARTED_NS), F.count(F.lit(1))).first()
    if bounds[0] is None:
        raise DataContractError(file, C.started_at, "no interactions at all")
    first_day, last_day, n_events = ns_date(int(bounds[0])), ns_date(int(bounds[1])), int(bounds[2])

    def day_at_share(share: float) -> dt.date:
        """The day of the earliest of the last ``ceil(share * events)`` events by time."""
        last = max(1, math.ceil(share * n_events))
        latest = lf.select(STARTED_NS).orderBy(F.col(STARTED_NS).desc()).limit(last)
        return ns_date(int(latest.agg(F.min(STARTED_NS)).first()[0]))

    label_start, test_start = cfg.resolve(first_day, last_day, day_at_share)

    per_window = (
        with_windows(lf.select(C.user_id, STARTED_NS), label_start, test_start)
        .groupBy("window")
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct(C.user_id).alias("users"))
        .collect()
    )
    counts = {row["window"]: {"rows": row["rows"], "users": row["users"]} for row in per_window}
    first_seen = F.col("first_seen")
    seen = (
        lf.groupBy(C.user_id)
        .agg(F.min(STARTED_NS).alias("first_seen"))
        .agg(
            F.sum((first_seen >= F.lit(day_ns(test_start))).cast("long")).alias("test"),
            F.sum(
                ((first_seen >= F.lit(day_ns(label_start))) & (first_seen < F.lit(day_ns(test_start)))).cast(
                    "long"
                )
            ).alias("labels"),
        )
        .first()
    )

    cold = {name: int(seen[name] or 0) for name in ("labels", "test")}
    return split_summary(first_day, last_day, label_start, test_start, counts, cold, file)
