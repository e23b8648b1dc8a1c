"""The evaluation stage: every model on the same test window, by user segment, with intervals.

Every model, baselines included, is judged on the listens of the ``test`` window of
the users seen before ``test_start`` (the *warm* users); the users first seen in the
test window are the *cold* segment, served the top-popular list and measured
separately. The pieces:

* :func:`model_lists`: each model's top-k lists for the warm users (random,
  top-popular made per user, ALS, i2i, content, audio, the final ranker's list);
* :func:`oracle_lists`: on synthetic data, each user's best unheard tracks by the
  generator's true preference, the ceiling;
* :func:`user_segments`: warm users in terciles of history length, and the cold users;
* :func:`evaluate_models`: precision, recall, NDCG, MAP, hit rate at several k and
  coverage, novelty, genre diversity, per segment, with bootstrap intervals over users
  (the metric definitions are :mod:`musicrec.metrics`'s);
* :func:`paired_comparison`, :func:`compare_final`: the final list against the best
  single generator, on the same users, with a paired bootstrap interval and a verdict;
* :func:`sampled_protocol`: the biased "held-out item among 100 random unheard
  tracks" protocol, as a secondary table;
* :func:`write_metrics`: ``outputs/<run>/metrics.parquet`` and ``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from musicrec.candidates.base import index_of
from musicrec.candidates.stage import window_targets
from musicrec.generators import EVALUATION_ORDER
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.metrics import (
    MAP,
    NDCG,
    VALUE,
    Coverage,
    HitRate,
    Hits,
    IntraListDiversity,
    ListMetric,
    Metric,
    Novelty,
    Precision,
    RankingMetric,
    Recall,
    TopLists,
    _rows_of,
    bootstrap_ci,
    bootstrap_diff_ci,
    evaluate_per_user,
    pair_key,
    pair_keys,
)
from musicrec.schema import C

#: Per-user candidate files of the generators, in the order the tables show them.
GENERATORS = EVALUATION_ORDER  # musicrec.generators
#: Segment names: the three terciles of history length, the cold users, and every warm user.
LIGHT, MEDIUM, HEAVY, COLD, ALL = "light", "medium", "heavy", "cold", "all"
SEGMENT_ORDER = (ALL, LIGHT, MEDIUM, HEAVY, COLD)
#: Columns of :func:`evaluate_models` (and of ``metrics.parquet``).
METRICS_SCHEMA = {
    "model": pl.Utf8,
    "k": pl.Int32,
    "metric": pl.Utf8,
    "segment": pl.Utf8,
    "value": pl.Float64,
    "lower": pl.Float64,
    "upper": pl.Float64,
}
#: The ranking metrics of :func:`evaluate_models`, by name, in the order the tables show them.
RANKING_METRICS: dict[str, type[RankingMetric]] = {
    cls.name: cls for cls in (Precision, Recall, NDCG, MAP, HitRate)
}

ListsLike = pl.DataFrame | pl.LazyFrame
#: The cut-offs of the recall@k and NDCG@k curves: every k to 10, then every 10 to 100.
CURVE_KS = (*range(1, 11), 15, *range(20, 101, 10))


# --------------------------------------------------------------------------- inputs of a run


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


# --------------------------------------------------------------------------- the lists


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
    ...`` with ``h_j - j < k_max``); ``c`` is found from the heard tracks near the top
    of the order only (the bound is doubled until it holds for every user). The
    result is lazy: ``users × k_max`` rows when collected (streaming where polars can).

    Returns
    -------
    ``user_id, track_id, rank`` (rank 1..k_max per user, sorted by user and rank).
    """
    users_df = _users_frame(users)
    order = popular_order(paths, listeners)
    n_catalogue = order.height
    heard_positions = (
        history_pairs(paths)
        .join(users_df.lazy(), on=C.user_id, how="semi")
        .join(order.lazy(), on=C.track_id)
        .select(pl.col(C.user_id).cast(pl.Int32), "position")
    )
    bound = 2 * k_max
    while True:
        near = (
            heard_positions.filter(pl.col("position") <= bound)
            .collect(engine="streaming")
            .unique()
            .sort([C.user_id, "position"])
        )
        j = pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.user_id)
        counted = near.filter(pl.col("position") - j < k_max)
        before = counted.group_by(C.user_id).agg(pl.len().cast(pl.Int32).alias("c"))
        need = k_max + (int(before.get_column("c").max()) if before.height else 0)
        if need <= bound or bound >= n_catalogue:
            break
        bound = max(2 * bound, need)
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
    ``i2i_history``, ``content`` and ``audio`` (when their files exist; every generator
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
    out["final"] = _user_lists(paths.recommendations, users_df, k_max, source="ranker")
    return out


# --------------------------------------------------------------------------- the oracle


def _candidate_pool_sources(paths: RunPaths) -> dict[str, pl.LazyFrame]:
    """Every per-user list of the run, whole: the generators' files and the ranker's list."""
    sources = {
        name: pl.scan_parquetpaths.candidate_list(name)
        for name in GENERATORS
        if name != "top_popular" and paths.candidate_list(name).is_file()
    }
    if paths.recommendations.is_file():
        sources["final"] = pl.scan_parquet(paths.recommendations).filter(pl.col("source") == "ranker")
    return sources


def oracle_lists(
    paths: RunPaths,
    users: pl.Series | Iterable[int],
    k_max: int = 100,
    candidate_pool: Mapping[str, ListsLike] | None = None,
    n_popular: int = 1000,
    max_exact_pairs: int = 500_000_000,
    batch_pairs: int = 2_000_000,
    block_users: int = 10_000,
    listeners: pl.DataFrame | None = None,
) -> pl.DataFrame | None:
    """Each user's top ``k_max`` unheard tracks by the synthetic generator's true preference.

    The ceiling of what a recommender could know (the probability that a draw of the user
    is the track, :func:`musicrec.sources.synthetic.true_preference`); only synthetic runs
    have it: ``None`` when ``paths.oracle`` is absent (real sources). Heard = listened
    before ``test_start``; heard tracks are never listed.

    Exact when ``len(users) × catalogue ≤ max_exact_pairs`` (every unheard track scored;
    the default bound takes the default profile, 18.7k test users × 20k tracks, exactly,
    in some 20 s). Otherwise (1.37M × 1M at full scale) an **approximation**: each
    user's tracks are chosen from a pool, the union of the user's candidate lists
    (``candidate_pool``: ``user_id, track_id`` frames, by default every per-user list the
    run wrote, generators and ranker, at their whole length) and the ``n_popular`` most
    popular tracks; a truly preferred track that no generator proposed and that is not
    among the most popular is missed, so the pooled oracle's lists are never better by
    true preference than the exact ones (on the default profile the pooled top 10 held
    94% of the exact top 10, and its NDCG@10 was 0.248 against 0.270). Users are scored
    in blocks of ``block_users`` (one read of their history each) and batches of at most
    ``batch_pairs`` (user, track) pairs, so memory stays bounded. Only the pairs that can
    reach a user's top ``k_max`` are scored by ``true_preference`` (a vectorised estimate
    within 1e-5 of it, :class:`_PreferenceBound`, discards the rest), which gives the
    lists of scoring every pair, ties by track id. ``listeners``: :func:`popularity`,
    when already computed.

    Note that true preference is the stationary probability of a streak start: it
    knows nothing of time, so it is the ceiling of a static model, not of every metric
    (a model that follows a user's latest artist streak can beat it on the test window).

    Returns
    -------
    ``user_id, track_id, score, rank`` (rank 1..k_max per user), or ``None``.
    """
    if not paths.oracle.is_dir():
        return None
    from musicrec.sources.synthetic import true_preference

    user_ids = _users_frame(users).get_column(C.user_id).to_numpy()
    catalogue = np.sort(
        pl.read_parquet(paths.tracks, columns=[C.track_id]).get_column(C.track_id).to_numpy()
    ).astype(np.int32)
    exact = len(user_ids) * len(catalogue) <= max_exact_pairs
    if exact:
        dense = catalogue
    else:
        sources = dict(candidate_pool) if candidate_pool is not None else _candidate_pool_sources(paths)
        if listeners is None:
            listeners = popularity(paths)
        dense = np.sort(listeners.head(n_popular).get_column(C.track_id).cast(pl.Int32).to_numpy())
    bound = _PreferenceBound(paths.oracle)
    parts: list[pl.DataFrame] = []
    for lo in range(0, len(user_ids), block_users):
        block = user_ids[lo : lo + block_users]
        block_df = pl.DataFrame({C.user_id: block})
        # the range lets parquet skip row groups of other users (files written in user order)
        in_range = pl.col(C.user_id).is_between(int(block[0]), int(block[-1]))
        heard = (
            history_pairs(paths)
            .filter(in_range)
            .join(block_df.lazy(), on=C.user_id, how="semi")
            .select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
            .collect(engine="streaming")
        )
        heard_keys = np.sort(
            pair_keys(heard.get_column(C.user_id).to_numpy(), heard.get_column(C.track_id).to_numpy())
        )
        if exact:
            extra = np.zeros(0, dtype=np.int64)
        else:
            pool = (
                pl.concat(
                    [
                        lf.lazy()
                        .filter(in_range)
                        .join(block_df.lazy(), on=C.user_id, how="semi")
                        .select(pair_key().alias("key"))
                        for lf in sources.values()
                    ]
                )
                .collect(engine="streaming")
                .get_column("key")
                .to_numpy()
            )
            pool = np.sort(pool)  # distinct by a sort: np.unique's hashing is several times slower here
            pool = pool[np.r_[True, pool[1:] != pool[:-1]]] if len(pool) else pool
            # the dense tracks are scored for every user anyway; heard tracks are never listed
            tracks = (pool - (1 << 31)) & 0xFFFFFFFF  # the low half of the key: track + 2^31
            extra = pool[(index_of(dense, tracks.astype(np.int32)) < 0) & (index_of(heard_keys, pool) < 0)]
        parts += _oracle_block(bound, block, dense, extra, heard_keys, k_max, batch_pairs, true_preference)
    schema = {C.user_id: pl.Int32, C.track_id: pl.Int32, C.score: pl.Float64, C.rank: pl.Int32}
    return pl.concat(parts).cast(schema) if parts else pl.DataFrame(schema=schema)


class _PreferenceBound:
    """A fast estimate of :func:`~musicrec.sources.synthetic.true_preference`, within ``RELATIVE``.

    The same formula over the oracle's tables, vectorised over a block of users × tracks
    (a user's genre weights as a dense row, so a pair costs a gather instead of a scan of
    the user's genres) and in float64 throughout, where ``true_preference`` sums float32
    weights: the two differ by rounding only (some 1e-7, relative). The oracle uses it only
    to discard pairs that cannot reach a user's top k; every listed score is
    ``true_preference``'s own, and the bound is checked on every pair scored exactly.
    """

    #: Largest relative difference allowed between the estimate and the exact score.
    RELATIVE = 1e-5

    def __init__(self, oracle: Path):
        from musicrec.sources.synthetic import _oracle_tables

        self.oracle = oracle
        self.o = o = _oracle_tables(oracle)
        self.n_genres = int(max(o.genres.max(initial=0), o.track_genre.max(initial=0))) + 1

    def rows(self, users: np.ndarray, tracks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Table rows of user ids and of track ids (every id must be in the oracle)."""
        o = self.o
        u, t = o.user_position(users), o.track_position(tracks)
        if (u < 0).any() or (t < 0).any():
            raise KeyError("oracle: user or track ids not in the oracle's tables")
        return o.user_order[u], o.track_order[t]

    def genre_weights(self, user_rows: np.ndarray) -> np.ndarray:
        """``(users, genres)``: each user's weight of every genre (repeated genres summed)."""
        o, g = self.o, self.n_genres
        cells = np.arange(len(user_rows))[:, None] * g + o.genres[user_rows]
        return np.bincount(
            cells.ravel(),
            weights=o.genre_weights[user_rows].astype(np.float64).ravel(),
            minlength=len(user_rows) * g,
        ).reshape(len(user_rows), g)

    def estimate(
        self, weights: np.ndarray, user_rows: np.ndarray, local: np.ndarray, track_rows: np.ndarray
    ) -> np.ndarray:
        """Estimates for pairs ``(local[i], track_rows[i])``, broadcast like numpy arrays.

        ``weights``: :meth:`genre_weights` of ``user_rows``; ``local`` indexes those rows.
        """
        o = self.o
        users = user_rows[local]
        taste = weights[local, o.track_genre[track_rows]]
        artist = o.track_artist[track_rows]
        favourites = o.favourites[user_rows]
        fav = np.zeros(np.broadcast_shapes(np.shape(local), np.shape(track_rows)))
        for j in range(favourites.shape[1]):
            fav += favourites[local, j] == artist
        fav /= favourites.shape[1]
        popular = o.popular_share[users]
        in_taste = 1.0 - o.explore_share - popular
        return (
            in_taste
            * ((1 - o.fav_share) * taste * o.p_ag[track_rows] + o.fav_share * fav)
            * o.p_ta[track_rows]
            + o.explore_share / len(o.track_sorted)
            + popular * o.p_t[track_rows]
        )


def _oracle_block(
    bound: _PreferenceBound,
    block: np.ndarray,
    dense: np.ndarray,
    extra: np.ndarray,
    heard_keys: np.ndarray,
    k: int,
    batch_pairs: int,
    score: Callable,
) -> list[pl.DataFrame]:
    """The top ``k`` of each user of ``block`` (sorted) over ``dense`` tracks (all users, heard ones
    excluded) and ``extra`` pair keys (sorted, distinct, unheard, not in ``dense``), by ``score``.

    Each user's pairs are estimated (:class:`_PreferenceBound`); only those whose estimate
    reaches the user's k-th best estimate (less the bound's margin) are scored exactly, so
    the lists are those of scoring every pair, ties by track id.
    """
    extra_users = (extra >> 32).astype(np.int32)
    extra_tracks = ((extra - (1 << 31)) & 0xFFFFFFFF).astype(np.int32)
    heard_users = (heard_keys >> 32).astype(np.int32)
    starts = np.searchsorted(extra_users, block)
    ends = np.searchsorted(extra_users, block, side="right")
    per_user = len(dense) + int((ends - starts).max(initial=0))
    margin = (1 - bound.RELATIVE) / (1 + bound.RELATIVE)
    out = []
    step = max(1, batch_pairs // max(per_user, 1))
    _, dense_rows = bound.rows(block[:1], dense) if len(dense) else (None, np.zeros(0, np.int64))
    for lo in range(0, len(block), step):
        users = block[lo : lo + step]
        user_rows, _ = bound.rows(users, dense[:0])
        weights = bound.genre_weights(user_rows)
        local = np.arange(len(users))
        grid = np.full((len(users), per_user), -np.inf)
        cols = np.broadcast_to(dense, (len(users), len(dense)))
        tracks = np.full((len(users), per_user), -1, dtype=np.int32)
        tracks[:, : len(dense)] = cols
        if len(dense):
            grid[:, : len(dense)] = bound.estimate(weights, user_rows, local[:, None], dense_rows[None, :])
            h0, h1 = np.searchsorted(heard_users, [users[0], users[-1] + 1])
            h_users, h_keys = heard_users[h0:h1], heard_keys[h0:h1]
            h_tracks = ((h_keys - (1 << 31)) & 0xFFFFFFFF).astype(np.int32)
            h_row, h_col = index_of(users, h_users), index_of(dense, h_tracks)
            hit = (h_row >= 0) & (h_col >= 0)
            grid[h_row[hit], h_col[hit]] = -np.inf
        e0, e1 = int(starts[lo]), int(ends[lo + len(users) - 1])
        if e1 > e0:
            e_users, e_tracks = extra_users[e0:e1], extra_tracks[e0:e1]
            e_local = index_of(users, e_users)
            slot = len(dense) + np.arange(e1 - e0) - (starts[lo : lo + len(users)] - e0)[e_local]
            _, e_rows = bound.rows(e_users[:0], e_tracks)
            grid[e_local, slot] = bound.estimate(weights, user_rows, e_local, e_rows)
            tracks[e_local, slot] = e_tracks
        kk = min(k, per_user)
        kth = -np.partition(-grid, kk - 1, axis=1)[:, kk - 1]
        keep = (grid >= (kth * margin)[:, None]) & (grid > -np.inf)
        row, col = np.nonzero(keep)
        pair_users, pair_tracks = users[row], tracks[row, col]
        exact = np.asarray(score(bound.oracle, pair_users, pair_tracks), dtype=np.float64)
        estimated = grid[row, col]
        if not np.all(np.abs(estimated - exact) <= bound.RELATIVE * np.abs(exact)):
            raise RuntimeError(
                "oracle: the preference estimate is off true_preference; "
                "update evaluation._PreferenceBound to match musicrec.sources.synthetic"
            )
        order = np.lexsort((pair_tracks, -exact, pair_users))
        pair_users, pair_tracks, exact = pair_users[order], pair_tracks[order], exact[order]
        first = np.r_[True, pair_users[1:] != pair_users[:-1]] if len(order) else np.zeros(0, bool)
        start_of = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        rank = (np.arange(len(order)) - start_of + 1).astype(np.int32)
        top = rank <= k
        out.append(
            pl.DataFrame(
                {
                    C.user_id: pair_users[top].astype(np.int32),
                    C.track_id: pair_tracks[top].astype(np.int32),
                    C.score: exact[top],
                    C.rank: rank[top],
                }
            )
        )
    return out


# --------------------------------------------------------------------------- segments


def history_terciles(history: pl.DataFrame) -> pl.DataFrame:
    """``user_id, segment``: users split by ``n_history`` into ``light``, ``medium``, ``heavy``.

    The bounds are the 1/3 and 2/3 quantiles of ``n_history`` (the "lower" quantile:
    sorted values at positions ``floor(q (n - 1))``): light ≤ the first, medium ≤ the
    second, heavy above. Users with the same history length are always in the same
    segment, so with ties the segments are not exactly equal in size.

    Examples
    --------
    >>> h = pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "n_history": [6, 5, 4, 3, 2, 1]})
    >>> history_terciles(h)["segment"].to_list()
    ['heavy', 'heavy', 'medium', 'medium', 'light', 'light']
    """
    values = np.sort(history.get_column("n_history").to_numpy())
    if not len(values):
        return pl.DataFrame(schema={C.user_id: pl.Int32, "segment": pl.Utf8})
    low, high = (values[int(math.floor(q * (len(values) - 1)))] for q in (1 / 3, 2 / 3))
    n = pl.col("n_history")
    segment = (
        pl.when(n <= low).then(pl.lit(LIGHT)).when(n <= high).then(pl.lit(MEDIUM)).otherwise(pl.lit(HEAVY))
    )
    return history.select(pl.col(C.user_id).cast(pl.Int32), segment.alias("segment"))


def user_segments(paths: RunPaths, test: pl.DataFrame | None = None) -> pl.DataFrame:
    """``user_id, segment`` for every test user: history-length terciles of the warm users, and cold.

    Warm users (seen before ``test_start``, with a test listen) are split by their
    number of listens before ``test_start`` (:func:`history_terciles`); users first seen
    in the test window are ``cold``. The ``all`` segment (every warm user) is added by
    :func:`evaluate_models`. ``test``: the test window's listens when already read
    (:func:`held_out_listens`), else read here.
    """
    if test is None:
        test = held_out_listens(paths)
    test_users = pl.DataFrame({C.user_id: test.get_column(C.user_id).unique()})
    history = (
        history_pairs(paths)
        .join(test_users.lazy(), on=C.user_id, how="semi")
        .group_by(C.user_id)
        .agg(pl.len().alias("n_history"))
        .collect(engine="streaming")
    )
    # a test user with no listen before test_start is cold
    cold = test_users.join(history, on=C.user_id, how="anti").get_column(C.user_id)
    return pl.concat(
        [
            history_terciles(history),
            pl.DataFrame({C.user_id: cold.cast(pl.Int32)}).with_columns(
                pl.lit(COLD, dtype=pl.Utf8).alias("segment")
            ),
        ]
    ).sort(C.user_id)


# --------------------------------------------------------------------------- the metrics table


def _collect_lists(lists: ListsLike, users: pl.DataFrame, max_k: int) -> pl.DataFrame:
    return _cut_lists(lists, users, max_k).collect(engine="streaming")


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
) -> list[dict]:
    """Every metric of one model's lists, for each group of users, from one join of lists and test."""
    max_k = max([m.k for m in ranking] + [beyond_k])
    everyone = pl.concat(list(groups.values())).unique().sort()
    top = TopLists.from_recos(recos, max_k).for_users(everyone)
    per_user: list[tuple[Metric, pl.DataFrame]] = []
    if ranking:
        hits = Hits.compute(top, test, max(m.k for m in ranking), everyone)
        per_user += [(m, m.from_hits(hits)) for m in ranking]
    top_beyond = top.cut(beyond_k)
    per_user += [(m, m.from_lists(top_beyond)) for m in beyond if m.per_user]
    coverage = [m for m in beyond if not m.per_user]
    rows = []
    for segment, users in groups.items():
        members = users.implode()
        for m, frame in per_user:
            values = frame.filter(pl.col(C.user_id).is_in(members)).get_column(VALUE).to_numpy()
            value = float(values.mean()) if values.size else math.nan
            low, high = bootstrap_ci(values, n_boot, alpha, seed)
            rows.append(
                {
                    "model": model,
                    "k": m.k,
                    "metric": m.name,
                    "segment": segment,
                    "value": value,
                    "lower": low,
                    "upper": high,
                }
            )
        for m in coverage:
            value = float(m.from_lists(top_beyond.for_users(users)))
            rows.append(
                {
                    "model": model,
                    "k": m.k,
                    "metric": m.name,
                    "segment": segment,
                    "value": value,
                    "lower": None,
                    "upper": None,
                }
            )
    return rows


def _beyond_metrics(
    beyond_k: int,
    train: pl.DataFrame | None,
    tracks: pl.DataFrame | None,
    n_items: int | None,
    listeners: pl.DataFrame | None,
    n_train_users: int | None,
) -> list[ListMetric]:
    """Coverage, novelty and diversity at ``beyond_k``, each where its input is given."""
    if n_items is None and tracks is not None:
        n_items = tracks.height
    beyond: list[ListMetric] = []
    if n_items:
        beyond.append(Coverage(beyond_k, n_items=n_items))
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
    train: pl.DataFrame | None = None,
    tracks: pl.DataFrame | None = None,
    n_items: int | None = None,
    listeners: pl.DataFrame | None = None,
    n_train_users: int | None = None,
    beyond_metrics: Sequence[ListMetric] | None = None,
    cold: ListsLike | None = None,
    cold_models: Sequence[str] = ("top_popular", "final"),
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
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
    beyond_k
        Cut-off of coverage, novelty and diversity.
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
        else _beyond_metrics(beyond_k, train, tracks, n_items, listeners, n_train_users)
    )
    max_k = max([*ks, beyond_k])

    rows: list[dict] = []
    warm_df = pl.DataFrame({C.user_id: groups[ALL]})
    for model, frame in lists.items():
        recos = _collect_lists(frame, warm_df, max_k)
        rows += _evaluate_groups(model, recos, test, groups, ranking, beyond, beyond_k, n_boot, alpha, seed)
    if cold is not None and cold_users.len():
        recos = _collect_lists(cold, pl.DataFrame({C.user_id: cold_users}), max_k)
        once = _evaluate_groups(
            COLD, recos, test, {COLD: cold_users}, ranking, beyond, beyond_k, n_boot, alpha, seed
        )  # one list under every name: computed once
        rows += [r | {"model": model} for model in cold_models for r in once]
    out = pl.DataFrame(rows, schema=METRICS_SCHEMA, orient="row")
    return sort_metrics(out)


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


# --------------------------------------------------------------------------- paired comparison


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


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


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


# --------------------------------------------------------------------------- sampled protocol


def _negative_matrix(
    users: np.ndarray,
    heard_keys: np.ndarray,
    tracks: np.ndarray,
    n_negatives: int,
    rng: np.random.Generator,
    max_rounds: int,
    chunk: int = 20_000,
) -> np.ndarray:
    """``len(users) × n_negatives`` distinct unheard tracks per row (``heard_keys`` sorted); -1 pads.

    Rows are drawn ``chunk`` at a time, which bounds the memory of the rejection step.
    """
    out = np.full((len(users), n_negatives), -1, dtype=np.int64)
    for lo in range(0, len(users), chunk):
        part = slice(lo, lo + chunk)
        out[part] = _negative_rows(users[part], heard_keys, tracks, n_negatives, rng, max_rounds)
    return out


def _negative_rows(
    users: np.ndarray,
    heard_keys: np.ndarray,
    tracks: np.ndarray,
    n_negatives: int,
    rng: np.random.Generator,
    max_rounds: int,
) -> np.ndarray:
    out = np.full((len(users), n_negatives), -1, dtype=np.int64)
    todo = np.arange(len(users))
    width = n_negatives + 10 + n_negatives // 4
    for _ in range(max_rounds):
        if not len(todo):
            break
        drawn = tracks[rng.integers(0, len(tracks), size=(len(todo), width))].astype(np.int64)
        keys = pair_keys(np.repeat(users[todo], width).reshape(len(todo), width), drawn)
        valid = index_of(heard_keys, keys) < 0
        # a track drawn twice for one row: keep its first draw
        order = np.argsort(drawn, axis=1, kind="stable")
        in_order = np.take_along_axis(drawn, order, axis=1)
        repeat = np.zeros(drawn.shape, dtype=bool)
        repeat[:, 1:] = in_order[:, 1:] == in_order[:, :-1]
        np.put_along_axis(repeat, order, repeat.copy(), axis=1)
        valid &= ~repeat
        enough = valid.sum(axis=1) >= n_negatives
        # the first n_negatives valid draws of each row, in the order they were drawn
        pick = np.argsort(~valid, axis=1, kind="stable")[:, :n_negatives]
        out[todo[enough]] = np.take_along_axis(drawn[enough], pick[enough], axis=1)
        todo, width = todo[~enough], width * 2
    if len(todo):  # users who heard almost everything: every unheard track, as many as there are
        for row in todo:  # a handful of rows at most, after max_rounds doublings
            free = tracks[index_of(heard_keys, pair_keys(np.full(len(tracks), users[row]), tracks)) < 0]
            free = rng.permutation(free)[:n_negatives]
            out[row, : len(free)] = free
    return out


def _heard_keys(heard: ListsLike, users: np.ndarray) -> np.ndarray:
    """Sorted pair keys of the ``heard`` rows of ``users``."""
    frame = (
        heard.lazy()
        .join(pl.DataFrame({C.user_id: np.unique(users).astype(np.int32)}).lazy(), on=C.user_id, how="semi")
        .select(pl.col(C.user_id), pl.col(C.track_id))
        .collect(engine="streaming")
    )
    keys = pair_keys(frame.get_column(C.user_id).to_numpy(), frame.get_column(C.track_id).to_numpy())
    return np.sort(keys)


def sample_negatives(
    listens: pl.DataFrame,
    heard: ListsLike,
    catalogue: pl.Series | np.ndarray,
    n_negatives: int = 100,
    seed: int = 0,
    max_rounds: int = 8,
) -> pl.DataFrame:
    """``listen, user_id, track_id``: ``n_negatives`` distinct tracks the user never heard, per listen.

    ``listens``: ``listen`` (an id), ``user_id``. ``heard``: ``user_id, track_id`` pairs
    that are never negatives (pass all of the users' listens, test window included).
    Tracks are drawn uniformly from ``catalogue`` with the seed; a draw that is heard,
    or already drawn for the listen, is replaced by a later one (rows short of
    ``n_negatives`` are drawn again, up to ``max_rounds`` times, then filled from every
    unheard track: a user who heard nearly the whole catalogue keeps fewer).
    """
    tracks = catalogue.to_numpy() if isinstance(catalogue, pl.Series) else np.asarray(catalogue)
    users = listens.get_column(C.user_id).to_numpy()
    matrix = _negative_matrix(
        users,
        _heard_keys(heard, users),
        np.asarray(tracks, dtype=np.int64),
        n_negatives,
        np.random.default_rng(seed),
        max_rounds,
    )
    frame = pl.DataFrame(
        {
            "listen": np.repeat(listens.get_column("listen").to_numpy(), n_negatives),
            C.user_id: np.repeat(users, n_negatives).astype(np.int32),
            C.track_id: matrix.ravel(),
        }
    )
    return frame.filter(pl.col(C.track_id) >= 0).with_columns(pl.col(C.track_id).cast(pl.Int32))


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, missing: float) -> np.ndarray:
    """``values`` at each ``wanted`` key of ``sorted_keys`` (distinct), ``missing`` where absent."""
    if not len(sorted_keys):
        return np.full(len(wanted), missing, dtype=np.float64)
    at = index_of(sorted_keys, wanted)
    return np.where(at >= 0, values[np.maximum(at, 0)], missing)


