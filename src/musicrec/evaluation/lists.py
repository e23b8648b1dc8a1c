"""The inputs of a run (test listens, warm users, popularity) and every model's top-k lists."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from musicrec.candidates.stage import window_targets
from musicrec.config import share_of
from musicrec.evaluation.common import GENERATORS, ListsLike
from musicrec.io import RunPaths
from musicrec.schema import C


def history_pairs(paths: RunPaths) -> pl.LazyFrame:
    """``user_id, track_id``: every listen before ``test_start`` (what "heard" means here)."""
    return (
        paths.windows()
        .fit_listens(pl.scan_parquet(paths.interactions), "history+labels")
        .select(C.user_id, C.track_id)
    )


def held_out_listens(paths: RunPaths) -> pl.DataFrame:
    """``user_id, track_id``: the test window's listens, of warm and of cold users (``test`` of
    :func:`evaluate_models`)."""
    return window_targets(paths, "test", warm=None)


def _users_frame(users: pl.Series | Iterable[int] | np.ndarray) -> pl.DataFrame:
    if not isinstance(users, pl.Series):
        users = pl.Series(np.asarray(users if isinstance(users, np.ndarray) else list(users), dtype=np.int64))
    return pl.DataFrame({C.user_id: users.cast(pl.Int32, strict=True).unique().sort()})


def sample_of(users: np.ndarray, spec: int | str | None, seed: int) -> np.ndarray:
    """A seeded sample of ``users`` (sorted): a count, a share (``"20%"``) or all (None).

    >>> sample_of(np.arange(10), "30%", 0).size, sample_of(np.arange(10), 50, 0).size
    (3, 10)
    """
    users = np.unique(users)
    n = len(users) if spec is None else round(len(users) * share_of(spec)) if isinstance(spec, str) else spec
    if n >= len(users):
        return users
    return np.sort(np.random.default_rng(seed).choice(users, max(1, n), replace=False))


def warm_test_users(paths: RunPaths) -> pl.Series:
    """Users seen before ``test_start`` with at least one test listen, sorted."""
    return window_targets(paths, "test", warm=True).get_column(C.user_id).unique().sort()


def popularity(paths: RunPaths) -> pl.DataFrame:
    """``track_id, listeners``: distinct listeners before ``test_start`` of each catalogue track (0: none)."""
    listeners = (
        history_pairs(paths)
        .group_by(C.track_id)
        .agg(pl.col(C.user_id).n_unique().cast(pl.Int64).alias("listeners"))
        .collect(engine="streaming")
    )
    catalogue = pl.read_parquet(paths.tracks, columns=[C.track_id])
    return (
        catalogue.join(listeners, on=C.track_id, how="left")
        .with_columns(pl.col("listeners").fill_null(0))
        .sort(["listeners", C.track_id], descending=[True, False])
    )


def history_users(paths: RunPaths) -> int:
    """The number of distinct users with a listen before ``test_start`` (novelty's denominator)."""
    return int(history_pairs(paths).select(pl.col(C.user_id).n_unique()).collect(engine="streaming").item())


def cold_lists(paths: RunPaths) -> pl.LazyFrame:
    """The cold users' lists: ``recommendations.parquet`` rows with ``source == "top_popular"``."""
    return (
        pl.scan_parquet(paths.recommendations)
        .filter(pl.col("source") == "top_popular")
        .select(C.user_id, C.track_id, pl.col(C.rank).cast(pl.Int32))
    )


def _cut_lists(lists: ListsLike, users: pl.DataFrame, k_max: int) -> pl.LazyFrame:
    """``user_id, track_id, rank`` (Int32) of ``users``, ranks up to ``k_max``."""
    return (
        lists.lazy()
        .filter(pl.col(C.rank) <= k_max)
        .join(users.lazy(), on=C.user_id, how="semi")
        .select(
            pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32), pl.col(C.rank).cast(pl.Int32)
        )
    )


def _user_lists(path: Path, users: pl.DataFrame, k_max: int, source: str | None = None) -> pl.LazyFrame:
    lf = pl.scan_parquet(path)
    if source is not None:
        lf = lf.filter(pl.col("source") == source)
    return _cut_lists(lf, users, k_max)


def popular_order(paths: RunPaths, listeners: pl.DataFrame | None = None) -> pl.DataFrame:
    """``track_id, position``: the global top-popular order, over the whole catalogue.

    The tracks of ``candidates/top_popular.parquet`` come first, in their rank order;
    the rest of the catalogue follows by distinct listeners before ``test_start``
    (ties by track id), so that a per-user list never runs short however many of the
    top tracks the user has heard. ``listeners``: :func:`popularity` when already
    computed, else computed here.
    """
    head = (
        pl.read_parquet(paths.candidate_list("top_popular"), columns=[C.track_id, C.rank])
        .sort([C.rank, C.track_id])
        .get_column(C.track_id)
        .cast(pl.Int32)
    )
    if listeners is None:
        listeners = popularity(paths)
    rest = listeners.filter(~pl.col(C.track_id).is_in(head.implode())).get_column(C.track_id)
    order = pl.concat([head, rest.cast(pl.Int32)])
    return pl.DataFrame(
        {C.track_id: order, "position": pl.int_range(1, len(order) + 1, eager=True).cast(pl.Int32)}
    )


