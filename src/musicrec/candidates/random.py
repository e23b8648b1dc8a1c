"""Random: uniform over the tracks a user has not heard, seeded. The floor every model must beat."""

from __future__ import annotations

import numpy as np

from musicrec.candidates.base import FitData


class RandomGenerator:
    """Draws each user's list uniformly from the unheard tracks of the catalogue.

    Deterministic for a seed and the same batches: each batch's draws are seeded with
    ``(seed, its first user row)``.
    """

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, data: FitData) -> RandomGenerator:
        self.data = data
        return self

    def recommend(self, user_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        user_rows = np.asarray(user_rows)
        n_tracks = len(self.data.track_ids)
        rng = np.random.default_rng([self.seed, int(user_rows[0]) if len(user_rows) else 0])
        # enough draws that the heaviest listener of the batch rarely runs short (then: the fallback)
        heard_max = int(np.diff(self.data.matrix.indptr)[user_rows].max(initial=0))
        draws = min(n_tracks, int(np.ceil(1.1 * n * n_tracks / max(1, n_tracks - heard_max))) + 16)
        cols = rng.integers(0, n_tracks, (len(user_rows), draws))
        keep = _first_unheard_unique(cols, user_rows, self.data, n)
        out = np.full((len(user_rows), n), -1, dtype=np.int64)
        for i in np.flatnonzero(keep.sum(1) < min(n, n_tracks)):
            # rare: the user heard much of a small catalogue; draw from the unheard tracks
            heard = self.data.matrix[user_rows[i]].indices
            unheard = np.setdiff1d(np.arange(n_tracks), heard)
            picked = rng.permutation(unheard)[:n]
            out[i, : len(picked)] = picked
            keep[i] = False
        rows, pos = np.nonzero(keep)
        rank = np.cumsum(keep, axis=1)[rows, pos] - 1
        out[rows, rank] = cols[rows, pos]
        scores = np.where(out >= 0, 1.0 / (1.0 + np.arange(n)), -np.inf).astype(np.float32)
        return out, scores


def _first_unheard_unique(cols: np.ndarray, user_rows: np.ndarray, data: FitData, n: int) -> np.ndarray:
    """Mask of draws that are neither heard nor repeated in their row, at most ``n`` per row.

    Each row is sorted once (stably, so a repeat's first draw is the one kept); the sorted
    keys ``row * n_tracks + column`` then meet the heard keys, sorted too, in one merge-like search.
    """
    n_tracks = len(data.track_ids)
    sub = data.matrix[user_rows]
    sub.sort_indices()
    heard_keys = (
        np.repeat(np.arange(len(user_rows), dtype=np.int64), np.diff(sub.indptr)) * n_tracks + sub.indices
    )
    order = np.argsort(cols, axis=1, kind="stable")
    ordered = np.take_along_axis(cols, order, axis=1)
    repeated = np.zeros(ordered.shape, dtype=bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    keys = (np.arange(len(user_rows), dtype=np.int64)[:, None] * n_tracks + ordered).ravel()
    if len(heard_keys):
        at = np.minimum(np.searchsorted(heard_keys, keys), len(heard_keys) - 1)
        repeated |= (heard_keys[at] == keys).reshape(ordered.shape)
    keep = np.empty(cols.shape, dtype=bool)
    np.put_along_axis(keep, order, ~repeated, axis=1)
    keep &= np.cumsum(keep, axis=1) <= n
    return keep
