"""The final list against the best single generator: a paired bootstrap interval and a verdict."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import polars as pl

from musicrec.evaluation.common import ALL, RANKING_METRICS, ListsLike, _mean
from musicrec.evaluation.lists import _collect_lists, _users_frame
from musicrec.io import RunPaths, write_json
from musicrec.metrics import (
    VALUE,
    bootstrap_diff_ci,
    evaluate_per_user,
)
from musicrec.schema import C


def paired_comparison(
    per_user_a: pl.DataFrame, per_user_b: pl.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict:
    """Mean difference ``a - b`` of a per-user metric, with a paired bootstrap interval.

    ``per_user_a`` and ``per_user_b`` are ``user_id, value`` frames of the same metric
    (:func:`musicrec.metrics.evaluate_per_user`). They are aligned on ``user_id``; a
    user present on one side only counts as 0 on the other (for the ranking metrics,
    which give every evaluated user a row, this only happens when the user sets differ).
    Users are resampled together (:func:`musicrec.metrics.bootstrap_diff_ci`), so the
    interval reflects the spread of the per-user differences, not of each mean.

    Returns
    -------
    ``{"n_users", "mean_a", "mean_b", "diff", "lower", "upper"}``.
    """
    a = per_user_a.select(pl.col(C.user_id).cast(pl.Int64), pl.col(VALUE).cast(pl.Float64).alias("a"))
    b = per_user_b.select(pl.col(C.user_id).cast(pl.Int64), pl.col(VALUE).cast(pl.Float64).alias("b"))
    both = a.join(b, on=C.user_id, how="full", coalesce=True).fill_null(0.0)
    va, vb = both.get_column("a").to_numpy(), both.get_column("b").to_numpy()
    low, high = bootstrap_diff_ci(va, vb, n_boot, alpha, seed)
    return {
        "n_users": int(both.height),
        "mean_a": _mean(va),
        "mean_b": _mean(vb),
        "diff": _mean(va - vb),
        "lower": low,
        "upper": high,
    }


def verdict(
    model_a: str, model_b: str, metric: str, diff: float, lower: float, upper: float, alpha: float = 0.05
) -> str:
    """One line from the interval of ``a - b``: a beats b, a is worse, or no significant difference."""
    level = f"{100 * (1 - alpha):g}% CI"
    interval = f"({level} {lower:+.4f} to {upper:+.4f})"
    if lower > 0:
        return f"{model_a} beats {model_b} on {metric} by {diff:+.4f} {interval}"
    if upper < 0:
        return f"{model_a} is worse than {model_b} on {metric} by {diff:+.4f} {interval}"
    return f"no significant difference between {model_a} and {model_b} on {metric}: {diff:+.4f} {interval}"


def best_generator(
    results: pl.DataFrame,
    k: int = 10,
    metric: str = "ndcg",
    segment: str = ALL,
    exclude: Iterable[str] = ("final", "oracle"),
) -> str:
    """The model with the highest ``metric@k`` on ``segment`` in an :func:`evaluate_models` table."""
    part = results.filter(
        (pl.col("metric") == metric)
        & (pl.col("k") == k)
        & (pl.col("segment") == segment)
        & ~pl.col("model").is_in(list(exclude))
        & pl.col("value").is_not_nan()
    )
    if not part.height:
        raise ValueError(f"no model other than {list(exclude)} has {metric}@{k} on segment {segment!r}")
    return part.sort(["value", "model"], descending=[True, False]).get_column("model")[0]


def compare_final(
    lists: Mapping[str, ListsLike],
    test: pl.DataFrame,
    results: pl.DataFrame,
    users: pl.Series | Iterable[int] | None = None,
    k: int = 10,
    metrics: Sequence[str] = ("ndcg", "recall"),
    final: str = "final",
    exclude: Iterable[str] = ("oracle",),
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pl.DataFrame:
    """The final list against the best single generator (by NDCG@k in ``results``), paired by user.

    ``users``: the users compared, normally the warm test users (segment ``all``);
    by default every user of ``test``, so pass ``test`` of the warm users only, or the
    users. Both models are evaluated on exactly these users; a user without a list
    scores 0.

    Returns
    -------
    ``metric, k, model_a, model_b, n_users, mean_a, mean_b, diff, lower, upper, verdict``,
    one row per metric.
    """
    best = best_generator(results, k, "ndcg", ALL, exclude=[final, *exclude])
    if users is None:
        users = test.get_column(C.user_id)
    users_df = _users_frame(users)
    metric_objects = [RANKING_METRICS[m](k) for m in metrics]
    test = test.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
    per_model = {
        name: evaluate_per_user(
            _collect_lists(lists[name], users_df, k),
            test,
            metric_objects,
            users=users_df.get_column(C.user_id),
        )
        for name in (final, best)
    }
    rows = []
    for i, m in enumerate(metric_objects):
        result = paired_comparison(per_model[final][i], per_model[best][i], n_boot, seed, alpha)
        rows.append(
            {"metric": m.name, "k": k, "model_a": final, "model_b": best}
            | result
            | {
                "verdict": verdict(
                    final, best, f"{m.name}@{k}", result["diff"], result["lower"], result["upper"], alpha
                )
            }
        )
    return pl.DataFrame(rows)


#: Below this many users with a positive, a ranker's shortfall is put down to too little to learn from.
FEW_TRAINING_USERS = 1_000


def why_final_trails(comparison: pl.DataFrame, ranking_summary: Mapping | None) -> str | None:
    """Why the final list is significantly worse than the best generator on NDCG, from what the
    ranker learned from (``outputs/<run>/ranking/summary.json``); None when it is not worse.

    >>> row = {"metric": "ndcg", "k": 10, "model_b": "top_popular", "upper": -0.01}
    >>> summary = {"sampling": {"users": 50, "users_without_positive": 16, "sampled_positives": 300},
    ...            "training_recall": {"recall": 0.19}}
    >>> print(why_final_trails(pl.DataFrame([row]), summary))  # doctest: +ELLIPSIS
    Why: the ranker learned from 34 users with a labels listen among their candidates ...
    """
    worse = comparison.filter((pl.col("metric") == "ndcg") & (pl.col("upper") < 0))
    if not worse.height:
        return None
    best = worse.get_column("model_b")[0]
    if not ranking_summary or "sampling" not in ranking_summary:
        return f"Why: no ranking summary to say; {best} is the list to prefer on this data."
    sampling = ranking_summary["sampling"]
    learned = sampling["users"] - sampling["users_without_positive"]
    recall = ranking_summary.get("training_recall", {}).get("recall")
    found = f" (the candidates held {recall:.0%} of the labels listens)" if recall is not None else ""
    facts = (
        f"Why: the ranker learned from {learned:,} users with a labels listen among their candidates "
        f"and {sampling['sampled_positives']:,} positive rows{found}"
    )
    if learned < FEW_TRAINING_USERS:
        return (
            f"{facts}; that is too little to learn an order better than {best}'s own, so on this "
            f"data {best} is the list to prefer (the ranker needs more users with labels: a larger "
            "data set, or a wider labels window)."
        )
    return (
        f"{facts}, enough to learn from: the ranking report's candidate recall and feature "
        f"importance say where it loses to {best}."
    )


def write_comparison(comparison: pl.DataFrame, paths: RunPaths) -> Path:
    """Write ``outputs/<run>/evaluation.json``: :func:`compare_final`'s rows and their verdicts
    (the report's index page lists the verdicts)."""
    verdicts = comparison.get_column("verdict").to_list()
    return write_json({"comparison": comparison.to_dicts(), "verdicts": verdicts}, paths.evaluation)