def _positions(keys: np.ndarray, ties: np.ndarray) -> np.ndarray:
    """1-based position of column 0 in each row, by ``keys`` (lower first), ties by ``ties``."""
    pkey, ptie = keys[:, :1], ties[:, :1]
    ahead = (keys[:, 1:] < pkey) | ((keys[:, 1:] == pkey) & (ties[:, 1:] < ptie))
    return ahead.sum(axis=1) + 1


def sampled_listens(test: pl.DataFrame, max_listens: int = 200_000, seed: int = 0) -> pl.DataFrame:
    """``user_id, track_id``: the test listens :func:`sampled_protocol` ranks (distinct, at most
    ``max_listens`` sampled with the seed, sorted)."""
    listens = (
        test.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
        .unique()
        .sort([C.user_id, C.track_id])
    )
    if listens.height > max_listens:
        listens = listens.sample(max_listens, seed=seed).sort([C.user_id, C.track_id])
    return listens


def sampled_protocol(
    test: pl.DataFrame,
    heard: ListsLike,
    catalogue: pl.Series | np.ndarray,
    lists: Mapping[str, ListsLike] | None = None,
    global_scores: Mapping[str, pl.DataFrame] | None = None,
    pair_scorers: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
    n_negatives: int = 100,
    ks: Sequence[int] = (5, 10),
    max_listens: int = 200_000,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    batch_pairs: int = 2_000_000,
) -> pl.DataFrame:
    """The sampled protocol of one seed report: the held-out track among 100 random unheard ones.

    **Biased**, and shown only as a secondary table: random negatives are mostly obscure
    tracks, so any popularity signal ranks the held-out track high, and the numbers
    are far above (and order models differently from) the full-catalogue metrics.

    For each test listen (at most ``max_listens``, sampled with the seed), the held-out
    track and ``n_negatives`` tracks the user never heard (:func:`sample_negatives`;
    ``heard`` should hold all the users' listens, test window included) are ranked by
    each model; ``sampled_recall@k`` is the share of listens whose held-out track lands
    in the top ``k`` of those ``n_negatives + 1``. Scores:

    * ``lists``: per-user lists (``user_id, track_id, rank``): a track in the user's
      list ranks by its list rank; tracks outside the list rank below every track in
      it, in random order (ties broken at random with the seed). A longer list covers
      more of the sample, so compare lists cut to the same length.
    * ``global_scores``: ``track_id, score`` (higher is better; a track absent scores
      0), for example ``top_popular``: listeners before the test window
      (:func:`popularity`); ties broken at random.
    * ``pair_scorers``: functions of (user ids, track ids) arrays giving a score for any
      pair, higher better (the oracle's true preference), called on at most
      ``batch_pairs`` pairs at a time; ties broken at random.

    Returns
    -------
    ``model, k, metric`` (``sampled_recall``), ``segment`` (``all``), ``value, lower,
    upper``: the interval is a percentile bootstrap over the sampled listens (listens of
    one user are not independent, so it is somewhat narrow).
    """
    listens = sampled_listens(test, max_listens, seed)
    users = listens.get_column(C.user_id).to_numpy()
    tracks = catalogue.to_numpy() if isinstance(catalogue, pl.Series) else np.asarray(catalogue)
    rng = np.random.default_rng(seed)
    negatives = _negative_matrix(
        users, _heard_keys(heard, users), np.asarray(tracks, dtype=np.int64), n_negatives, rng, max_rounds=8
    )
    # row i: the held-out track, then its negatives; -1 pads a row short of negatives
    grid = np.concatenate([listens.get_column(C.track_id).to_numpy()[:, None], negatives], axis=1)
    width = grid.shape[1]
    pad = grid < 0
    ties = rng.random(grid.shape)
    ties[pad] = 2.0  # a pad is never ahead of the held-out track
    flat_users = np.repeat(users, width).astype(np.int32)
    flat_tracks = grid.ravel().astype(np.int32)
    cell_keys = pair_keys(flat_users, flat_tracks)
    # the cells sorted once: each list's (far fewer) keys are then searched among them
    cell_order = np.argsort(cell_keys, kind="stable")
    sorted_cells = cell_keys[cell_order]

    def lookup(sorted_keys: np.ndarray, values: np.ndarray, missing: float) -> np.ndarray:
        """``values`` of the cells whose key is in ``sorted_keys`` (distinct), ``missing`` elsewhere."""
        found = np.full(len(cell_keys), missing, dtype=np.float64)
        lo = np.searchsorted(sorted_cells, sorted_keys, side="left")
        n = np.searchsorted(sorted_cells, sorted_keys, side="right") - lo
        has = n > 0
        lo, n, vals = lo[has], n[has], values[has]
        # every cell of a key (a track drawn for two listens of a user is two cells)
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        found[cell_order[np.repeat(lo, n) + within]] = np.repeat(vals, n)
        return found

    sampled_users = pl.DataFrame({C.user_id: np.unique(users)})

    out = []

    def add(name: str, keys: np.ndarray) -> None:
        """``keys``: one per cell of ``grid``, lower is better."""
        keys = keys.reshape(grid.shape).astype(np.float64)
        keys[pad] = math.inf
        position = _positions(keys, ties)
        for k in ks:
            hit = (position <= k).astype(np.float64)
            low, high = bootstrap_ci(hit, n_boot, alpha, seed)
            out.append(
                {
                    "model": name,
                    "k": k,
                    "metric": "sampled_recall",
                    "segment": ALL,
                    "value": _mean(hit),
                    "lower": low,
                    "upper": high,
                }
            )

    for name, frame in (lists or {}).items():
        ranks = (
            frame.lazy()
            .join(sampled_users.lazy(), on=C.user_id, how="semi")
            .select(pair_key().alias("key"), pl.col(C.rank).cast(pl.Float64))
            .group_by("key")
            .agg(pl.col(C.rank).min())
            .sort("key")
            .collect(engine="streaming")
        )
        add(name, lookup(ranks.get_column("key").to_numpy(), ranks.get_column(C.rank).to_numpy(), math.inf))
    for name, table in (global_scores or {}).items():
        table = (
            table.select(pl.col(C.track_id).cast(pl.Int64), pl.col(C.score).cast(pl.Float64))
            .unique(C.track_id)
            .sort(C.track_id)
        )
        ids, values = table.get_column(C.track_id).to_numpy(), table.get_column(C.score).to_numpy()
        row = _rows_of(ids, flat_tracks, len(ids))  # a direct table where track ids are dense
        add(name, -np.append(values, 0.0)[row])
    for name, scorer in (pair_scorers or {}).items():
        real = np.flatnonzero(~pad.ravel())
        keys = np.full(len(flat_tracks), math.inf)
        for lo in range(0, len(real), batch_pairs):
            cells = real[lo : lo + batch_pairs]
            keys[cells] = -np.asarray(scorer(flat_users[cells], flat_tracks[cells]), dtype=np.float64)
        add(name, keys)
    return pl.DataFrame(out, schema=METRICS_SCHEMA, orient="row")


