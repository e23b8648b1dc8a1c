"""``engine: spark``: the steps that grow with the data, on Apache Spark.

This package imports without pyspark; the Spark modules import it when called. The ``run_*``
functions are the engine switch: with ``profile.engine == "local"`` they call the local
(polars) code as it is, with ``"spark"`` the Spark twin in :mod:`musicrec.spark.popular`,
:mod:`~musicrec.spark.metrics`, :mod:`~musicrec.spark.recall` and :mod:`~musicrec.spark.split`,
and return the same polars results. What runs on Spark so far: top-popular, the per-user ranking
metrics and coverage, candidate recall, the time split, and ALS user-to-item and item-to-item
(:mod:`musicrec.spark.als`).

What the stages run on Spark with ``engine: spark``: the data stage's split (``split.json``,
:func:`run_split` in :func:`musicrec.data.build_dataset`); in the candidates stage
(:class:`musicrec.candidates.stage.CandidateStage`) each window's top-popular list (from
:func:`musicrec.spark.als.window_listens`) and ALS; and the candidate recall of notebook 03
(:func:`run_candidate_recall`, which takes the targets as a parquet path or a polars frame).
:func:`ranking_values` in the evaluation stage: every model's per-user ranking metrics (the table
and the curves), whose means and bootstrap intervals the driver takes. :func:`run_metrics` and
:func:`run_top_popular` are not called by a stage yet. See the README,
"Running on Apache Spark".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from musicrec.schema import C
from musicrec.spark.session import EngineUnavailable, require_engine, spark_session

if TYPE_CHECKING:
    from musicrec.config import Profile
    from musicrec.spark.metrics import RankingValues

__all__ = [
    "EngineUnavailable",
    "require_engine",
    "run_candidate_recall",
    "run_metrics",
    "run_split",
    "ranking_values",
    "run_top_popular",
    "spark_session",
]


def run_top_popular(
    profile: Profile, interactions: str | Path, out: str | Path | None = None, n: int | None = None
) -> pl.DataFrame:
    """Top-popular of an interactions parquet on the profile's engine, with the profile's
    ``candidates.top_popular`` settings (``n`` overrides its length); written to ``out`` when given.
    """
    cfg = profile.candidates.top_popular
    n = cfg.n if n is None else n
    if profile.engine == "spark":
        from musicrec.spark import popular

        spark = spark_session(profile)
        if out is not None:
            return popular.top_popular_parquet(spark, interactions, out, n, cfg.days)
        return popular.top_popular(popular.read_interactions(spark, interactions), n, cfg.days)
    from musicrec.candidates.popular import top_popular
    from musicrec.io import write_parquet

    result = top_popular(pl.scan_parquet(interactions), n, cfg.days)
    if out is not None:
        write_parquet(result, out)
    return result


def run_candidate_recall(
    profile: Profile,
    folder: str | Path,
    targets: str | Path | pl.DataFrame,
    ns: Sequence[int] | None = None,
) -> pl.DataFrame:
    """Candidate recall of the lists in ``folder`` against ``targets`` (``user_id, track_id``: a
    parquet path, or a polars frame such as :func:`musicrec.candidates.stage.labels_targets`
    gives) on the profile's engine; ``ns`` defaults to ``candidates.recall_at``."""
    ns = list(profile.candidates.recall_at if ns is None else ns)
    if profile.engine == "spark":
        from musicrec.spark import recall

        spark = spark_session(profile)
        if isinstance(targets, pl.DataFrame):  # typed, so that an empty frame works too
            pairs = targets.select(pl.col(C.user_id, C.track_id).cast(pl.Int64)).to_pandas()
            frame = spark.createDataFrame(pairs, schema=f"{C.user_id} long, {C.track_id} long")
        else:
            frame = spark.read.parquet(str(targets))
        return recall.candidate_recall(spark, Path(folder), frame, ns)
    from musicrec.candidates.recall import candidate_recall

    frame = targets if isinstance(targets, pl.DataFrame) else pl.read_parquet(targets)
    return candidate_recall(Path(folder), frame, ns)


def run_split(profile: Profile, interactions: str | Path) -> dict:
    """The split of an interactions parquet (what ``split.json`` holds) on the profile's engine."""
    if profile.engine == "spark":
        from musicrec.spark import split

        return split.compute_split(spark_session(profile), interactions, profile.split, str(interactions))
    from musicrec.split import compute_split

    return compute_split(interactions, profile.split, str(interactions))


def ranking_values(profile: Profile) -> RankingValues | None:
    """The engine of the evaluation's per-user ranking metrics (``ranking_values`` of
    :func:`musicrec.evaluation.evaluate_each_model`): Spark's with ``engine: spark``
    (:class:`musicrec.spark.metrics.RankingValues`), else ``None`` (the local one)."""
    if profile.engine != "spark":
        return None
    from musicrec.spark.metrics import RankingValues

    return RankingValues(spark_session(profile))


def run_metrics(
    profile: Profile,
    recos: str | Path,
    relevant: str | Path,
    ks: Sequence[int] | None = None,
    users: Iterable[int] | None = None,
) -> pl.DataFrame:
    """``metric, k, value``: precision, recall, NDCG, MAP and hit rate at ``ks`` (default
    ``evaluation.ks``), means over the evaluated users, on the profile's engine."""
    ks = sorted(set(profile.evaluation.ks if ks is None else ks))
    if profile.engine == "spark":
        from musicrec.spark import metrics

        return metrics.evaluate_parquet(spark_session(profile), recos, relevant, ks, users=users)
    from musicrec import metrics as local

    classes = (local.Precision, local.Recall, local.NDCG, local.MAP, local.HitRate)
    wanted = [cls(k) for cls in classes for k in ks]
    users_series = None if users is None else pl.Series(list(users))
    results = local.evaluate_per_user(pl.read_parquet(recos), pl.read_parquet(relevant), wanted, users_series)
    rows = [
        {"metric": m.name, "k": int(m.k), "value": local._mean(frame)}
        for m, frame in zip(wanted, results, strict=True)
    ]
    return pl.DataFrame(rows, schema={"metric": pl.Utf8, "k": pl.Int32, "value": pl.Float64})
