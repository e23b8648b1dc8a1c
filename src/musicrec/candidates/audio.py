"""Audio candidates: an autoencoder over standardised track features, neighbours by cosine.

The features are standardised (constant columns become 0), and scikit-learn's
``MLPRegressor`` with hidden layers ``(hidden, embedding_dim, hidden)`` learns to
reproduce them (X -> X) on a seeded sample of at most ``sample_tracks`` tracks. A
track's embedding is the activation of the middle layer, computed with numpy from the
fitted weights, L2-normalised. Tracks without features get no embedding: they are never
recommended and have no neighbours.

A user's profile is the mean embedding of their last ``recent_k`` listens. Ranking a
profile (or a track) against the whole catalogue is a dense 1M-wide row per query:
affordable for small catalogues (brute force, exact), far too slow for 1.37M users and
1M tracks. Above ``exact_max_tracks`` embedded tracks the search is an inverted-file
index: tracks are clustered (k-means on the sphere) into cells of about ``cell_size``;
queries are grouped by their nearest cell and ranked, exactly, against the tracks of the
``probe_cells`` cells nearest to it.
"""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPRegressor

from musicrec.candidates.base import FitData, top_n
from musicrec.config import AudioConfig
from musicrec.schema import C

#: Scores ranked at once (float32: 32 MB) in a dense block.
DENSE_BLOCK = 8_000_000
#: Tracks k-means is fitted on (at most).
KMEANS_SAMPLE = 200_000
#: Listens ranked at once when finding each user's most recent ones.
PROFILE_ROWS = 30_000_000

_ACTIVATIONS = {
    "identity": lambda a: a,
    "logistic": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "tanh": np.tanh,
    "relu": lambda a: np.maximum(a, 0.0),
}


