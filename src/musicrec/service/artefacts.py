"""A run's artefacts in memory, for serving: sorted numpy arrays, one lookup by binary search.

Each per-key table (the offline lists by user, the similar lists by track, the heard
tracks by user) is a :class:`Lists`: the sorted distinct keys, offsets into flat value
arrays (CSR), and the values in list order. A lookup is a ``searchsorted`` and a slice:
no pandas, no per-request scan. Memory: about 8 bytes a row for lists with scores and 4
for the heard tracks (the default run's 4.4M listens: 18 MB).

:class:`Artefacts` is immutable once loaded; a reload builds a new one and the service
swaps the reference, so requests in flight finish on the one they started with.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from musicrec.candidates.base import index_of
from musicrec.candidates.i2i import i2i_from_history
from musicrec.io import RunPaths
from musicrec.schema import C
from musicrec.service.blending import OFFLINE, ONLINE, POPULAR, Ranked
from musicrec.service.settings import ServiceConfig


class ArtefactError(RuntimeError):
    """An artefact the service needs is missing or unreadable; the message says which and why."""


@dataclass(frozen=True)
class Lists:
    """Ranked lists keyed by an id, in CSR form: ``values[indptr[i]:indptr[i + 1]]`` of ``keys[i]``."""

    keys: np.ndarray
    indptr: np.ndarray
    values: np.ndarray
    scores: np.ndarray | None = None
    codes: np.ndarray | None = None  # a small per-row label code (the offline list's source)

    @classmethod
    def build(
        cls, frame: pl.DataFrame, key: str, value: str, score: str | None = None, code: str | None = None
    ) -> Lists:
        """From ``frame`` already sorted by ``key`` and then list order."""
        keys = frame.get_column(key).to_numpy()
        n = len(keys)
        if n == 0:
            empty = np.empty(0, np.int64)
            return cls(
                empty,
                np.zeros(1, np.int64),
                empty.astype(np.int32),
                np.empty(0, np.float32) if score else None,
                np.empty(0, np.uint8) if code else None,
            )
        starts = np.flatnonzero(np.diff(keys)) + 1
        indptr = np.concatenate([[0], starts, [n]]).astype(np.int64)
        return cls(
            keys[indptr[:-1]].astype(np.int64),
            indptr,
            frame.get_column(value).to_numpy().astype(np.int32, copy=False),
            frame.get_column(score).to_numpy().astype(np.float32, copy=False) if score else None,
            frame.get_column(code).to_numpy().astype(np.uint8, copy=False) if code else None,
        )

    def locate(self, key: int) -> slice | None:
        i = int(np.searchsorted(self.keys, key))
        if i < len(self.keys) and self.keys[i] == key:
            return slice(int(self.indptr[i]), int(self.indptr[i + 1]))
        return None

    def __contains__(self, key: int) -> bool:
        return self.locate(key) is not None

    @property
    def nbytes(self) -> int:
        arrays = (self.keys, self.indptr, self.values, self.scores, self.codes)
        return sum(a.nbytes for a in arrays if a is not None)


def _need(path: Path, stage: str) -> Path:
    if not path.is_file():
        raise ArtefactError(f"{path}: missing; run `make {stage} PARAMS=...` for this run first")
    return path


def _read(path: Path, stage: str, columns: list[str]) -> pl.LazyFrame:
    lf = pl.scan_parquet(_need(path, stage))
    missing = [c for c in columns if c not in lf.collect_schema()]
    if missing:
        raise ArtefactError(f"{path}: missing columns {missing} (has {list(lf.collect_schema())})")
    return lf.select(columns)


@dataclass(frozen=True)
class Artefacts:
    """Everything a request needs, loaded once (see :meth:`load`)."""

    run: str
    version: int
    offline: Lists  # user -> final list (tracks, scores, source codes)
    offline_labels: tuple[str, ...]  # source code -> label
    similar: Lists  # track -> similar tracks, best first
    popular: Ranked  # top-popular, best first
    heard: Lists  # user -> sorted track ids never offered: heard, or disliked (sources with dislikes)
    catalog: np.ndarray  # sorted track ids of tracks.parquet
    track_names: pl.Series | None  # aligned with catalog
    artist_names: pl.Series | None
    heard_until: dt.date | None  # history listens before this day count as heard (None: all)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    # loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, paths: RunPaths, config: ServiceConfig, version: int = 1) -> Artefacts:
        """Read the run's artefacts (raises :class:`ArtefactError` naming a missing file)."""
        start = time.perf_counter()
        rec_cols = [C.user_id, C.track_id, C.score, C.rank]
        if "source" in pl.scan_parquet(_need(paths.recommendations, "ranking")).collect_schema():
            recs = _read(paths.recommendations, "ranking", [*rec_cols, "source"])
        else:  # an older run: every list is the ranker's
            recs = _read(paths.recommendations, "ranking", rec_cols).with_columns(source=pl.lit(OFFLINE))
        recs = recs.sort(C.user_id, C.rank).collect()
        labels = tuple(sorted({OFFLINE, POPULAR, *recs.get_column("source").unique().to_list()}))
        recs = recs.with_columns(
            pl.col("source")
            .replace_strict({label: i for i, label in enumerate(labels)}, return_dtype=pl.UInt8)
            .alias("code")
        )
        offline = Lists.build(recs, C.user_id, C.track_id, C.score, "code")
        del recs

        similar = Lists.build(
            _read(
                paths.candidate_list("similar"),
                "candidates",
                [C.track_id, C.similar_track_id, C.score, C.rank],
            )
            .sort(C.track_id, C.rank)
            .collect(),
            C.track_id,
            C.similar_track_id,
            C.score,
        )
        top = (
            _read(paths.candidate_list("top_popular"), "candidates", [C.track_id, C.score, C.rank])
            .sort(C.rank)
            .collect()
        )
        popular = Ranked(
            top.get_column(C.track_id).to_numpy().astype(np.int64),
            top.get_column(C.score).to_numpy().astype(np.float64),
            POPULAR,
        )

        history = _read(paths.interactions, "data", [C.user_id, C.track_id, C.started_at, C.track_seq])
        heard_until = None
        if config.heard == "fit" and paths.split.is_file():
            windows = paths.windows()
            heard_until = windows.fit_end("history+labels")
            history = windows.fit_listens(history, "history+labels")
        never = history.select(C.user_id, C.track_id)
        if paths.disliked_pairs.is_file():  # sources with dislikes (Yambda): never offered either
            disliked = pl.scan_parquet(paths.disliked_pairs)
            if heard_until is not None:
                from musicrec.split import midnight

                disliked = disliked.filter(pl.col("disliked_at") < midnight(heard_until))
            never = pl.concat([never, disliked.select(C.user_id, C.track_id).cast(never.collect_schema())])
        heard = Lists.build(
            never.unique().sort(C.user_id, C.track_id).collect(),
            C.user_id,
            C.track_id,
        )

        catalog_frame = _read(paths.tracks, "data", [C.track_id]).unique().sort(C.track_id).collect()
        catalog = catalog_frame.get_column(C.track_id).to_numpy().astype(np.int64)
        track_names = artist_names = None
        if config.names and paths.catalog_names.is_file():
            from musicrec.names import with_names

            named = with_names(catalog_frame, paths)
            track_names, artist_names = named.get_column("track"), named.get_column("artist")
        return cls(
            run=paths.run,
            version=version,
            offline=offline,
            offline_labels=labels,
            similar=similar,
            popular=popular,
            heard=heard,
            catalog=catalog,
            track_names=track_names,
            artist_names=artist_names,
            heard_until=heard_until,
            load_seconds=time.perf_counter() - start,
        )

    # lookups ---------------------------------------------------------------------------

    def offline_for(self, user_id: int) -> Ranked:
        """The user's offline list (empty when the run has none for them)."""
        where = self.offline.locate(user_id)
        if where is None:
            return Ranked.empty(OFFLINE)
        codes = self.offline.codes[where]
        first = int(codes[0])
        if (codes == first).all():  # one source per user: one label, no per-row list
            source: str | list[str] = self.offline_labels[first]
        else:
            source = [self.offline_labels[int(c)] for c in codes]
        return Ranked(self.offline.values[where], self.offline.scores[where], source)

    def heard_by(self, user_id: int) -> np.ndarray:
        where = self.heard.locate(user_id)
        return self.heard.values[where] if where is not None else np.empty(0, np.int32)

    def is_known(self, track_ids: np.ndarray) -> np.ndarray:
        """Which of ``track_ids`` are in the catalogue (``tracks.parquet``)."""
        return index_of(self.catalog, np.asarray(track_ids, dtype=np.int64)) >= 0

    def similar_to(self, track_id: int, k: int) -> Ranked:
        where = self.similar.locate(track_id)
        if where is None:
            return Ranked.empty(ONLINE)
        stop = min(where.stop, where.start + k)
        return Ranked(
            self.similar.values[where.start : stop].astype(np.int64),
            self.similar.scores[where.start : stop].astype(np.float64),
            ONLINE,
        )

    def online_for(self, user_id: int, recent: list[int], heard: np.ndarray, n: int) -> Ranked:
        """Online i2i picks from ``recent`` tracks (newest first) with the candidates stage's function.

        Only the similar lists of ``recent`` are handed to
        :func:`musicrec.candidates.i2i.i2i_from_history` (a slice, not the whole table), and
        only the heard tracks among their neighbours: the same result, at request cost.
        """
        if not recent:
            return Ranked.empty(ONLINE)
        found = [(t, w) for t, w in ((t, self.similar.locate(t)) for t in recent) if w is not None]
        if not found:
            return Ranked.empty(ONLINE)
        rows = np.concatenate([np.arange(w.start, w.stop) for _, w in found])
        src = np.repeat(np.asarray([t for t, _ in found], np.int32), [w.stop - w.start for _, w in found])
        neighbours = self.similar.values[rows]
        similar = pl.DataFrame(
            {C.track_id: src, C.similar_track_id: neighbours, C.score: self.similar.scores[rows]}
        )
        heard_here = np.intersect1d(neighbours, heard) if len(heard) else np.empty(0, np.int32)
        picks = i2i_from_history(
            pl.DataFrame(
                {C.user_id: np.full(len(recent), user_id, np.int32), C.track_id: np.asarray(recent, np.int32)}
            ),
            similar,
            n=n,
            heard=pl.DataFrame(
                {
                    C.user_id: np.full(len(heard_here), user_id, np.int32),
                    C.track_id: heard_here.astype(np.int32),
                }
            ),
        )
        return Ranked(
            picks.get_column(C.track_id).to_numpy().astype(np.int64),
            picks.get_column(C.score).to_numpy().astype(np.float64),
            ONLINE,
        )

    def names_of(self, track_ids: list[int]) -> tuple[list[str | None], list[str | None]]:
        """Track and artist names of ``track_ids`` (``None`` where unknown or not loaded)."""
        if self.track_names is None or not track_ids:
            return [None] * len(track_ids), [None] * len(track_ids)
        at = index_of(self.catalog, np.asarray(track_ids, np.int64))
        known, pos = at >= 0, np.maximum(at, 0)
        tracks = self.track_names.gather(pos).to_list()
        artists = self.artist_names.gather(pos).to_list()
        return (
            [t if ok else None for t, ok in zip(tracks, known, strict=True)],
            [a if ok else None for a, ok in zip(artists, known, strict=True)],
        )

    def summary(self) -> dict:
        return {
            "run": self.run,
            "version": self.version,
            "loaded_at": dt.datetime.fromtimestamp(self.loaded_at, dt.UTC).isoformat(),
            "load_seconds": round(self.load_seconds, 3),
            "users_with_lists": int(len(self.offline.keys)),
            "tracks": int(len(self.catalog)),
            "tracks_with_similar": int(len(self.similar.keys)),
            "top_popular": len(self.popular),
            "heard_until": self.heard_until.isoformat() if self.heard_until else None,
            "memory_mb": round(
                (self.offline.nbytes + self.similar.nbytes + self.heard.nbytes + self.catalog.nbytes) / 2**20,
                1,
            ),
        }
