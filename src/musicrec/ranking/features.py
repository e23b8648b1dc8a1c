"""Features of (user, candidate track) pairs, computed in bulk for a range of users.

Every feature comes from one fitting window: the listens before ``window_end`` (the
labels window's start when training, the test window's start when scoring) and the
candidate lists of the generators fitted on that same window. Nothing after
``window_end`` is read, which is what keeps the ranker honest.

Groups of features (all per user batch, with polars joins, never a Python loop over
users):

- **candidates**: for every generator, the candidate's score and rank in its list
  (null when it did not propose it), and ``n_generators``, how many proposed it;
- **track**: listens over the window and over its last ``recent_days``, the trend
  (recent days against the days before them), days since the first listen, numbers of
  artists, albums and genres;
- **user**: listens, active days, days since the last listen, the share of listens in
  the top genre and top artist, and how concentrated the history is (Herfindahl index
  of genre shares);
- **user x track**: affinity to the track's genres (summed share of the user's
  listens in them), listens of the same artists and album, i2i support (how many of
  the user's latest listens have the track in their similar list, and the summed
  similarity), and cosine similarity to the user's content (TF-IDF) and audio
  (autoencoder) profiles where those generators ran.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from musicrec.candidates.base import FitData, IdPositions, index_of
from musicrec.candidates.content import normalize_rows, ragged_positions, tfidf_vectors
from musicrec.candidates.i2i import last_listens
from musicrec.config import Profile, RankingConfig
from musicrec.generators import USER_LISTS
from musicrec.metrics import pair_keys
from musicrec.schema import C
from musicrec.split import midnight

#: Generators whose lists are per user (top-popular is one global list).
USER_GENERATORS = USER_LISTS  # musicrec.generators
#: Columns that identify a row, never features.
KEYS = (C.user_id, C.track_id)
TARGET = "target"


def _days_before(end: dt.date, column: pl.Expr) -> pl.Expr:
    """Days (fractional) from ``column`` to the window's end."""
    return (midnight(end) - column).dt.total_seconds() / 86_400.0


def track_features(
    listens: pl.LazyFrame, tracks: pl.DataFrame, window_end: dt.date, recent_days: int
) -> pl.DataFrame:
    """One row per catalogue track: popularity, its trend, age, and catalogue counts.

    Tracks nobody listened to in the window get zero listens and a null age.
    """
    end = midnight(window_end)
    recent = end - pl.duration(days=recent_days)
    before = end - pl.duration(days=2 * recent_days)
    started = pl.col(C.started_at)
    stats = (
        listens.group_by(C.track_id)
        .agg(
            pl.len().cast(pl.Float32).alias("track_listens"),
            (started >= recent).sum().cast(pl.Float32).alias("track_listens_recent"),
            ((started >= before) & (started < recent)).sum().cast(pl.Float32).alias("_before"),
            started.min().alias("_first"),
        )
        .collect(engine="streaming")
    )
    return (
        tracks.select(
            pl.col(C.track_id),
            pl.col(C.artists).list.len().cast(pl.Int16).alias("track_artists"),
            pl.col(C.albums).list.len().cast(pl.Int16).alias("track_albums"),
            pl.col(C.genres).list.len().cast(pl.Int16).alias("track_genres"),
        )
        .join(stats, on=C.track_id, how="left")
        .with_columns(pl.col("track_listens", "track_listens_recent", "_before").fill_null(0.0))
        .with_columns(
            ((pl.col("track_listens_recent") + 1) / (pl.col("_before") + 1))
            .cast(pl.Float32)
            .alias("track_trend"),
            _days_before(window_end, pl.col("_first")).cast(pl.Float32).alias("track_age_days"),
        )
        .drop("_before", "_first")
    )


def _exploded(tracks: pl.DataFrame, column: str, name: str) -> pl.DataFrame:
    """``track_id, <name>``: one row per (track, list element)."""
    return tracks.select(C.track_id, pl.col(column).alias(name)).explode(name).drop_nulls(name)


