"""The ranking metrics of :mod:`musicrec.metrics` on Spark: per user, every k in one pass.

The definitions are exactly the local ones (see that module's docstring):

* a user's list is read in ``(rank, track_id)`` order, rows numbered 1, 2, ... (the *position*);
  the top k is positions 1..k;
* ``relevant`` pairs count once; the evaluated users are those of ``relevant`` (within
  ``users`` when given) that have at least one relevant item; a user without
  recommendations scores 0; lists of other users are ignored;
* a track listed twice is a hit once, at its best position;
* Precision@k = hits / k (k even when the list is shorter), Recall@k = hits / |relevant|,
  NDCG@k = DCG / ideal DCG over min(|relevant|, k) (binary gain, ``1/log2(position + 1)``),
  MAP@k = sum over hits of (hit number / position), / min(|relevant|, k),
  HitRate@k = 1 if any hit;
* coverage@k: distinct tracks in the top k of the evaluated users (``users``, else those of
  ``relevant``, else every user of ``recos``) / ``n_items``.

The per-user table has one row per (evaluated user, k); means and any bootstrap are taken on the
driver from it (:func:`metric_means`, :func:`per_user_frame`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from musicrec.metrics import POSITION, VALUE, RankingMetric, TopLists, ideal_dcg
from musicrec.schema import C
from musicrec.spark.frames import to_polars, write_large

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The per-user metrics, by their names in :mod:`musicrec.metrics`.
RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hitrate")
HIT_INDEX = "hit_index"


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = sorted(set(ks))
    if not ks or any(isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    return [int(k) for k in ks]


def _users_frame(spark: SparkSession, users: DataFrame | Iterable[int] | None) -> DataFrame | None:
    if users is None:
        return None
    from pyspark.sql import DataFrame as SparkFrame

    if isinstance(users, SparkFrame):
        return users.select(users[C.user_id].cast("int").alias(C.user_id)).distinct()
    ids = sorted({int(u) for u in users})
    return spark.createDataFrame([(u,) for u in ids], f"{C.user_id} int")


def top_lists(recos: DataFrame, max_k: int) -> DataFrame:
    """``user_id, track_id, position`` of each user's first ``max_k`` rows in ``(rank, track_id)``
    order (ties in rank broken by the smaller track id, gaps closed)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy(C.user_id).orderBy(F.col(C.rank).asc(), F.col(C.track_id).asc())
    return (
        recos.select(
            F.col(C.user_id).cast("int").alias(C.user_id),
            F.col(C.track_id).cast("int").alias(C.track_id),
            F.col(C.rank),
        )
        .withColumn(POSITION, F.row_number().over(order))
        .filter(F.col(POSITION) <= max_k)
        .drop(C.rank)
    )


def per_user_metrics(
    recos: DataFrame,
    relevant: DataFrame,
    ks: Sequence[int],
    users: DataFrame | Iterable[int] | None = None,
) -> DataFrame:
    """Every ranking metric at every k, per evaluated user.

    Returns ``user_id, k, n_relevant, n_hits`` and one column per name of
    :data:`RANKING_METRICS` (doubles), one row per (evaluated user, k).
    """
    from pyspark.sql import functions as F

    ks = _check_ks(ks)
    spark = recos.sparkSession
    rel = relevant.select(
        F.col(C.user_id).cast("int").alias(C.user_id), F.col(C.track_id).cast("int").alias(C.track_id)
    ).distinct()
    user_set = _users_frame(spark, users)
    if user_set is not None:
        rel = rel.join(user_set, on=C.user_id, how="left_semi")
    n_rel = rel.groupBy(C.user_id).agg(F.count(F.lit(1)).cast("long").alias("n_relevant"))

    hits = (
        top_lists(recos, max(ks))
        .join(rel, on=[C.user_id, C.track_id], how="left_semi")
        .groupBy(C.user_id, C.track_id)
        .agg(F.min(POSITION).alias(POSITION))  # a track listed twice: its best position
    )
    from pyspark.sql import Window

    by_position = Window.partitionBy(C.user_id).orderBy(F.col(POSITION).asc())
    hits = hits.withColumn(HIT_INDEX, F.row_number().over(by_position))

    ks_frame = F.broadcast(spark.createDataFrame([(k,) for k in ks], "k int"))
    position = F.col(POSITION).cast("double")
    stats = (
        hits.join(ks_frame, F.col(POSITION) <= F.col("k"))
        .groupBy(C.user_id, "k")
        .agg(
            F.count(F.lit(1)).cast("long").alias("n_hits"),
            F.sum(F.lit(1.0) / F.log2(position + F.lit(1.0))).alias("dcg"),
            F.sum(F.col(HIT_INDEX).cast("double") / position).alias("ap_sum"),
        )
    )
    ideal = ideal_dcg(np.arange(max(ks) + 1))
    ideal_frame = F.broadcast(
        spark.createDataFrame([(m, float(v)) for m, v in enumerate(ideal)], "m long, ideal_dcg double")
    )
    table = (
        n_rel.crossJoin(ks_frame)
        .join(stats, on=[C.user_id, "k"], how="left")
        .fillna({"n_hits": 0, "dcg": 0.0, "ap_sum": 0.0})
        .withColumn("m", F.least(F.col("n_relevant"), F.col("k").cast("long")))
        .join(ideal_frame, on="m", how="left")
    )
    hits_d = F.col("n_hits").cast("double")
    return table.select(
        C.user_id,
        "k",
        "n_relevant",
        "n_hits",
        (hits_d / F.col("k").cast("double")).alias("precision"),
        (hits_d / F.col("n_relevant").cast("double")).alias("recall"),
        (F.col("dcg") / F.col("ideal_dcg")).alias("ndcg"),
        (F.col("ap_sum") / F.col("m").cast("double")).alias("map"),
        (F.col("n_hits") > 0).cast("double").alias("hitrate"),
    )