def top_popular_lists(
    paths: RunPaths, users: pl.Series | Iterable[int], k_max: int, listeners: pl.DataFrame | None = None
) -> pl.LazyFrame:
    """The global top-popular list made per user: heard tracks removed, ranks recomputed.

    Heard = listened before ``test_start``. For each user only the first ``k_max + c``
    positions of the global order (:func:`popular_order`) are expanded, where ``c`` is
    the number of heard tracks among them (the heard tracks at positions ``h_1 < h_2 <
    ...`` with ``h_j - j < k_max``). Since ``h_j - j`` never decreases and ``j`` is at most
    the user's number of listens ``n``, only the heard tracks at positions below ``k_max + n``
    can count: they are read in one query (two scans of the history: each user's listens, then
    the positions), where doubling a global bound took seven queries at full scale, the heaviest
    users having heard thousands of the top tracks. The result is lazy: ``users × k_max`` rows
    when collected (streaming where polars can).

    Returns
    -------
    ``user_id, track_id, rank`` (rank 1..k_max per user, sorted by user and rank).
    """
    users_df = _users_frame(users)
    order = popular_order(paths, listeners)
    n_catalogue = order.height
    heard = history_pairs(paths).join(users_df.lazy(), on=C.user_id, how="semi")
    listens = heard.group_by(C.user_id).agg(pl.len().alias("listens"))
    near = (
        heard.join(order.lazy(), on=C.track_id)
        .join(listens, on=C.user_id)
        .filter(pl.col("position") < k_max + pl.col("listens"))
        .select(pl.col(C.user_id).cast(pl.Int32), "position")
        .collect(engine="streaming")
        .unique()
        .sort([C.user_id, "position"])
    )
    j = pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.user_id)
    counted = near.filter(pl.col("position") - j < k_max)
    before = counted.group_by(C.user_id).agg(pl.len().cast(pl.Int32).alias("c"))
    span = users_df.join(before, on=C.user_id, how="left").select(
        C.user_id,
        pl.min_horizontal(pl.col("c").fill_null(0) + k_max, pl.lit(n_catalogue)).cast(pl.Int32).alias("span"),
    )
    return (
        span.lazy()
        .select(C.user_id, pl.int_ranges(1, pl.col("span") + 1, dtype=pl.Int32).alias("position"))
        .explode("position")
        .join(counted.lazy().select(C.user_id, "position"), on=[C.user_id, "position"], how="anti")
        .join(order.lazy(), on="position")
        .with_columns(pl.col("position").rank("ordinal").over(C.user_id).cast(pl.Int32).alias(C.rank))
        .select(C.user_id, C.track_id, C.rank)
        .sort([C.user_id, C.rank])
    )


def model_lists(
    paths: RunPaths,
    k_max: int,
    users: pl.Series | Iterable[int] | None = None,
    listeners: pl.DataFrame | None = None,
) -> dict[str, pl.LazyFrame]:
    """Every model's top ``k_max`` for the warm users: ``{model: user_id, track_id, rank}``.

    Models: ``random``, ``top_popular`` (:func:`top_popular_lists`), ``personal_als``,
    ``i2i_history``, ``item_knn``, ``content`` and ``audio`` (every generator of
    :data:`musicrec.generators.GENERATORS` whose file exists; every generator
    fitted on history + labels, heard tracks already excluded) and ``final`` (the
    ranker's rows of ``recommendations.parquet``). ``users`` defaults to the warm users
    with a test listen (those the metrics average over); ``listeners``: :func:`popularity`,
    when already computed. Frames are lazy; collect one at a time at full scale.
    """
    users_df = _users_frame(warm_test_users(paths) if users is None else users)
    out: dict[str, pl.LazyFrame] = {}
    for name in GENERATORS:
        if name == "top_popular":
            out[name] = top_popular_lists(paths, users_df.get_column(C.user_id), k_max, listeners)
        elif paths.candidate_list(name).is_file():
            out[name] = _user_lists(paths.candidate_list(name), users_df, k_max)
    out["final"] = _user_lists(paths.recommendations, users_df, k_max, source="final")
    return out


def _collect_lists(lists: ListsLike, users: pl.DataFrame, max_k: int) -> pl.DataFrame:
    return _cut_lists(lists, users, max_k).collect(engine="streaming")
