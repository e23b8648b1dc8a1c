"""Item-kNN candidates with ``implicit``: a user's unheard tracks scored by the neighbours of the
tracks they heard.

The model is one of implicit's item-item recommenders (``implicit.nearest_neighbours``:
``cosine``, ``bm25`` or ``tfidf``), fitted on the window's users-by-tracks values: the summed
weights, decayed with a half-life when one is set (:func:`~musicrec.candidates.base.decayed_matrix`,
the decay ALS uses). The fit keeps each track's ``neighbours`` most similar tracks (the track
itself among them, as implicit counts); a user's score for a track is the sum, over the tracks
they heard, of their value times that track's similarity to it.

Threads: the fit's all-pairs search runs in implicit's own (OpenMP) threads, ``threads`` of
them. Scoring runs in C without the GIL, one user at a time, but behind a lock per model, so
each caller thread scores with its own copy of the model (implicit builds the copy's scorer;
the similarity matrix is shared): the stage's ``workers`` batches really run at once. Neither
step calls BLAS; it is limited to one thread around the fit all the same, as around ALS.
"""

from __future__ import annotations

import copy
import queue
import warnings

import numpy as np
import polars as pl
import scipy.sparse as sp
from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender
from implicit.utils import ParameterWarning
from threadpoolctl import threadpool_limits

from musicrec.candidates.base import FitData, decayed_matrix, index_of
from musicrec.config import ItemKnnConfig
from musicrec.parallel import WORKERS
from musicrec.schema import C


class ItemKnnGenerator:
    """``item_knn``: top-N unheard tracks per user from item-to-item nearest neighbours.

    >>> import polars as pl
    >>> from musicrec.schema import C
    >>> # users 1 and 2 both heard tracks 10 and 11; user 3 heard 10 only: 11 is its neighbour
    >>> inter = pl.DataFrame({C.user_id: [1, 1, 2, 2, 3], C.track_id: [10, 11, 10, 11, 10],
    ...                       C.weight: [1.0] * 5})
    >>> data = FitData.build(inter, pl.DataFrame({C.track_id: [10, 11, 12]}))
    >>> knn = ItemKnnGenerator(ItemKnnConfig(kind="cosine"), threads=1).fit(data)
    >>> cols, scores = knn.recommend(data.user_rows([3]), 2)
    >>> data.track_ids[cols[0, 0]].item(), cols[0, 1].item()  # then nothing: 12 has no listener
    (11, -1)
    """

    name = "item_knn"

    def __init__(self, config: ItemKnnConfig, seed: int = 0, threads: int = WORKERS):
        # seed: the shape every generator has; the neighbours are exact, nothing is drawn
        self.config, self.seed, self.threads = config, seed, max(1, threads)

    def fit(self, data: FitData) -> ItemKnnGenerator:
        """Fit on ``data``: the values (decayed when ``half_life_days`` is set), then the neighbours."""
        cfg = self.config
        self.data = data
        self.values = decayed_matrix(data, cfg.half_life_days).astype(np.float32, copy=False)
        learn_from = (
            self.values
            if cfg.max_user_tracks is None
            else latest_tracks(data, self.values, cfg.max_user_tracks)
        )
        if cfg.kind == "bm25":
            model = BM25Recommender(K=cfg.neighbours, K1=cfg.bm25_k1, B=cfg.bm25_b, num_threads=self.threads)
        elif cfg.kind == "tfidf":
            model = TFIDFRecommender(K=cfg.neighbours, num_threads=self.threads)
        else:
            model = CosineRecommender(K=cfg.neighbours, num_threads=self.threads)
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit weights the matrix as COO and converts it back to CSR itself: nothing to act on
            warnings.simplefilter("ignore", ParameterWarning)
            model.fit(learn_from, show_progress=False)
        self.model = model
        self._idle: queue.SimpleQueue = queue.SimpleQueue()  # models no thread is scoring with
        self._idle.put(model)
        return self

    def recommend(self, user_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` unheard track columns for matrix rows ``user_rows``; column -1 pads a list that
        runs out of tracks with a positive score (implicit fills such a list with heard tracks at 0)."""
        user_rows = np.asarray(user_rows, dtype=np.int32)
        try:
            model = self._idle.get_nowait()
        except queue.Empty:  # another thread is scoring: a copy with its own scorer
            model = copy.copy(self.model)
        try:
            cols, scores = model.recommend(
                user_rows, self.values[user_rows], N=n, filter_already_liked_items=True
            )
        finally:
            self._idle.put(model)
        cols = np.atleast_2d(cols).astype(np.int64)
        scores = np.atleast_2d(scores).astype(np.float32)
        keep = (cols >= 0) & (scores > 0)
        scores = np.where(keep, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")  # best first, whatever order implicit gave
        cols = np.take_along_axis(np.where(keep, cols, -1), order, axis=1)
        return cols, np.take_along_axis(scores, order, axis=1)


def latest_tracks(data: FitData, values: sp.csr_matrix, per_user: int) -> sp.csr_matrix:
    """``values`` with only each user's latest ``per_user`` tracks (by their interaction's
    ``started_at``; ties by track id): what the similarities are learnt from when the fit's
    cost, the sum over users of their tracks squared, must be bounded (Yambda's 10,000 users
    average about 2,000 tracks each)."""
    inter = data.interactions
    if C.started_at not in inter.columns:
        raise ValueError(
            "item_knn.max_user_tracks keeps each user's latest tracks: the interactions need started_at"
        )
    if int(np.diff(values.indptr).max(initial=0)) <= per_user:
        return values
    latest = inter.filter(
        pl.struct(C.started_at, C.track_id).rank("ordinal", descending=True).over(C.user_id) <= per_user
    )
    rows = index_of(data.user_ids, latest.get_column(C.user_id).to_numpy())
    cols = index_of(data.track_ids, latest.get_column(C.track_id).to_numpy())
    keep = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=values.shape)
    return values.multiply(keep).tocsr().astype(np.float32)
