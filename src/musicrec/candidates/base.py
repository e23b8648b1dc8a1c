"""What every candidate generator shares: the fitting data, the shape of the outputs, top-N.

A generator is fitted on one window's interactions (:class:`FitData`) and then
gives, in batches of users, a frame ``user_id, track_id, score, rank`` (rank 1 is
the best), and where it can, for every track a frame ``track_id,
similar_track_id, score, rank``. Ids are always the source's own; the dense
indices of the matrices stay inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import polars as pl
import scipy.sparse as sp

from musicrec.schema import C

USER_RECS_SCHEMA = {C.user_id: pl.Int32, C.track_id: pl.Int32, C.score: pl.Float32, C.rank: pl.Int16}
SIMILAR_SCHEMA = {C.track_id: pl.Int32, C.similar_track_id: pl.Int32, C.score: pl.Float32, C.rank: pl.Int16}
GLOBAL_SCHEMA = {C.track_id: pl.Int32, C.score: pl.Float32, C.rank: pl.Int16}


@dataclass
class FitData:
    """One fitting window, with the users-by-tracks matrix every generator can share.

    ``matrix[u, t]`` is the summed ``weight`` of user ``user_ids[u]`` on track
    ``track_ids[t]`` (float32 CSR). Columns cover the whole catalogue (sorted track
    ids), rows every user seen in the window (sorted user ids).
    """

    interactions: pl.DataFrame
    tracks: pl.DataFrame
    user_ids: np.ndarray
    track_ids: np.ndarray
    matrix: sp.csr_matrix
    track_features: pl.DataFrame | None = None

    @classmethod
    def build(
        cls, interactions: pl.DataFrame, tracks: pl.DataFrame, track_features: pl.DataFrame | None = None
    ) -> FitData:
        user_ids = np.sort(interactions.get_column(C.user_id).unique().to_numpy()).astype(np.int32)
        track_ids = np.sort(tracks.get_column(C.track_id).to_numpy()).astype(np.int32)
        rows = index_of(user_ids, interactions.get_column(C.user_id).to_numpy()).astype(np.int32)
        cols = index_of(track_ids, interactions.get_column(C.track_id).to_numpy()).astype(np.int32)
        if len(cols) and cols.min() < 0:
            unknown = interactions.get_column(C.track_id).filter(pl.Series(cols < 0)).head(3).to_list()
            raise ValueError(f"interactions name tracks missing from the catalogue, e.g. {unknown}")
        weights = interactions.get_column(C.weight).to_numpy().astype(np.float32)  # writable: sorted in place
        shape = (len(user_ids), len(track_ids))
        if len(rows) < 2 or (rows[1:] >= rows[:-1]).all():
            # listens in user order (as the data stage writes them): the rows' offsets directly,
            # without the coordinate format's copy and counting sort
            indptr = np.zeros(len(user_ids) + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows, minlength=len(user_ids)), out=indptr[1:])
            matrix = sp.csr_matrix((weights, cols, indptr), shape=shape, dtype=np.float32)
        else:
            matrix = sp.csr_matrix((weights, (rows, cols)), shape=shape, dtype=np.float32)
        matrix.sum_duplicates()
        return cls(interactions, tracks, user_ids, track_ids, matrix, track_features)

    def listeners(self) -> np.ndarray:
        """Distinct listeners of every track column (the matrix holds one entry per pair): a count
        of column indices, where a column-major copy of the matrix would cost its size again."""
        return np.bincount(self.matrix.indices, minlength=len(self.track_ids))

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        """Matrix rows of external user ids; -1 for users not in the window."""
        return index_of(self.user_ids, np.asarray(user_ids))

    def track_columns(self, track_ids: np.ndarray) -> np.ndarray:
        """Matrix columns of external track ids; -1 for tracks not in the catalogue."""
        return index_of(self.track_ids, np.asarray(track_ids))


def decayed_matrix(data: FitData, half_life_days: float | None) -> sp.csr_matrix:
    """The window's users-by-tracks matrix with every listen's weight times
    ``0.5 ** (age / half_life_days)``, age in days from the listen to the window's last listen
    (summed per pair as in :attr:`FitData.matrix`); ``data.matrix`` itself when no half-life is set.

    >>> import datetime as dt
    >>> day = dt.datetime(2022, 3, 1)
    >>> inter = pl.DataFrame({C.user_id: [1, 1], C.track_id: [7, 8], C.weight: [2.0, 1.0],
    ...                       C.started_at: [day, day + dt.timedelta(days=10)]})
    >>> data = FitData.build(inter, pl.DataFrame({C.track_id: [7, 8]}))
    >>> decayed_matrix(data, 5.0).toarray().tolist()  # 10 days old, 5-day half-life: a quarter
    [[0.5, 1.0]]
    """
    if half_life_days is None:
        return data.matrix
    inter = data.interactions
    end = inter.get_column(C.started_at).max()
    age = ((end - inter.get_column(C.started_at)).dt.total_seconds() / 86400).to_numpy()
    decayed = inter.get_column(C.weight).to_numpy() * 0.5 ** (age / half_life_days)
    rows = data.user_rows(inter.get_column(C.user_id).to_numpy())
    cols = data.track_columns(inter.get_column(C.track_id).to_numpy())
    return sp.csr_matrix((decayed.astype(np.float32), (rows, cols)), shape=data.matrix.shape)


#: Look-ups of at least this many ids go through a dense table when the ids allow one.
DENSE_LOOKUP = 1_000_000


def index_of(sorted_ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` ids in the sorted array ``sorted_ids``; -1 where absent.

    Many ids (``DENSE_LOOKUP`` or more) among compact distinct ones are looked up in a dense
    table (:class:`IdPositions`): a binary search per id misses the cache at every step, so
    200M track ids took some 45 s against 2 s for the gather (int64 positions either way).
    """
    sorted_ids, wanted = np.asarray(sorted_ids), np.asarray(wanted)
    if wanted.size >= DENSE_LOOKUP and len(sorted_ids) > 1 and (np.diff(sorted_ids) > 0).all():
        positions = IdPositions(sorted_ids)
        if positions.table is not None:
            return positions(wanted)
    pos = np.searchsorted(sorted_ids, wanted)
    pos = np.minimum(pos, len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == wanted, pos, -1) if len(sorted_ids) else -np.ones_like(wanted)


