"""Content-based candidates: TF-IDF over each track's genre, artist and album tokens.

Every track is a bag of tokens (``g<genre>``, ``a<artist>``, ``l<album>``) weighted by
TF-IDF, rows L2-normalised. A user's profile is the listening-weighted mean of the
vectors of their tracks (L2-normalised), and a candidate's score is the cosine between
profile and track; similar tracks are the tracks of largest cosine.

Scoring every user against the whole catalogue is a dense 1.37M x 1M block at full
scale, too slow to rank. Since the vectors are sparse, only tracks sharing a token
with the profile can score above zero, so scores come from an inverted index (a
sparse product ``profiles @ postings``). Genres (and prolific artists) have posting
lists of hundreds of thousands of tracks that all score about the same, so every
token keeps only its ``max_postings`` tracks of largest weight as *entry points*. The
scores of the candidates reached stay exact: the weights cut from the lists are
added back for every candidate (``_add_cut_weights``). With ``max_postings`` at
least the longest list (small catalogues) the result is exactly the brute-force top-N.
"""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer

from musicrec.candidates.base import FitData, top_n
from musicrec.config import ContentConfig
from musicrec.schema import C

#: Token types, in the order of the token columns (genres first).
TOKEN_COLUMNS = (C.genres, C.artists, C.albums)
#: Elements of the dense blocks ranked at once (float32: 32 MB).
DENSE_BLOCK = 8_000_000
#: Added to banned entries before ranking (any score is far above).
BANNED = np.float32(1e30)