def per_user_frame(per_user: DataFrame | pl.DataFrame, metric: str, k: int) -> pl.DataFrame:
    """One metric at one k as the local engine gives it: ``user_id`` (Int32), ``value``
    (Float64), sorted by user."""
    if metric not in RANKING_METRICS:
        raise ValueError(f"metric must be one of {RANKING_METRICS}, got {metric!r}")
    frame = per_user if isinstance(per_user, pl.DataFrame) else to_polars(per_user)
    return (
        frame.filter(pl.col("k") == k)
        .select(pl.col(C.user_id).cast(pl.Int32), pl.col(metric).cast(pl.Float64).alias(VALUE))
        .sort(C.user_id)
    )


def metric_means(per_user: DataFrame, ks: Sequence[int]) -> pl.DataFrame:
    """``metric, k, value``: each metric's mean over the evaluated users (NaN without any)."""
    from pyspark.sql import functions as F

    means = to_polars(per_user.groupBy("k").agg(*(F.avg(m).alias(m) for m in RANKING_METRICS)))
    found = {row["k"]: row for row in means.to_dicts()}
    rows = [
        {
            "metric": m,
            "k": int(k),
            "value": math.nan if found.get(k, {}).get(m) is None else float(found[k][m]),
        }
        for m in RANKING_METRICS
        for k in _check_ks(ks)
    ]
    return pl.DataFrame(rows, schema={"metric": pl.Utf8, "k": pl.Int32, "value": pl.Float64})


class RankingValues:
    """The per-user ranking metrics of :mod:`musicrec.evaluation` on Spark (``engine: spark``).

    Called as :func:`musicrec.metrics.ranking_values` is (a
    :data:`musicrec.evaluation.RankingValues`): the lists and the relevant pairs go to Spark
    (through Arrow, so no shared file system is needed), :func:`per_user_metrics` joins them
    there, and only the per-user values come back, for the driver's means and bootstrap
    intervals. The same users and values as the local engine (a test checks it).
    """

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def __call__(
        self,
        lists: TopLists,
        relevant: pl.DataFrame,
        metrics: Sequence[RankingMetric],
        users: pl.Series | Iterable[int] | None = None,
    ) -> list[pl.DataFrame]:
        metrics = list(metrics)
        unknown = sorted({m.name for m in metrics} - set(RANKING_METRICS))
        if unknown:
            raise ValueError(f"Spark computes the ranking metrics {RANKING_METRICS}, not {unknown}")
        if not metrics:
            return []
        recos = self._frame(lists.frame.rename({POSITION: C.rank}), (C.user_id, C.track_id, C.rank))
        targets = self._frame(relevant, (C.user_id, C.track_id))
        chosen = (
            None
            if users is None
            else self._frame(pl.DataFrame({C.user_id: pl.Series(list(users))}), (C.user_id,))
        )
        table = to_polars(per_user_metrics(recos, targets, sorted({m.k for m in metrics}), chosen))
        return [per_user_frame(table, m.name, m.k) for m in metrics]

    def _frame(self, frame: pl.DataFrame, columns: Sequence[str]) -> DataFrame:
        """``columns`` of a driver frame as a Spark frame of ints (typed: an empty frame works too)."""
        ints = frame.select(pl.col(c).cast(pl.Int32) for c in columns).to_pandas()
        return self.spark.createDataFrame(ints, schema=", ".join(f"{c} int" for c in columns))


def coverage(
    recos: DataFrame,
    k: int,
    n_items: int,
    relevant: DataFrame | None = None,
    users: DataFrame | Iterable[int] | None = None,
) -> float:
    """Catalogue coverage@k: distinct tracks in the evaluated users' top k / ``n_items``."""
    from pyspark.sql import functions as F

    _check_ks([k])
    if n_items < 1:
        raise ValueError(f"coverage needs the catalogue size n_items >= 1, got {n_items}")
    lists = top_lists(recos, k)
    user_set = _users_frame(recos.sparkSession, users)
    if user_set is None and relevant is not None:
        user_set = relevant.select(F.col(C.user_id).cast("int").alias(C.user_id)).distinct()
    if user_set is not None:
        lists = lists.join(user_set, on=C.user_id, how="left_semi")
    return lists.agg(F.countDistinct(C.track_id)).first()[0] / n_items


def evaluate_parquet(
    spark: SparkSession,
    recos: str | Path,
    relevant: str | Path,
    ks: Sequence[int],
    out: str | Path | None = None,
    users: Iterable[int] | None = None,
) -> pl.DataFrame:
    """:func:`per_user_metrics` of two parquet files (``recos``: user_id, track_id, rank;
    ``relevant``: user_id, track_id), the per-user table written to ``out`` (a parquet folder)
    when given; returns :func:`metric_means`."""
    table = per_user_metrics(spark.read.parquet(str(recos)), spark.read.parquet(str(relevant)), ks, users)
    if out is not None:
        write_large(table, out)
        table = spark.read.parquet(str(out))
    return metric_means(table, ks)