# --------------------------------------------------------------------------- writing


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


def write_comparison(comparison: pl.DataFrame, paths: RunPaths) -> Path:
    """Write ``outputs/<run>/evaluation.json``: :func:`compare_final`'s rows and their verdicts
    (the report's index page lists the verdicts)."""
    verdicts = comparison.get_column("verdict").to_list()
    return write_json({"comparison": comparison.to_dicts(), "verdicts": verdicts}, paths.evaluation)


# --------------------------------------------------------------------------- one pass over the models


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
    **evaluate: Any,
) -> ModelsPass:
    """:func:`evaluate_models` and :func:`metric_curves` with each model's lists collected once.

    The lists (lazy frames of the files, or frames) are read one model at a time, to
    ``k_max``, and only their first ``keep_k`` positions (and the lists of ``keep_users``)
    are kept, so memory holds one model's whole lists, not every model's: at full scale
    each is some 85M rows. ``evaluate``: the other arguments of :func:`evaluate_models`
    (``ks``, ``beyond_k``, ``tracks``, ``listeners``, ...). The tables are those of the
    functions called on every model at once.
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
    evaluate["beyond_metrics"] = _beyond_metrics(int(evaluate.get("beyond_k", 10)), **inputs)  # built once
    tables, curves, rows, top, sampled = [], [], {}, {}, {}
    for name, frame in lists.items():
        collected = _collect_lists(frame, warm_df, k_max)
        rows[name] = collected.height
        tables.append(evaluate_models({name: collected}, test, segs, **evaluate))
        curves.append(metric_curves({name: collected}, warm_test, warm_df.get_column(C.user_id), ks=curve_ks))
        top[name] = collected.filter(pl.col(C.rank) <= keep_k)
        if keep_df is not None:
            sampled[name] = collected.join(keep_df, on=C.user_id, how="semi")
        del collected
    if cold is not None:
        tables.append(evaluate_models({}, test, segs, cold=cold, **evaluate))
    results = sort_metrics(pl.concat(tables)) if tables else pl.DataFrame(schema=METRICS_SCHEMA)
    return ModelsPass(results, pl.concat(curves) if curves else pl.DataFrame(), rows, top, sampled)


# --------------------------------------------------------------------------- figures' data


def metric_curves(
    lists: Mapping[str, ListsLike], test: pl.DataFrame, users: pl.Series, ks: Sequence[int] = CURVE_KS
) -> pl.DataFrame:
    """``model, k, metric, value``: mean recall@k and NDCG@k over ``users`` for every k (no intervals)."""
    users_df = _users_frame(users)
    test = test.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
    metrics = [m(k) for k in ks for m in (Recall, NDCG)]
    rows = []
    for name, recos in lists.items():
        per_user = evaluate_per_user(
            _collect_lists(recos, users_df, max(ks)), test, metrics, users=users_df.get_column(C.user_id)
        )
        rows += [
            {"model": name, "k": m.k, "metric": m.name, "value": _mean(v.get_column(VALUE).to_numpy())}
            for m, v in zip(metrics, per_user, strict=True)
        ]
    return pl.DataFrame(rows)


def popularity_bias(
    lists: Mapping[str, ListsLike], test: pl.DataFrame, users: pl.Series, listeners: pl.DataFrame, k: int = 10
) -> pl.DataFrame:
    """``model, listeners``: the popularity (listeners before the test window) of every recommended
    top-``k`` track, and under model ``"test listens"`` of what the users actually heard."""
    users_df = _users_frame(users)
    frames = [
        test.join(users_df, on=C.user_id, how="semi")
        .select(C.track_id)
        .with_columns(pl.lit("test listens").alias("model"))
    ]
    for name, recos in lists.items():
        frames.append(
            _collect_lists(recos, users_df, k)
            .filter(pl.col(C.rank) <= k)
            .select(C.track_id)
            .with_columns(pl.lit(name).alias("model"))
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