class ContentGenerator:
    """TF-IDF content model; see the module docstring."""

    name = "content"

    def __init__(self, config: ContentConfig, seed: int = 0):
        self.config = config
        self.seed = seed  # nothing random; kept for the common signature
        self.fit_report: dict[str, float] = {}

    # ---------------------------------------------------------------- fit
    def fit(self, data: FitData) -> ContentGenerator:
        self.data, self.track_ids = data, data.track_ids
        self.n_tracks = len(data.track_ids)
        self.vectors, self.token_type_sizes = tfidf_vectors(data.tracks, data.track_ids)
        self._build_postings(self.config.max_postings)
        self.fit_report = {
            "tracks": self.n_tracks,
            "tokens": int(self.vectors.shape[1]),
            "tracks_without_tokens": int((np.diff(self.vectors.indptr) == 0).sum()),
            "cut_tokens": int(len(self.cut_tokens)),
            "longest_posting": int(self._full_lengths.max(initial=0)),
        }
        return self

    def for_window(self, data: FitData) -> ContentGenerator:
        """This model (vectors and entry lists come from the catalogue alone) over another
        window's listens: what the history + labels fit reuses of the history fit."""
        if not np.array_equal(data.track_ids, self.track_ids):
            raise ValueError(f"{self.name}: another catalogue; fit the model afresh")
        gen = copy.copy(self)
        gen.data = data
        return gen

    def _build_postings(self, max_postings: int) -> None:
        """Entry points (each token's ``max_postings`` heaviest tracks) and the cut weights."""
        self._cut_postings(max_postings)
        # [entry lists ; identity]: the identity rows carry the ban (see _rank)
        self._entries = sp.vstack(
            [self.postings, sp.identity(self.n_tracks, dtype=np.float32, format="csr")], format="csr"
        )
        self._entry_lengths = np.diff(self._entries.indptr).astype(np.float64)

    def _cut_postings(self, max_postings: int) -> None:
        postings = self.vectors.T.tocsr()  # tokens x tracks
        lengths = np.diff(postings.indptr)
        self._full_lengths = lengths
        if lengths.max(initial=0) <= max_postings:
            self.postings = postings
            self.cut_tokens = np.zeros(0, dtype=np.int64)
            self.cut = None
            return
        # rank entries within each token by weight (heaviest first, ties by track column)
        token = np.repeat(np.arange(postings.shape[0]), lengths)
        order = np.lexsort((postings.indices, -postings.data, token))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - postings.indptr[token[order]]
        keep = rank < max_postings
        self.postings = sp.csr_matrix(
            (
                postings.data[keep],
                postings.indices[keep],
                np.concatenate([[0], np.cumsum(np.minimum(lengths, max_postings))]),
            ),
            shape=postings.shape,
            dtype=np.float32,
        )
        self.postings.sort_indices()
        # cut weights as tracks x cut-tokens (local ids), for adding back to candidates
        self.cut_tokens = np.flatnonzero(lengths > max_postings)
        local = np.full(postings.shape[0], -1, dtype=np.int64)
        local[self.cut_tokens] = np.arange(len(self.cut_tokens))
        tracks = postings.indices[~keep]
        self.cut = sp.csr_matrix(
            (postings.data[~keep], (tracks, local[token[~keep]])),
            shape=(self.n_tracks, len(self.cut_tokens)),
            dtype=np.float32,
        )
        self._cut_first = self.cut.indptr[:-1].astype(np.int64 if self.cut.nnz >= 2**31 else np.int32)
        self._cut_count = np.diff(self.cut.indptr).astype(np.int32)

    # ---------------------------------------------------------- recommend
    def user_profiles(self, user_rows: np.ndarray) -> sp.csr_matrix:
        """Listening-weighted mean of the track vectors of each user, L2-normalised."""
        profiles = self.data.matrix[np.asarray(user_rows)] @ self.vectors
        return normalize_rows(sp.csr_matrix(profiles, dtype=np.float32))

    def recommend(self, user_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        user_rows = np.asarray(user_rows, dtype=np.int64)
        return self._rank(self.user_profiles(user_rows), n, self.data.matrix[user_rows])

    # ------------------------------------------------------------ similar
    def similar(self, track_cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        track_cols = np.asarray(track_cols, dtype=np.int64)
        itself = sp.csr_matrix(
            (np.ones(len(track_cols), dtype=np.float32), (np.arange(len(track_cols)), track_cols)),
            shape=(len(track_cols), self.n_tracks),
        )
        return self._rank(self.vectors[track_cols], n, itself)

    # ------------------------------------------------------------ scoring
    def _rank(self, queries: sp.csr_matrix, n: int, banned: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` tracks by cosine for each query row, never a track stored in ``banned``.

        The ban rides along in the same sparse product: ``[queries | -BIG * banned]`` times
        ``[entry lists ; identity]``.
        """
        n_rows = queries.shape[0]
        cols = np.full((n_rows, n), -1, dtype=np.int64)
        scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
        if n_rows == 0:
            return cols, scores
        banned = sp.csr_matrix(banned)
        penalty = sp.csr_matrix(
            (np.full(banned.nnz, -BANNED, dtype=np.float32), banned.indices, banned.indptr),
            shape=banned.shape,
        )
        augmented = sp.hstack([queries, penalty], format="csr", dtype=np.float32)
        # candidate pairs of each query (an upper bound): the summed lengths of its entry lists
        pairs = abs(augmented).sign() @ self._entry_lengths

        def one_chunk(rows: np.ndarray) -> None:
            block = sp.csr_matrix(augmented[rows] @ self._entries, dtype=np.float32)
            if self.cut is not None:
                _add_cut_weights(
                    block, augmented[rows], self.cut_tokens, self.cut, self._cut_first, self._cut_count
                )
            block.data[block.data <= -BANNED / 2] = -np.inf
            cols[rows], scores[rows] = csr_top_n(block, n)

        for rows in _chunks_by_cost(pairs, self.config.max_pairs):
            one_chunk(rows)
        return cols, scores


# ---------------------------------------------------------------- helpers
def tfidf_vectors(tracks: pl.DataFrame, track_ids: np.ndarray) -> tuple[sp.csr_matrix, dict]:
    """Tracks x tokens TF-IDF vectors (float32 CSR, rows L2-normalised, indices sorted)."""
    counts, sizes = track_token_counts(tracks, track_ids)
    vectors = sp.csr_matrix(TfidfTransformer(norm="l2").fit_transform(counts), dtype=np.float32)
    vectors.sort_indices()
    return vectors, sizes


def track_token_counts(tracks: pl.DataFrame, track_ids: np.ndarray) -> tuple[sp.csr_matrix, dict]:
    """Tracks x tokens counts (rows in ``track_ids`` order); tokens are genres, artists, albums."""
    row_of = np.searchsorted(track_ids, tracks.get_column(C.track_id).to_numpy())
    rows, cols, sizes, offset = [], [], {}, 0
    for column in TOKEN_COLUMNS:
        flat = (
            tracks.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"), column)
            .explode(column)
            .drop_nulls(column)
        )
        ids, token = np.unique(flat.get_column(column).to_numpy(), return_inverse=True)
        rows.append(row_of[flat.get_column("_row").to_numpy()])
        cols.append(token.ravel() + offset)
        sizes[column] = len(ids)
        offset += len(ids)
    rows_all = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    cols_all = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    counts = sp.csr_matrix(
        (np.ones(len(rows_all), dtype=np.float32), (rows_all, cols_all)),
        shape=(len(track_ids), offset),
        dtype=np.float32,
    )
    counts.sum_duplicates()
    return counts, sizes


def normalize_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ m, dtype=np.float32)


def _chunks_by_cost(cost: np.ndarray, budget: float):
    """Consecutive index ranges whose summed ``cost`` stays within ``budget`` (at least one row)."""
    start, n = 0, len(cost)
    ends = np.cumsum(cost)
    while start < n:
        base = ends[start - 1] if start else 0.0
        stop = int(np.searchsorted(ends, base + budget, side="right"))
        stop = max(stop, start + 1)
        yield np.arange(start, stop)
        start = stop


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + l) for s, l in zip(starts, lengths)])``, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (np.cumsum(lengths) - lengths), lengths)
    return shift + np.arange(total, dtype=np.int64)


def _add_cut_weights(
    block: sp.csr_matrix,
    queries: sp.csr_matrix,
    cut_tokens: np.ndarray,
    cut: sp.csr_matrix,
    cut_first: np.ndarray,
    cut_count: np.ndarray,
) -> None:
    """Add, in place, the part of each candidate's score that goes through cut entries.

    ``cut`` is tracks x cut tokens; ``cut_first``/``cut_count`` are its row starts and
    lengths in small dtypes (gathered once per candidate pair).
    """
    if block.nnz == 0 or cut.nnz == 0:
        return
    q_cut = queries[:, cut_tokens].toarray()  # rows x cut tokens (few: genres, big artists)
    if not q_cut.any():
        return
    n_cut = q_cut.shape[1]
    q_cut = q_cut.ravel()
    rows = np.repeat(np.arange(block.shape[0], dtype=np.int64) * n_cut, np.diff(block.indptr))
    first = cut_first[block.indices]
    count = cut_count[block.indices]
    pairs = np.flatnonzero(count)
    j = 0
    while pairs.size:  # the j-th cut entry of every candidate that has one
        entry = first[pairs] + j
        block.data[pairs] += q_cut[rows[pairs] + cut.indices[entry]] * cut.data[entry]
        j += 1
        pairs = pairs[count[pairs] > j]


def csr_top_n(block: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best stored entries of each row of a sparse score block, best first.

    Like :func:`top_n` for the stored entries only (``-inf`` entries never count), padded
    with column -1 / ``-inf``. Rows are ranked in dense blocks of rows of similar length.
    """
    n_rows = block.shape[0]
    cols = np.full((n_rows, n), -1, dtype=np.int64)
    scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
    lengths = np.diff(block.indptr)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] > 0]
    start = 0
    while start < len(order):
        stop = len(order)
        while stop - start > 1 and (stop - start) * lengths[order[stop - 1]] > DENSE_BLOCK:
            stop = start + max(1, DENSE_BLOCK // int(lengths[order[stop - 1]]))
        rows = order[start:stop]
        width = int(lengths[rows].max())
        entry = ragged_positions(block.indptr[rows], lengths[rows])
        local = np.repeat(np.arange(len(rows)), lengths[rows])
        within = entry - np.repeat(block.indptr[rows], lengths[rows])
        dense = np.full((len(rows), width), -np.inf, dtype=np.float32)
        dense[local, within] = block.data[entry]
        best, best_scores = top_n(dense, n)
        found = best >= 0
        picked = np.where(found, block.indptr[rows][:, None] + np.maximum(best, 0), 0)
        cols[rows] = np.where(found, block.indices[picked], -1)
        scores[rows] = best_scores
        start = stop
    return cols, scores
