"""The sampled protocol ("the held-out track among 100 random unheard ones"): a secondary table."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import polars as pl

from musicrec.candidates.base import index_of
from musicrec.evaluation.common import ALL, METRICS_SCHEMA, ListsLike, _mean
from musicrec.metrics import (
    _rows_of,
    bootstrap_ci,
    pair_key,
    pair_keys,
)
from musicrec.schema import C


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