class IdPositions:
    """Positions of ids in a sorted array of distinct ids (-1 where absent), like ``index_of``.

    When the ids are compact (their span, last minus first, at most a few times their count,
    as catalogue ids and a batch of consecutive users usually are) the look-up is one gather
    from a dense table over that span instead of a binary search per id: the ranking stage
    looks up hundreds of millions of track ids.
    """

    def __init__(self, sorted_ids: np.ndarray):
        self.ids = np.asarray(sorted_ids)
        self.table: np.ndarray | None = None
        self.first = int(self.ids[0]) if len(self.ids) else 0
        if len(self.ids) and int(self.ids[-1]) - self.first < 4 * len(self.ids) + 1024:
            dtype = np.int32 if len(self.ids) < 2**31 else np.int64
            self.table = np.full(int(self.ids[-1]) - self.first + 1, -1, dtype=dtype)
            self.table[self.ids.astype(np.int64) - self.first] = np.arange(len(self.ids))

    def __call__(self, wanted: np.ndarray) -> np.ndarray:
        """Positions of ``wanted`` in the ids (int64; -1 where absent)."""
        wanted = np.asarray(wanted)
        if self.table is None:
            return index_of(self.ids, wanted)
        offset = wanted.astype(np.int64) - self.first
        if offset.size and offset.min() >= 0 and offset.max() < len(self.table):
            return self.table[offset].astype(np.int64)  # fewer temporaries than the general case
        inside = (offset >= 0) & (offset < len(self.table))
        return np.where(inside, self.table[np.where(inside, offset, 0)], -1).astype(np.int64)


class Generator(Protocol):
    """The shape every generator has (see :mod:`musicrec.candidates`)."""

    name: str

    def fit(self, data: FitData) -> Generator: ...

    def recommend(self, user_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` track columns and scores for matrix rows ``user_rows`` (heard tracks
        excluded), as two arrays of shape (len(user_rows), n); column -1 pads short lists."""
        ...


def top_n(scores: np.ndarray, n: int, exclude: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best columns of each row of a dense score block, best first.

    ``exclude`` (same shape, sparse) marks columns that must not be returned (the
    tracks a user already heard); they get ``-inf``. Rows with fewer than ``n``
    finite scores are padded with column -1 and score ``-inf``.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    if exclude is not None and exclude.nnz:
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    n_cols = scores.shape[1]
    k = min(n, n_cols)
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k]
        if k < n_cols
        else np.tile(np.arange(n_cols), (scores.shape[0], 1))
    )
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    cols = np.take_along_axis(part, order, axis=1)
    best = np.take_along_axis(part_scores, order, axis=1)
    cols = np.where(np.isfinite(best), cols, -1)
    if k < n:
        pad = n - k
        cols = np.pad(cols, ((0, 0), (0, pad)), constant_values=-1)
        best = np.pad(best, ((0, 0), (0, pad)), constant_values=-np.inf)
    return cols, best


def to_user_frame(
    user_ids: np.ndarray, cols: np.ndarray, scores: np.ndarray, track_ids: np.ndarray
) -> pl.DataFrame:
    """Rows (user, column, score) of a top-N block as a ``user_id, track_id, score, rank`` frame."""
    n = cols.shape[1]
    valid = cols >= 0
    users = np.repeat(np.asarray(user_ids, dtype=np.int32), n).reshape(cols.shape)
    ranks = np.broadcast_to(np.arange(1, n + 1, dtype=np.int16), cols.shape)
    return pl.DataFrame(
        {
            C.user_id: users[valid],
            C.track_id: track_ids[cols[valid]],
            C.score: scores[valid].astype(np.float32),
            C.rank: ranks[valid],
        },
        schema=USER_RECS_SCHEMA,
    )


def to_similar_frame(
    track_cols: np.ndarray, cols: np.ndarray, scores: np.ndarray, track_ids: np.ndarray
) -> pl.DataFrame:
    """A top-N block of neighbours as a ``track_id, similar_track_id, score, rank`` frame."""
    frame = to_user_frame(track_ids[track_cols], cols, scores, track_ids)
    return frame.rename({C.user_id: C.track_id, C.track_id: C.similar_track_id}).cast(SIMILAR_SCHEMA)


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size``."""
    for lo in range(0, n, size):
        yield slice(lo, min(lo + size, n))
