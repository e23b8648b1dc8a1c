"""The oracle: on synthetic data, each user's best unheard tracks by the generator's true preference."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import polars as pl

from musicrec.candidates.base import index_of
from musicrec.evaluation.common import GENERATORS, ListsLike
from musicrec.evaluation.lists import _users_frame, history_pairs, popularity, sample_of
from musicrec.io import RunPaths
from musicrec.metrics import (
    pair_key,
    pair_keys,
)
from musicrec.parallel import in_order
from musicrec.schema import C


def _candidate_pool_sources(paths: RunPaths) -> dict[str, pl.LazyFrame]:
    """Every per-user list of the run, whole: the generators' files and the ranker's list."""
    sources = {
        name: pl.scan_parquet(paths.candidate_list(name))
        for name in GENERATORS
        if name != "top_popular" and paths.candidate_list(name).is_file()
    }
    if paths.recommendations.is_file():
        sources["final"] = pl.scan_parquet(paths.recommendations).filter(pl.col("source") == "final")
    return sources


def oracle_users(warm_users: pl.Series, max_users: int | None, seed: int) -> pl.Series:
    """The users the oracle lists: every warm user, or a seeded sample of at most ``max_users``
    (``evaluation.oracle_max_users``; pass them as ``model_users`` of :func:`evaluate_each_model`
    so that its metrics are over them alone), sorted."""
    picked = sample_of(warm_users.to_numpy(), max_users, seed)
    return pl.Series(C.user_id, picked, dtype=pl.Int32)


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

    def block_lists(lo: int) -> list[pl.DataFrame]:
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
        return _oracle_block(bound, block, dense, extra, heard_keys, k_max, batch_pairs, true_preference)

    # blocks two at a time (musicrec.parallel): the scans, sorts and gathers release the GIL
    parts = [part for block in in_order(block_lists, range(0, len(user_ids), block_users)) for part in block]
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