def user_features(
    listens: pl.DataFrame, track_genres: pl.DataFrame, track_artists: pl.DataFrame, window_end: dt.date
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Per-user features, and the user-genre and user-artist listen counts they come from.

    Returns ``(users, user_genres, user_artists)``; ``user_genres`` has ``genre_share``
    (the share of the user's listens whose track carries the genre).
    """
    users = listens.group_by(C.user_id).agg(
        pl.len().cast(pl.Float32).alias("user_listens"),
        pl.col(C.started_at).dt.date().n_unique().cast(pl.Float32).alias("user_active_days"),
        _days_before(window_end, pl.col(C.started_at).max()).cast(pl.Float32).alias("user_days_since_last"),
    )
    user_genres = (
        listens.select(C.user_id, C.track_id)
        .join(track_genres, on=C.track_id)
        .group_by(C.user_id, "genre")
        .agg(pl.len().alias("_n"))
        .join(users.select(C.user_id, "user_listens"), on=C.user_id)
        .with_columns((pl.col("_n") / pl.col("user_listens")).cast(pl.Float32).alias("genre_share"))
    )
    user_artists = (
        listens.select(C.user_id, C.track_id)
        .join(track_artists, on=C.track_id)
        .group_by(C.user_id, "artist")
        .agg(pl.len().cast(pl.Float32).alias("artist_listens"))
    )
    genre_stats = user_genres.group_by(C.user_id).agg(
        pl.col("genre_share").max().alias("user_top_genre_share"),
        ((pl.col("_n") / pl.col("_n").sum()) ** 2).sum().cast(pl.Float32).alias("user_genre_hhi"),
    )
    artist_stats = (
        user_artists.join(users.select(C.user_id, "user_listens"), on=C.user_id)
        .group_by(C.user_id)
        .agg(
            (pl.col("artist_listens").max() / pl.col("user_listens").first())
            .cast(pl.Float32)
            .alias("user_top_artist_share")
        )
    )
    users = users.join(genre_stats, on=C.user_id, how="left").join(artist_stats, on=C.user_id, how="left")
    return users, user_genres.select(C.user_id, "genre", "genre_share"), user_artists


def candidate_files(folder: Path, counts: dict[str, int]) -> list[tuple[str, int, Path]]:
    """``(generator, count, list file)`` of the generators in ``counts`` with a positive count
    whose list exists in ``folder``: the lists the ranking stage merges."""
    paths = ((name, n, folder / f"{name}.parquet") for name, n in counts.items())
    return [(name, n, path) for name, n, path in paths if n > 0 and path.is_file()]


def merge_candidates(
    folder: Path, counts: dict[str, int], users: pl.DataFrame, listens: pl.DataFrame
) -> pl.DataFrame:
    """The union of the generators' lists for ``users`` (a ``user_id`` frame).

    For every generator in ``counts`` with a positive count whose file exists in
    ``folder``: its top ``count`` per user, with ``<generator>_score`` and
    ``<generator>_rank`` (null where it did not propose the track). The global
    top-popular list is offered to every user minus the tracks they already heard.
    """
    lo, hi = users.get_column(C.user_id).min(), users.get_column(C.user_id).max()
    parts = []
    for name, n, path in candidate_files(folder, counts):
        if name == "top_popular":
            top = pl.read_parquet(path).filter(pl.col(C.rank) <= n)
            part = (
                users.select(C.user_id)
                .join(top, how="cross")
                .join(listens.select(KEYS), on=list(KEYS), how="anti")
            )
        else:
            part = (
                pl.scan_parquet(path)
                .filter(pl.col(C.user_id).is_between(lo, hi) & (pl.col(C.rank) <= n))
                .join(users.lazy().select(C.user_id), on=C.user_id, how="semi")
                .collect()
            )
        parts.append((name, part))
    if not parts:
        raise FileNotFoundError(
            f"no candidate lists in {folder} for generators {sorted(counts)}: run `make candidates` first"
        )
    # the union through one int64 key per pair, sorted (rows come out sorted by user, then
    # track); each list's values land at their positions in it
    part_keys = [frame_pair_keys(part) for _, part in parts]
    keys, inverse = _unique_inverse(np.concatenate(part_keys))
    columns, proposed = {}, np.zeros(len(keys), dtype=np.int8)
    start = 0
    for (name, part), part_key in zip(parts, part_keys, strict=True):
        at, start = inverse[start : start + len(part_key)], start + len(part_key)
        for column, dtype in ((C.score, pl.Float32), (C.rank, pl.Int16)):
            values = np.full(len(keys), np.nan, dtype=np.float32)
            values[at] = part.get_column(column).to_numpy()
            columns[f"{name}_{column}"] = pl.Series(values).fill_nan(None).cast(dtype)
        proposed[at] += 1
    return pl.DataFrame(
        {
            C.user_id: (keys >> 32).astype(np.int32),
            C.track_id: ((keys & 0xFFFFFFFF) - (1 << 31)).astype(np.int32),
            **columns,
            "n_generators": proposed,
        }
    )


def _unique_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(keys, return_inverse=True)``, through polars' multi-threaded arg-sort (several
    times faster than numpy's hash-based unique or a sort and a binary search per key)."""
    if len(keys) == 0:
        return keys, np.zeros(0, dtype=np.int64)
    order = pl.Series(keys).arg_sort().to_numpy()
    ordered = keys[order]
    first = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    return ordered[first], inverse


def frame_pair_keys(frame: pl.DataFrame) -> np.ndarray:
    """:func:`musicrec.metrics.pair_keys` of a frame's ``user_id, track_id`` rows."""
    return pair_keys(frame.get_column(C.user_id).to_numpy(), frame.get_column(C.track_id).to_numpy())


@dataclass
class TrackLists:
    """A list column of the catalogue (genres, artists or albums) as CSR arrays over sorted tracks.

    ``items`` are positions in ``vocabulary`` (the sorted distinct ids of the column), so that
    per-user tables can be laid out as sparse users x items matrices.
    """

    indptr: np.ndarray
    items: np.ndarray
    vocabulary: np.ndarray

    def __post_init__(self) -> None:
        self.position = IdPositions(self.vocabulary)

    @classmethod
    def build(cls, exploded: pl.DataFrame, column: str, track_ids: np.ndarray) -> TrackLists:
        """From ``track_id, <column>`` rows (see :func:`_exploded`) and the sorted catalogue ids."""
        pos = index_of(track_ids, exploded.get_column(C.track_id).to_numpy())
        keep = pos >= 0
        order = np.argsort(pos[keep], kind="stable")
        counts = np.bincount(pos[keep], minlength=len(track_ids))
        ids = exploded.get_column(column).to_numpy()[keep][order]
        vocabulary, items = np.unique(ids, return_inverse=True)
        return cls(
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items.astype(np.int32), vocabulary
        )

    def of(self, track_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For catalogue positions ``track_pos``: (row of each item, the item's position), flattened."""
        lengths = np.diff(self.indptr)[track_pos]
        return (
            np.repeat(np.arange(len(track_pos)), lengths),
            self.items[ragged_positions(self.indptr[track_pos], lengths)],
        )

    def user_matrix(
        self, per_user: pl.DataFrame, column: str, value: str, user_ids: np.ndarray
    ) -> sp.csr_array:
        """``per_user``'s ``value`` (one row per user and item) as a users x vocabulary matrix,
        rows in the order of the sorted ``user_ids``; items outside the vocabulary are left out."""
        rows = index_of(user_ids, per_user.get_column(C.user_id).to_numpy())
        cols = self.position(per_user.get_column(column).to_numpy())
        keep = (rows >= 0) & (cols >= 0)
        return _csr(
            per_user.get_column(value).to_numpy()[keep],
            rows[keep],
            cols[keep],
            (len(user_ids), len(self.vocabulary)),
        )


def _csr(values: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_array:
    """A canonical (sorted, summed) float32 CSR array, for fast element look-ups."""
    matrix = sp.csr_array((values.astype(np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    return matrix


def pair_values(matrix: sp.csr_array, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` for every i (0 where not stored), float32.

    A binary search within each (short) sparse row: much faster than a global search of
    millions of (row, column) keys, and the rows of a user's pairs are near one another.
    """
    if len(rows) == 0 or matrix.nnz == 0:
        return np.zeros(len(rows), dtype=np.float32)
    return np.asarray(matrix[rows, cols], dtype=np.float32).ravel()


class ContentSimilarity:
    """Cosine between a user's TF-IDF profile and a track's vector (see ``candidates.content``)."""

    def __init__(self, tracks: pl.DataFrame):
        self.track_ids = np.sort(tracks.get_column(C.track_id).to_numpy()).astype(np.int32)
        self.vectors, _ = tfidf_vectors(tracks, self.track_ids)
        self.position = IdPositions(self.track_ids)

    def __call__(self, listens: pl.DataFrame, pairs: pl.DataFrame) -> np.ndarray:
        """Scores of ``pairs`` (``user_id, track_id``), profiles from ``listens``' weights."""
        users = np.unique(listens.get_column(C.user_id).to_numpy())
        rows = np.searchsorted(users, listens.get_column(C.user_id).to_numpy())
        cols = self.position(listens.get_column(C.track_id).to_numpy())
        weights = listens.get_column(C.weight).to_numpy().astype(np.float32)
        matrix = sp.csr_matrix((weights, (rows, cols)), shape=(len(users), len(self.track_ids)))
        profiles = normalize_rows(matrix @ self.vectors)
        profiles.sort_indices()
        return _sparse_pair_dots(profiles, users, self.vectors, self.position, pairs)


def _sparse_pair_dots(
    left: sp.csr_matrix,
    left_ids: np.ndarray,
    right: sp.csr_matrix,
    right_position: IdPositions,
    pairs: pl.DataFrame,
) -> np.ndarray:
    """``left[user] . right[track]`` for every pair, walking the (short) right rows only.

    One pass per position in a right row (tracks carry a handful of tokens), so no ragged
    index of every (pair, entry) is built: at full scale that took half the time.
    """
    u = index_of(left_ids, pairs.get_column(C.user_id).to_numpy())
    t = right_position(pairs.get_column(C.track_id).to_numpy())
    known = np.flatnonzero((u >= 0) & (t >= 0))
    u, t = u[known], t[known]
    starts = right.indptr[t]
    lengths = right.indptr[t + 1] - starts
    left = sp.csr_array(left)
    out = np.zeros(len(pairs), dtype=np.float32)
    for j in range(int(lengths.max(initial=0))):
        has = np.flatnonzero(lengths > j)
        entry = starts[has] + j
        out[known[has]] += pair_values(left, u[has], right.indices[entry]) * right.data[entry]
    return out


class AudioSimilarity:
    """Cosine between the mean audio embedding of a user's latest listens and a track's."""

    def __init__(self, profile: Profile, tracks: pl.DataFrame, features: pl.DataFrame):
        from musicrec.candidates.audio import AudioGenerator

        empty = pl.DataFrame(schema={C.user_id: pl.Int32, C.track_id: pl.Int32, C.weight: pl.Float32})
        model = AudioGenerator(profile.candidates.audio, seed=profile.seed).fit(
            FitData.build(empty, tracks, features)
        )
        self.track_ids, self.embeddings = model.data.track_ids, model.embeddings
        self.position = IdPositions(self.track_ids)
        self.recent_k = profile.candidates.audio.recent_k

    _cache: dict[tuple, AudioSimilarity] = {}

    @classmethod
    def cached(cls, profile: Profile, paths, tracks: pl.DataFrame) -> AudioSimilarity:
        """One fitted model per run, features file and audio settings: the embeddings depend on the
        static track features only, so training and scoring (two windows) share one fit."""
        files = tuple(
            (str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in (paths.track_features, paths.tracks)
        )
        key = (files, profile.seed, profile.candidates.audio.model_dump_json())
        if key not in cls._cache:
            cls._cache.clear()  # keep one model: a full-scale one is about 40 MB
            cls._cache[key] = cls(profile, tracks, pl.read_parquet(paths.track_features))
        return cls._cache[key]

    def __call__(self, listens: pl.DataFrame, pairs: pl.DataFrame) -> np.ndarray:
        recent = last_listens(listens, self.recent_k).collect()
        users = np.unique(recent.get_column(C.user_id).to_numpy())
        rows = np.searchsorted(users, recent.get_column(C.user_id).to_numpy())
        cols = self.position(recent.get_column(C.track_id).to_numpy())
        profiles = np.zeros((len(users), self.embeddings.shape[1]), dtype=np.float32)
        np.add.at(profiles, rows, self.embeddings[cols])
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        profiles = np.divide(profiles, norms, out=np.zeros_like(profiles), where=norms > 1e-12)
        u = index_of(users, pairs.get_column(C.user_id).to_numpy())
        t = self.position(pairs.get_column(C.track_id).to_numpy())
        known = (u >= 0) & (t >= 0)
        scores = np.einsum("ij,ij->i", profiles[np.maximum(u, 0)], self.embeddings[np.maximum(t, 0)])
        return np.where(known, scores, 0.0).astype(np.float32)


@dataclass
class FeatureBuilder:
    """Builds the feature rows of one fitting window, a batch of users at a time.

    >>> builder = FeatureBuilder.for_window(profile, paths, "history")   # doctest: +SKIP
    >>> rows = builder.batch(users)      # doctest: +SKIP
    """

    config: RankingConfig
    listens: pl.LazyFrame
    window_end: dt.date
    candidates_dir: Path
    tracks: pl.DataFrame
    track_table: pl.DataFrame
    similar: pl.DataFrame | None
    content: ContentSimilarity | None = None
    audio: AudioSimilarity | None = None

    @classmethod
    def for_window(cls, profile: Profile, paths, window: str) -> FeatureBuilder:
        """``window`` is "history" (ends at labels' start) or "history+labels" (at test's start)."""
        from musicrec.candidates.stage import output_dir
        from musicrec.io import read_json

        windows = paths.windows()
        end = windows.fit_end(window)
        listens = windows.fit_listens(pl.scan_parquet(paths.interactions), window)
        tracks = pl.read_parquet(paths.tracks)
        folder = output_dir(paths, window)
        similar_path = folder / "similar.parquet"
        similar = (
            pl.read_parquet(similar_path, columns=[C.track_id, C.similar_track_id, C.score])
            if similar_path.is_file()
            else None
        )
        runs = (
            {r["generator"]: r for r in read_json(folder / "runs.json")}
            if (folder / "runs.json").is_file()
            else {}
        )
        content = ContentSimilarity(tracks) if runs.get("content", {}).get("files") else None
        audio = (
            AudioSimilarity.cached(profile, paths, tracks)
            if runs.get("audio", {}).get("files") and paths.track_features.is_file()
            else None
        )
        return cls(
            profile.ranking,
            listens,
            end,
            folder,
            tracks,
            track_features(listens, tracks, end, profile.ranking.recent_days),
            similar,
            content,
            audio,
        )

    def window_users(self) -> np.ndarray:
        """Every user with a listen in the window, sorted."""
        return np.sort(
            self.listens.select(pl.col(C.user_id).unique())
            .collect(engine="streaming")
            .get_column(C.user_id)
            .to_numpy()
        )

    def batch(self, user_ids: np.ndarray) -> pl.DataFrame:
        """Candidates with every feature for ``user_ids`` (sorted), rows sorted by user."""
        users = pl.DataFrame({C.user_id: np.asarray(user_ids, dtype=np.int32)})
        if users.height == 0:
            return pl.DataFrame()
        lo, hi = int(user_ids[0]), int(user_ids[-1])
        listens = (
            self.listens.filter(pl.col(C.user_id).is_between(lo, hi))
            .join(users.lazy(), on=C.user_id, how="semi")
            .select(C.user_id, C.track_id, C.started_at, C.track_seq, C.weight)
            .collect()
        )
        rows = merge_candidates(self.candidates_dir, self.config.candidates, users, listens)
        return self.add_features(rows, listens)

    def __post_init__(self) -> None:
        self.genres = _exploded(self.tracks, C.genres, "genre")
        self.artists = _exploded(self.tracks, C.artists, "artist")
        self.albums = _exploded(self.tracks, C.albums, "album")
        self.track_table = self.track_table.sort(C.track_id)
        self.track_ids = self.track_table.get_column(C.track_id).to_numpy()
        self.track_position = IdPositions(self.track_ids)
        self.track_lists = {
            name: TrackLists.build(frame, name, self.track_ids)
            for name, frame in (("genre", self.genres), ("artist", self.artists), ("album", self.albums))
        }

    def add_features(self, rows: pl.DataFrame, listens: pl.DataFrame) -> pl.DataFrame:
        """Track, user and user-track features of candidate ``rows`` from the users' ``listens``."""
        users, user_genres, user_artists = user_features(listens, self.genres, self.artists, self.window_end)
        user_albums = (
            listens.select(C.user_id, C.track_id)
            .join(self.albums, on=C.track_id)
            .group_by(C.user_id, "album")
            .agg(pl.len().cast(pl.Float32).alias("album_listens"))
        )
        keys = frame_pair_keys(rows)
        if len(keys) > 1 and not (np.diff(keys) > 0).all():
            order = np.argsort(keys, kind="stable")
            rows, keys = rows[order], keys[order]
        track_pos = self.track_position(rows.get_column(C.track_id).to_numpy())
        if (track_pos < 0).any():
            unknown = rows.filter(pl.Series(track_pos < 0)).head(3).rows()
            raise ValueError(f"candidates name tracks missing from the catalogue, e.g. {unknown}")
        row_users = rows.get_column(C.user_id).to_numpy()
        batch_users = np.unique(row_users)
        row_of_user = index_of(batch_users, row_users)

        def summed(name: str, per_user: pl.DataFrame, value: str) -> np.ndarray:
            """For every row, the user's ``value`` summed over the track's items (genres, ...)."""
            lists = self.track_lists[name]
            pair_of, items = lists.of(track_pos)
            weights = pair_values(
                lists.user_matrix(per_user, name, value, batch_users), row_of_user[pair_of], items
            )
            return np.bincount(pair_of, weights=weights, minlength=len(rows)).astype(np.float32)

        out = (
            pl.concat(
                [
                    rows.with_columns(
                        genre_affinity=summed("genre", user_genres, "genre_share"),
                        artist_listens=summed("artist", user_artists, "artist_listens"),
                        album_listens=summed("album", user_albums, "album_listens"),
                    ),
                    self.track_table[track_pos].drop(C.track_id),
                ],
                how="horizontal",
            )
            .join(users, on=C.user_id, how="left", maintain_order="left")
            .with_columns(
                (pl.col("artist_listens") / pl.col("user_listens")).cast(pl.Float32).alias("artist_share")
            )
        )
        if self.similar is not None:
            recent = last_listens(listens, self.config.i2i_last_k)
            support = (
                recent.join(self.similar.lazy(), on=C.track_id)
                .group_by(C.user_id, C.similar_track_id)
                .agg(
                    pl.len().cast(pl.Float32).alias("i2i_support"),
                    pl.col(C.score).sum().cast(pl.Float32).alias("i2i_similarity"),
                )
                .rename({C.similar_track_id: C.track_id})
                .collect()
            )
            out = out.with_columns(
                **_lookup(keys, frame_pair_keys(support), support, ["i2i_support", "i2i_similarity"])
            )
        if self.content is not None:
            out = out.with_columns(pl.Series("content_similarity", self.content(listens, out.select(KEYS))))
        if self.audio is not None:
            out = out.with_columns(pl.Series("audio_similarity", self.audio(listens, out.select(KEYS))))
        return out


def _lookup(
    keys: np.ndarray, table_keys: np.ndarray, table: pl.DataFrame, columns: list[str]
) -> dict[str, np.ndarray]:
    """``columns`` of ``table`` at the rows whose key is in ``keys`` (0 where absent)."""
    if len(table_keys) == 0:
        return {column: np.zeros(len(keys), dtype=np.float32) for column in columns}
    order = np.argsort(table_keys)
    at = index_of(table_keys[order], keys)
    found = at >= 0
    result = {}
    for column in columns:
        values = table.get_column(column).to_numpy()[order]
        result[column] = np.where(found, values[np.maximum(at, 0)], 0).astype(np.float32)
    return result


def feature_columns(frame: pl.DataFrame) -> list[str]:
    """The model's inputs: every column except the keys and the target."""
    return [c for c in frame.columns if c not in (*KEYS, TARGET)]