class AudioGenerator:
    """Autoencoder embeddings of audio features; see the module docstring."""

    name = "audio"

    def __init__(self, config: AudioConfig, seed: int = 0):
        self.config = config
        self.seed = seed
        self.fit_report: dict[str, float] = {}

    # ---------------------------------------------------------------- fit
    def fit(self, data: FitData) -> AudioGenerator:
        if data.track_features is None:
            raise ValueError(f"{self.name}: the data has no track_features: audio generator skipped")
        started = time.perf_counter()
        self.data, self.track_ids = data, data.track_ids
        self.n_tracks = len(data.track_ids)
        cols, features = self._standardised_features(data)
        if len(cols) == 0:
            raise ValueError(
                f"{self.name}: no track_features match the catalogue's tracks: audio generator skipped"
            )
        rng = np.random.default_rng(self.seed)
        sample = np.sort(rng.choice(len(cols), min(len(cols), self.config.sample_tracks), replace=False))
        train = features[sample]
        self.model = MLPRegressor(
            hidden_layer_sizes=(self.config.hidden, self.config.embedding_dim, self.config.hidden),
            activation=self.config.activation,
            batch_size=min(self.config.batch_size, len(train)),
            max_iter=self.config.max_iter,
            random_state=self.seed,
        )
        with warnings.catch_warnings():  # reported as "converged" in fit_report instead
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(train, train)
        mse = float(((self.model.predict(train) - train) ** 2).mean())
        variance = float(train.var(axis=0).mean())

        embeddings = self.encode(features)
        norms = np.linalg.norm(embeddings, axis=1)
        ok = norms > 1e-12
        self.embeddings = np.zeros((self.n_tracks, embeddings.shape[1]), dtype=np.float32)
        self.embeddings[cols[ok]] = embeddings[ok] / norms[ok, None]
        self.has_embedding = np.zeros(self.n_tracks, dtype=bool)
        self.has_embedding[cols[ok]] = True

        self._build_index()
        self.profiles, self.has_profile = self._user_profiles(data)
        self.fit_report = {
            "tracks_with_features": int(len(cols)),
            "tracks_embedded": int(self.has_embedding.sum()),
            "train_tracks": int(len(sample)),
            "iterations": int(self.model.n_iter_),
            "converged": bool(self.model.n_iter_ < self.config.max_iter),
            "train_mse": mse,
            "train_r2": 1.0 - mse / variance if variance > 0 else float("nan"),
            "cells": int(len(self.cell_start) - 1),
            "users_with_profile": int(self.has_profile.sum()),
            "fit_seconds": time.perf_counter() - started,
        }
        return self

    def for_window(self, data: FitData) -> AudioGenerator:
        """This model (embeddings and index come from the track features alone) with the user
        profiles of another window: what the history + labels fit reuses of the history fit."""
        if not np.array_equal(data.track_ids, self.track_ids):
            raise ValueError(f"{self.name}: another catalogue; fit the model afresh")
        gen = copy.copy(self)
        gen.data = data
        gen.profiles, gen.has_profile = gen._user_profiles(data)
        gen.fit_report = self.fit_report | {
            "users_with_profile": int(gen.has_profile.sum()),
            "reused": "embeddings and index of the history fit",
        }
        return gen

    def _standardised_features(self, data: FitData) -> tuple[np.ndarray, np.ndarray]:
        """Catalogue columns of the tracks with features, and their standardised features."""
        frame = data.track_features
        numeric = [c for c, t in frame.schema.items() if c != C.track_id and t.is_numeric()]
        if not numeric:
            raise ValueError(f"{self.name}: track_features has no numeric columns: audio generator skipped")
        cols = data.track_columns(frame.get_column(C.track_id).to_numpy())
        keep = cols >= 0
        x = frame.select(pl.col(numeric).cast(pl.Float64)).to_numpy()[keep]
        cols = cols[keep]
        x[~np.isfinite(x)] = np.nan
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
            std = np.nanstd(x, axis=0) if len(x) else np.ones(x.shape[1])
        mean = np.nan_to_num(mean)
        std = np.where(np.isfinite(std) & (std > 0), std, np.inf)  # constant columns -> 0
        z = np.nan_to_num((x - mean) / std)  # missing values -> the mean
        self.feature_columns, self.feature_mean, self.feature_std = numeric, mean, std
        return cols, z.astype(np.float32)

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Bottleneck activations of standardised features, with the fitted weights."""
        act = _ACTIVATIONS[self.model.activation]
        out = np.asarray(features, dtype=np.float32)
        for layer in range(2):  # input -> hidden -> embedding
            weights = self.model.coefs_[layer].astype(np.float32)
            bias = self.model.intercepts_[layer].astype(np.float32)
            out = act(out @ weights + bias)
        return out

    def _user_profiles(self, data: FitData) -> tuple[np.ndarray, np.ndarray]:
        """Mean embedding of each user's last ``recent_k`` embedded listens, L2-normalised.

        Users are taken in ranges of about ``PROFILE_ROWS`` listens, so the per-user
        ranking (polars ``top_k_by``) never holds the whole table twice.
        """
        profiles = np.zeros((len(data.user_ids), self.embeddings.shape[1]), dtype=np.float32)
        per_user = np.cumsum(np.diff(data.matrix.indptr))
        first = 0
        while first < len(data.user_ids):
            base = per_user[first - 1] if first else 0
            last = max(first + 1, int(np.searchsorted(per_user, base + PROFILE_ROWS, side="right")))
            lo, hi = data.user_ids[first], data.user_ids[min(last, len(data.user_ids)) - 1]
            recent = (
                data.interactions.lazy()
                .filter(pl.col(C.user_id).is_between(lo, hi))
                .group_by(C.user_id)
                .agg(pl.col(C.track_id).top_k_by([C.started_at, C.track_seq], self.config.recent_k))
                .explode(C.track_id)
                .collect()
            )
            rows = data.user_rows(recent.get_column(C.user_id).to_numpy())
            cols = data.track_columns(recent.get_column(C.track_id).to_numpy())
            ok = (rows >= 0) & (cols >= 0)
            ok[ok] = self.has_embedding[cols[ok]]
            _add_rows(profiles, rows[ok], self.embeddings[cols[ok]])
            first = last
        norms = np.linalg.norm(profiles, axis=1)
        has = norms > 1e-12
        profiles[has] /= norms[has, None]
        return profiles, has

    def _build_index(self) -> None:
        """Cells of embedded tracks (one cell, brute force, for small catalogues)."""
        cols = np.flatnonzero(self.has_embedding)
        n_cells = 1
        if len(cols) > self.config.exact_max_tracks:
            n_cells = int(np.ceil(len(cols) / self.config.cell_size))
        if n_cells == 1:
            self.centroids = np.zeros((1, self.embeddings.shape[1]), dtype=np.float32)
            cell = np.zeros(len(cols), dtype=np.int64)
            self.probes = np.zeros((1, 1), dtype=np.int64)
        else:
            rng = np.random.default_rng(self.seed)
            sample = cols[rng.choice(len(cols), min(len(cols), KMEANS_SAMPLE), replace=False)]
            kmeans = KMeans(n_clusters=n_cells, n_init=1, max_iter=30, random_state=self.seed)
            kmeans.fit(self.embeddings[sample])
            centroids = kmeans.cluster_centers_.astype(np.float32)
            norms = np.linalg.norm(centroids, axis=1, keepdims=True)
            self.centroids = centroids / np.maximum(norms, 1e-12)
            cell = self._nearest_cell(self.embeddings[cols])
            probe = min(self.config.probe_cells, n_cells)
            affinity = self.centroids @ self.centroids.T
            np.fill_diagonal(affinity, np.inf)  # a cell always probes itself
            self.probes = np.argpartition(-affinity, probe - 1, axis=1)[:, :probe]
        order = np.argsort(cell, kind="stable")
        self.cell_tracks = cols[order]
        self.cell_start = np.searchsorted(cell[order], np.arange(len(self.centroids) + 1))
        # the embeddings in cell order: a probe's vectors are slices, not a gather of scattered rows
        # (which took 39% of the similar lists' time at full scale)
        self.cell_vectors = self.embeddings[self.cell_tracks]

    def _nearest_cell(self, vectors: np.ndarray) -> np.ndarray:
        if len(self.centroids) == 1:
            return np.zeros(len(vectors), dtype=np.int64)
        step = max(1, DENSE_BLOCK // len(self.centroids))
        return np.concatenate(
            [
                np.argmax(vectors[lo : lo + step] @ self.centroids.T, axis=1)
                for lo in range(0, len(vectors), step)
            ]
            or [np.zeros(0, np.int64)]
        )

    # ---------------------------------------------------------- recommend
    def recommend(self, user_rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        user_rows = np.asarray(user_rows, dtype=np.int64)
        return self._search(
            self.profiles[user_rows], self.has_profile[user_rows], n, self.data.matrix[user_rows]
        )

    # ------------------------------------------------------------ similar
    def similar(self, track_cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        track_cols = np.asarray(track_cols, dtype=np.int64)
        itself = sp.csr_matrix(
            (np.ones(len(track_cols), dtype=np.float32), (np.arange(len(track_cols)), track_cols)),
            shape=(len(track_cols), self.n_tracks),
        )
        return self._search(self.embeddings[track_cols], self.has_embedding[track_cols], n, itself)

    # ------------------------------------------------------------ search
    def _search(
        self, queries: np.ndarray, valid: np.ndarray, n: int, banned: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` embedded tracks by cosine for each valid query, never a ``banned`` one."""
        cols = np.full((len(queries), n), -1, dtype=np.int64)
        scores = np.full((len(queries), n), -np.inf, dtype=np.float32)
        rows = np.flatnonzero(valid)
        if len(rows) == 0 or len(self.cell_tracks) == 0:
            return cols, scores
        banned = sp.csr_matrix(banned)
        cell = self._nearest_cell(queries[rows])
        order = np.argsort(cell, kind="stable")
        rows, cell = rows[order], cell[order]
        bounds = np.flatnonzero(np.diff(cell)) + 1
        position = np.full(self.n_tracks, -1, dtype=np.int64)  # candidate column -> block column
        for group in np.split(np.arange(len(rows)), bounds):
            probes = self.probes[cell[group[0]]]
            spans = [slice(self.cell_start[c], self.cell_start[c + 1]) for c in probes]
            candidates = np.concatenate([self.cell_tracks[span] for span in spans])
            vectors = np.concatenate([self.cell_vectors[span] for span in spans])
            position[candidates] = np.arange(len(candidates))
            step = max(1, DENSE_BLOCK // max(1, len(candidates)))
            for lo in range(0, len(group), step):
                query_rows = rows[group[lo : lo + step]]
                block = queries[query_rows] @ vectors.T
                ban = banned[query_rows]
                ban_cols = position[ban.indices]
                hit = ban_cols >= 0
                ban_rows = np.repeat(np.arange(len(query_rows)), np.diff(ban.indptr))
                exclude = sp.csr_matrix(
                    (np.ones(int(hit.sum()), dtype=np.float32), (ban_rows[hit], ban_cols[hit])),
                    shape=block.shape,
                )
                best, best_scores = top_n(block, n, exclude)
                cols[query_rows] = np.where(best >= 0, candidates[np.maximum(best, 0)], -1)
                scores[query_rows] = best_scores
            position[candidates] = -1
        return cols, scores


def _add_rows(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``target[rows] += values`` with repeated rows summed (one bincount per column)."""
    for j in range(target.shape[1]):
        target[:, j] += np.bincount(rows, weights=values[:, j], minlength=len(target))
