"""The metrics table: every model, every metric and segment, with bootstrap intervals, in one pass."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from musicrec.evaluation.common import (
    ALL,
    COLD,
    CURVE_KS,
    METRICS_SCHEMA,
    RANKING_METRICS,
    SEGMENT_ORDER,
    ListsLike,
    RankingValues,
    _mean,
)
from musicrec.evaluation.lists import _collect_lists, _users_frame
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.metrics import (
    NDCG,
    VALUE,
    Coverage,
    IntraListDiversity,
    ListMetric,
    Metric,
    Novelty,
    RankingMetric,
    Recall,
    TopLists,
    bootstrap_ci,
)
from musicrec.metrics import (
    ranking_values as local_ranking_values,
)
from musicrec.progress import step
from musicrec.schema import C


def _segment_order(names: Iterable[str]) -> list[str]:
    names = set(names)
    return [s for s in SEGMENT_ORDER if s in names] + sorted(names - set(SEGMENT_ORDER))


def _evaluate_groups(
    model: str,
    recos: pl.DataFrame,
    test: pl.DataFrame,
    groups: dict[str, pl.Series],
    ranking: Sequence[RankingMetric],
    beyond: Sequence[ListMetric],
    beyond_k: int,
    n_boot: int,
    alpha: float,
    seed: int,
    ranking_values: RankingValues | None = None,
) -> list[dict]:
    """Every metric of one model's lists, for each group of users, from one join of lists and test
    (on the engine of ``ranking_values``; the local one by default)."""
    max_k = max([m.k for m in ranking] + [m.k for m in beyond] + [beyond_k])
    everyone = pl.concat(list(groups.values())).unique().sort()
    top = TopLists.from_recos(recos, max_k).for_users(everyone)
    per_user: list[tuple[Metric, pl.DataFrame]] = []
    if ranking:
        values = (ranking_values or local_ranking_values)(top, test, ranking, everyone)
        per_user += list(zip(ranking, values, strict=True))
    top_beyond = top.cut(beyond_k)
    per_user += [(m, m.from_lists(top_beyond)) for m in beyond if m.per_user]
    coverage = [m for m in beyond if not m.per_user]
    rows = []
    for segment, users in groups.items():
        members = users.implode()
        for m, frame in per_user:
            values = frame.filter(pl.col(C.user_id).is_in(members)).get_column(VALUE).to_numpy()
            value = float(values.mean()) if values.size else math.nan
            rows.append(_row(model, m, segment, value, *bootstrap_ci(values, n_boot, alpha, seed)))
        for m in coverage:  # a count over every list: no interval
            rows.append(_row(model, m, segment, float(m.from_lists(top.cut(m.k).for_users(users)))))
    return rows


def _row(model: str, metric, segment: str, value: float, lower=None, upper=None) -> dict:
    """One row of the metrics table (:data:`METRICS_SCHEMA`)."""
    return {
        "model": model,
        "k": metric.k,
        "metric": metric.name,
        "segment": segment,
        "value": value,
        "lower": lower,
        "upper": upper,
    }


def _beyond_metrics(
    beyond_k: int,
    train: pl.DataFrame | None,
    tracks: pl.DataFrame | None,
    n_items: int | None,
    listeners: pl.DataFrame | None,
    n_train_users: int | None,
    coverage_at: Sequence[int] = (),
) -> list[ListMetric]:
    """Coverage, novelty and diversity at ``beyond_k``, each where its input is given, and
    coverage at each of ``coverage_at`` too."""
    if n_items is None and tracks is not None:
        n_items = tracks.height
    beyond: list[ListMetric] = []
    if n_items:
        beyond += [Coverage(k, n_items=n_items) for k in sorted({beyond_k, *coverage_at})]
    if train is not None:
        beyond.append(Novelty(beyond_k, train=train.select(C.user_id, C.track_id)))
    elif listeners is not None and n_train_users is not None:
        beyond.append(Novelty(beyond_k, listeners=listeners, n_users=n_train_users))
    if tracks is not None:
        beyond.append(IntraListDiversity(beyond_k, tracks=tracks))
    return beyond


def evaluate_models(
    lists: Mapping[str, ListsLike],
    test: pl.DataFrame,
    segments: pl.DataFrame,
    ks: Sequence[int] = (5, 10, 100),
    beyond_k: int = 10,
    coverage_at: Sequence[int] = (),
    train: pl.DataFrame | None = None,
    tracks: pl.DataFrame | None = None,
    n_items: int | None = None,
    listeners: pl.DataFrame | None = None,
    n_train_users: int | None = None,
    beyond_metrics: Sequence[ListMetric] | None = None,
    cold: ListsLike | None = None,
    cold_models: Sequence[str] = ("top_popular", "final"),
    relevance: Mapping[str, pl.DataFrame] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    ranking_values: RankingValues | None = None,
) -> pl.DataFrame:
    """Every model's metrics on the test window, for all warm users and for each segment.

    Parameters
    ----------
    lists
        ``{model: user_id, track_id, rank}`` for the warm users (:func:`model_lists`,
        plus ``oracle`` where there is one).
    test
        ``user_id, track_id``: the test-window listens (warm and cold users).
    segments
        ``user_id, segment`` (:func:`user_segments`). Every user not ``cold`` is warm;
        segment ``all`` is every warm user.
    ks
        Cut-offs of precision, recall, NDCG, MAP and hit rate.
    beyond_k, coverage_at
        Cut-off of coverage, novelty and diversity; further cut-offs of coverage.
    train, tracks, n_items
        The interactions before the test window (novelty: share of their users who
        heard a track), the tracks with genres (intra-list diversity) and the catalogue
        size (coverage; defaults to ``tracks``' height). A metric whose input is missing
        is left out.
    listeners, n_train_users
        Instead of ``train``, its counts: ``track_id, listeners`` (:func:`popularity`) and
        the number of its users (:func:`history_users`); the same novelty, without the
        interactions in memory.
    beyond_metrics
        Coverage, novelty and diversity already built from those inputs (what
        :func:`evaluate_each_model` does once for every model), used instead of them.
    cold, cold_models
        The cold users' lists (top-popular: :func:`cold_lists`); they are evaluated on
        segment ``cold`` only, under each name of ``cold_models`` (the same list: the
        cold users' final list *is* the top-popular list, which the table makes plain).
    relevance
        Other relevant sets, ``{segment: user_id, track_id}`` (a subset of ``test``; for example
        ``organic``: the test listens that no recommendation drove, :func:`organic_listens`):
        each is a segment of the warm users with one of its listens, judged against those
        listens only.
    ranking_values
        The engine of the per-user ranking metrics (:func:`musicrec.spark.ranking_values`:
        Spark's with ``engine: spark``); ``None``: the local one. The intervals, coverage,
        novelty and diversity are computed here either way.

    Returns
    -------
    ``model, k, metric, segment, value, lower, upper``: the mean over the segment's
    users and its percentile bootstrap interval over users (:func:`musicrec.metrics.bootstrap_ci`,
    the same seed everywhere); coverage has no interval. For the ranking metrics a
    segment user without a list (or with a shorter one) counts as zero for what is
    missing, never left out; users are those with a test listen. Novelty is averaged
    over users with a list, diversity over users with two tracks with genres in their
    top ``beyond_k`` (:mod:`musicrec.metrics`).
    """
    test = test.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
    segments = segments.select(pl.col(C.user_id).cast(pl.Int32), pl.col("segment").cast(pl.Utf8))
    with_test = segments.join(test.select(C.user_id).unique(), on=C.user_id, how="semi")
    warm = with_test.filter(pl.col("segment") != COLD)
    groups = {ALL: warm.get_column(C.user_id).sort()} | {
        name: warm.filter(pl.col("segment") == name).get_column(C.user_id).sort()
        for name in _segment_order(warm.get_column("segment").unique())
        if name != ALL
    }
    cold_users = with_test.filter(pl.col("segment") == COLD).get_column(C.user_id).sort()

    ranking: list[RankingMetric] = [cls(k) for k in ks for cls in RANKING_METRICS.values()]
    beyond = (
        list(beyond_metrics)
        if beyond_metrics is not None
        else _beyond_metrics(beyond_k, train, tracks, n_items, listeners, n_train_users, coverage_at)
    )
    max_k = max([*ks, beyond_k, *coverage_at])

    rows: list[dict] = []
    warm_df = pl.DataFrame({C.user_id: groups[ALL]})
    relevant_sets = {}  # segment: (its listens, its warm users), the same for every model
    for segment, relevant in (relevance or {}).items():
        relevant = relevant.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
        users = relevant.join(warm_df, on=C.user_id, how="semi").get_column(C.user_id).unique().sort()
        relevant_sets[segment] = (relevant, users)
    # every metric of one model's lists for some groups of users, against some relevant listens
    metrics_of = partial(
        _evaluate_groups,
        ranking=ranking,
        beyond=beyond,
        beyond_k=beyond_k,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        ranking_values=ranking_values,
    )
    for model, frame in lists.items():
        recos = _collect_lists(frame, warm_df, max_k)
        rows += metrics_of(model, recos, test, groups)
        for segment, (relevant, users) in relevant_sets.items():
            rows += metrics_of(model, recos, relevant, {segment: users})
    if cold is not None and cold_users.len():
        recos = _collect_lists(cold, pl.DataFrame({C.user_id: cold_users}), max_k)
        once = metrics_of(COLD, recos, test, {COLD: cold_users})  # one list under every name: computed once
        rows += [r | {"model": model} for model in cold_models for r in once]
    out = pl.DataFrame(rows, schema=METRICS_SCHEMA, orient="row")
    return sort_metrics(out)


def beyond_table(metrics: pl.DataFrame, segment: str = ALL) -> pl.DataFrame:
    """Coverage, novelty and diversity of each model on ``segment``, one column per ``metric@k``
    (coverage may be at several list lengths: ``evaluation.coverage_at``), models in order.

    >>> rows = [("a", "coverage", 10, 0.5), ("a", "coverage", 50, 0.8), ("a", "novelty", 10, 3.0)]
    >>> m = pl.DataFrame(rows, schema=["model", "metric", "k", "value"], orient="row")
    >>> beyond_table(m.with_columns(segment=pl.lit("all"))).columns
    ['model', 'coverage@10', 'coverage@50', 'novelty@10']
    """
    return (
        metrics.filter(
            (pl.col("segment") == segment) & pl.col("metric").is_in(["coverage", "novelty", "diversity"])
        )
        .with_columns(pl.format("{}@{}", "metric", "k").alias("metric"))
        .pivot(on="metric", index="model", values="value", maintain_order=True)
    )


def sort_metrics(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows in reading order: models as given, then segment (all, light, medium, heavy, cold), metric, k."""
    metric_order = [
        "precision",
        "recall",
        "ndcg",
        "map",
        "hitrate",
        "coverage",
        "novelty",
        "diversity",
        "sampled_recall",
    ]
    models = list(dict.fromkeys(frame.get_column("model").to_list()))
    segments = _segment_order(frame.get_column("segment").unique().to_list())
    metrics = metric_order + sorted(set(frame.get_column("metric").to_list()) - set(metric_order))

    def position(column: str, order: list[str]) -> pl.Expr:
        return pl.col(column).replace_strict(order, list(range(len(order))), return_dtype=pl.Int32)

    return (
        frame.with_columns(
            position("model", models).alias("_m"),
            position("segment", segments).alias("_s"),
            position("metric", metrics).alias("_x"),
        )
        .sort(["_m", "_s", "_x", "k"])
        .drop("_m", "_s", "_x")
    )


def metric_at(frame: pl.DataFrame, metric: str, k: int = 10, segment: str = ALL) -> pl.DataFrame:
    """The rows of one ``metric@k`` on ``segment`` of an :func:`evaluate_models` table, best first."""
    return frame.filter(
        (pl.col("segment") == segment) & (pl.col("metric") == metric) & (pl.col("k") == k)
    ).sort("value", descending=True)


def headline(
    frame: pl.DataFrame, k: int = 10, segment: str = ALL, metrics: Sequence[str] = ("ndcg", "recall")
) -> pl.DataFrame:
    """One row per model: ``metric@k`` values with their intervals, best NDCG first (for display)."""
    part = frame.filter((pl.col("segment") == segment) & (pl.col("k") == k) & pl.col("metric").is_in(metrics))
    wide = None
    for m in metrics:
        one = part.filter(pl.col("metric") == m).select(
            "model",
            pl.col("value").alias(f"{m}@{k}"),
            pl.col("lower").alias(f"{m}@{k} lower"),
            pl.col("upper").alias(f"{m}@{k} upper"),
        )
        wide = one if wide is None else wide.join(one, on="model", how="full", coalesce=True)
    return wide.sort(f"{metrics[0]}@{k}", descending=True, nulls_last=True)


def write_metrics(frame: pl.DataFrame, paths: RunPaths) -> tuple[Path, Path]:
    """Write ``outputs/<run>/metrics.parquet`` and ``metrics.json`` (a list of row dicts), atomically.

    NaN (a metric with no user to average over) becomes ``null`` in the JSON, which
    has no NaN.
    """
    rows = [
        {key: (None if isinstance(v, float) and math.isnan(v) else v) for key, v in row.items()}
        for row in frame.iter_rows(named=True)
    ]
    return (
        write_parquet(frame, paths.metrics),
        write_json(rows, paths.metrics_json),
    )


@dataclass
class ModelsPass:
    """What :func:`evaluate_each_model` keeps of the models' lists, read one model at a time.

    ``results``: :func:`evaluate_models`' table; ``curves``: :func:`metric_curves`' (warm
    users); ``rows``: each model's list rows (to ``k_max``); ``top``: every model's lists
    cut to ``keep_k`` (the paired comparison, the popularity bias); ``sampled``: the whole
    lists (to ``k_max``) of ``keep_users`` only (the sampled protocol's users).
    """

    results: pl.DataFrame
    curves: pl.DataFrame
    rows: dict[str, int]
    top: dict[str, pl.DataFrame]
    sampled: dict[str, pl.DataFrame]


def evaluate_each_model(
    lists: Mapping[str, ListsLike],
    test: pl.DataFrame,
    segments: pl.DataFrame,
    k_max: int,
    keep_k: int = 10,
    keep_users: pl.Series | None = None,
    curve_ks: Sequence[int] = CURVE_KS,
    cold: ListsLike | None = None,
    model_users: Mapping[str, pl.Series] | None = None,
    progress: bool = False,
    ranking_values: RankingValues | None = None,
    **evaluate: Any,
) -> ModelsPass:
    """:func:`evaluate_models` and :func:`metric_curves` with each model's lists collected once.

    The lists (lazy frames of the files, or frames) are read one model at a time, to
    ``k_max``, and only their first ``keep_k`` positions (and the lists of ``keep_users``)
    are kept, so memory holds one model's whole lists, not every model's: at full scale
    each is some 85M rows. ``evaluate``: the other arguments of :func:`evaluate_models`
    (``ks``, ``beyond_k``, ``tracks``, ``listeners``, ...). The tables are those of the
    functions called on every model at once. ``model_users``: ``{model: users}`` for a model
    that lists only some users (the oracle on a sample, ``evaluation.oracle_max_users``): its
    metrics, curves and kept lists are over those warm users alone, not zeros for the rest.
    ``progress``: a line as each model's lists are read, its metrics and its curves computed.
    ``ranking_values``: the engine of the per-user ranking metrics, of the table and the curves
    (:func:`evaluate_models`).
    """
    segs = segments.select(pl.col(C.user_id).cast(pl.Int32), pl.col("segment").cast(pl.Utf8))
    warm = segs.filter(pl.col("segment") != COLD).join(
        test.select(pl.col(C.user_id).cast(pl.Int32)).unique(), on=C.user_id, how="semi"
    )
    warm_df = pl.DataFrame({C.user_id: warm.get_column(C.user_id).sort()})
    warm_test = test.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32)).join(
        warm_df, on=C.user_id, how="semi"
    )
    keep_df = None if keep_users is None else _users_frame(keep_users)
    inputs = {
        key: evaluate.pop(key, None) for key in ("train", "tracks", "n_items", "listeners", "n_train_users")
    }
    evaluate["beyond_metrics"] = _beyond_metrics(  # built once
        int(evaluate.get("beyond_k", 10)), **inputs, coverage_at=evaluate.get("coverage_at", ())
    )
    tables, curves, rows, top, sampled = [], [], {}, {}, {}
    for i, (name, frame) in enumerate(lists.items(), 1):
        model = f"evaluation: {name} ({i} of {len(lists)})"
        own_segs, own_users = segs, warm_df
        if name in (model_users or {}):
            own_users = warm_df.join(_users_frame(model_users[name]), on=C.user_id, how="semi")
            own_segs = segs.join(own_users, on=C.user_id, how="semi")
        with step(f"{model}: lists read", progress):
            collected = _collect_lists(frame, own_users, k_max)
        rows[name] = collected.height
        with step(f"{model}: metrics", progress):
            tables.append(
                evaluate_models({name: collected}, test, own_segs, ranking_values=ranking_values, **evaluate)
            )
        with step(f"{model}: curves", progress):
            users = own_users.get_column(C.user_id)
            curves.append(metric_curves({name: collected}, warm_test, users, curve_ks, ranking_values))
        top[name] = collected.filter(pl.col(C.rank) <= keep_k)
        if keep_df is not None:
            sampled[name] = collected.join(keep_df, on=C.user_id, how="semi")
        del collected
    if cold is not None:
        tables.append(evaluate_models({}, test, segs, cold=cold, ranking_values=ranking_values, **evaluate))
    results = sort_metrics(pl.concat(tables)) if tables else pl.DataFrame(schema=METRICS_SCHEMA)
    return ModelsPass(results, pl.concat(curves) if curves else pl.DataFrame(), rows, top, sampled)


def metric_curves(
    lists: Mapping[str, ListsLike],
    test: pl.DataFrame,
    users: pl.Series,
    ks: Sequence[int] = CURVE_KS,
    ranking_values: RankingValues | None = None,
) -> pl.DataFrame:
    """``model, k, metric, value``: mean recall@k and NDCG@k over ``users`` for every k (no intervals),
    on the engine of ``ranking_values`` (the local one by default)."""
    users_df = _users_frame(users)
    test = test.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
    metrics = [m(k) for k in ks for m in (Recall, NDCG)]
    rows = []
    for name, recos in lists.items():
        top = TopLists.from_recos(_collect_lists(recos, users_df, max(ks)), max(ks))
        per_user = (ranking_values or local_ranking_values)(
            top, test, metrics, users_df.get_column(C.user_id)
        )
        rows += [
            {"model": name, "k": m.k, "metric": m.name, "value": _mean(v.get_column(VALUE).to_numpy())}
            for m, v in zip(metrics, per_user, strict=True)
        ]
    return pl.DataFrame(rows)
