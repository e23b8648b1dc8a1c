"""The data of the evaluation notebook's figures, and the expectation checks."""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from musicrec.evaluation.common import ListsLike
from musicrec.evaluation.lists import _collect_lists, _users_frame
from musicrec.evaluation.table import metric_curves
from musicrec.io import RunPaths
from musicrec.schema import C


def popularity_bias(
    lists: Mapping[str, ListsLike], test: pl.DataFrame, users: pl.Series, listeners: pl.DataFrame, k: int = 10
) -> pl.DataFrame:
    """``model, listeners``: the popularity (listeners before the test window) of every recommended
    top-``k`` track, and under model ``"test listens"`` of what the users actually heard."""
    users_df = _users_frame(users)
    # the model as an enum: at full scale some 80M rows, where a text column per row cost gigabytes
    names = pl.Enum(["test listens", *lists])
    frames = [
        test.join(users_df, on=C.user_id, how="semi")
        .select(C.track_id)
        .with_columns(pl.lit("test listens", dtype=names).alias("model"))
    ]
    for name, recos in lists.items():
        frames.append(
            _collect_lists(recos, users_df, k)
            .filter(pl.col(C.rank) <= k)
            .select(C.track_id)
            .with_columns(pl.lit(name, dtype=names).alias("model"))
        )
    return (
        pl.concat(frames)
        .join(listeners, on=C.track_id, how="left")
        .select("model", pl.col("listeners").fill_null(0))
    )


def candidate_recall_n(paths: RunPaths, k_max: int) -> int:
    """The list length of :func:`candidate_recall_beside`: the longest the candidates stage
    measured that is at most ``k_max`` (else the shortest)."""
    lengths = pl.read_parquet(paths.candidate_list("recall"), columns=["n"]).get_column("n")
    return int(lengths.filter(lengths <= k_max).max() or lengths.min())


def candidate_recall_beside(
    paths: RunPaths,
    lists: Mapping[str, ListsLike] | None,
    test: pl.DataFrame,
    users: pl.Series,
    k_max: int,
    curves: pl.DataFrame | None = None,
) -> tuple[int, pl.DataFrame]:
    """Each generator's candidate recall (labels window, from the candidates stage) beside its
    recall on the test window at the same list length, and the final list's.

    ``curves``: :func:`metric_curves` of the warm users already computed at that length
    (:func:`candidate_recall_n`), used instead of the lists (an error when they lack it).

    Returns ``(n, frame)``: the list length (the longest the candidates stage measured that
    is at most ``k_max``, the length of ``lists``) and ``model, candidate recall (labels),
    recall (test)``.
    """
    measured = pl.read_parquet(paths.candidate_list("recall"))
    n = candidate_recall_n(paths, k_max)
    if curves is not None:
        test_recall = curves.filter((pl.col("k") == n) & (pl.col("model") != "oracle"))
        if not test_recall.height:
            raise ValueError(f"curves: no recall@{n}; compute them with {n} among the ks")
    else:
        test_recall = metric_curves(
            {m: f for m, f in (lists or {}).items() if m != "oracle"}, test, users, ks=[n]
        )
    frame = (
        measured.filter(pl.col("n") == n)
        .select(pl.col("generator").alias("model"), pl.col("recall").alias("candidate recall (labels)"))
        .join(
            test_recall.filter(pl.col("metric") == "recall").select(
                "model", pl.col("value").alias("recall (test)")
            ),
            on="model",
            how="full",
            coalesce=True,
        )
        .sort("recall (test)", descending=True, nulls_last=True)
    )
    return n, frame


def expectation_checks(ndcg: pl.DataFrame) -> list[str]:
    """Sentences checking what must hold on NDCG@10 (``model, value``): random < top-popular < ALS,
    and the oracle, where there is one, above every model."""
    value = dict(zip(ndcg.get_column("model"), ndcg.get_column("value"), strict=True))
    checks = []
    if {"random", "top_popular", "personal_als"} <= set(value):
        ordered = value["random"] < value["top_popular"] < value["personal_als"]
        checks.append(
            f"random < top-popular < ALS on NDCG@10: **{'yes' if ordered else 'no'}** "
            f"({value['random']:.4f}, {value['top_popular']:.4f}, {value['personal_als']:.4f})."
        )
    if "oracle" in value:
        above = all(value["oracle"] > v for m, v in value.items() if m != "oracle")
        checks.append(
            f"The oracle ({value['oracle']:.4f}) is above every model on NDCG@10: "
            f"**{'yes' if above else 'no'}**."
        )
    return checks
