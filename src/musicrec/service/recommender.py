"""The service's logic without HTTP: :class:`Recommender` computes a user's list from the artefacts
and the event store; the endpoints (:mod:`musicrec.service.routes`) only parse and format.

>>> rec = Recommender(paths, config, db_path, admin_token=None)   # doctest: +SKIP
>>> rec.store = EventStore(db_path); rec.load()                   # doctest: +SKIP
>>> rec.recommend(user_id=42, k=10).body(names=True)              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from musicrec.io import RunPaths
from musicrec.service import ab
from musicrec.service.artefacts import Artefacts
from musicrec.service.blending import ONLINE, Pick, Ranked, blend, count_sources, served_by
from musicrec.service.events import EventStore, from_micros, now_micros
from musicrec.service.settings import BlendingConfig, ServiceConfig

log = logging.getLogger("musicrec.service")


class NotReady(RuntimeError):
    """The artefacts are not loaded (yet, or loading failed) or the store is not open: HTTP 503."""


@dataclass
class Recommendation:
    """One served list and what it is made of."""

    user_id: int
    recommendation_id: str
    served_at: int  # microseconds since the epoch
    picks: list[Pick]
    sources: dict[str, int]
    served_by: str
    experiment: str | None
    variant: str | None
    artefacts: Artefacts

    def body(self, names: bool = False) -> dict[str, Any]:
        """The JSON answer of ``GET /recommendations/{user_id}``."""
        return {
            "user_id": self.user_id,
            "recommendation_id": self.recommendation_id,
            "served_at": from_micros(self.served_at).isoformat(),
            "tracks": tracks_json(self.artefacts, self.picks, names),
            "sources": self.sources,
            "served_by": self.served_by,
            "experiment": self.experiment,
            "variant": self.variant,
            "run": self.artefacts.run,
            "artefacts_version": self.artefacts.version,
        }


class Stats:
    """Counters since start (this process), safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests = 0
        self.recommendations = 0
        self.by_source = {"final": 0, "online_blended": 0, "top_popular": 0}
        self.by_variant: dict[str, int] = {}
        self.client_errors = 0
        self.server_errors = 0
        self.events_stored = 0
        self.reloads = 0

    def response(self, status: int) -> None:
        with self._lock:
            self.requests += 1
            if 400 <= status < 500:
                self.client_errors += 1
            elif status >= 500:
                self.server_errors += 1

    def recommendation(self, category: str, variant: str | None) -> None:
        with self._lock:
            self.recommendations += 1
            self.by_source[category] = self.by_source.get(category, 0) + 1
            if variant is not None:
                self.by_variant[variant] = self.by_variant.get(variant, 0) + 1

    def reloaded(self) -> None:
        with self._lock:
            self.reloads += 1

    def events(self, n: int) -> None:
        with self._lock:
            self.events_stored += n

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "started_at": dt.datetime.fromtimestamp(self.started, dt.UTC).isoformat(),
                "uptime_seconds": round(time.time() - self.started, 1),
                "requests": self.requests,
                "recommendations": {
                    "total": self.recommendations,
                    "by_source": dict(self.by_source),
                    "by_variant": dict(self.by_variant),
                },
                "errors": {"client": self.client_errors, "server": self.server_errors},
                "events_stored": self.events_stored,
                "reloads": self.reloads,
            }


class Recommender:
    """The service without HTTP: the configuration, the store, the current artefacts, the counters,
    and :meth:`recommend`, which computes a user's list (the endpoints only format it)."""

    def __init__(self, paths: RunPaths, config: ServiceConfig, db_path: Path, admin_token: str | None):
        self.paths, self.config, self.db_path, self.admin_token = paths, config, db_path, admin_token
        self.store: EventStore | None = None
        self.artefacts: Artefacts | None = None
        self.load_error: str | None = None
        self.store_error: str | None = None  # the store's last write failure (disk full, ...); /ready tells
        self.stats = Stats()
        self._reload_lock = threading.Lock()
        self.reload_seen = 0  # the store's reload generation these artefacts answer
        self._cache_lock = threading.Lock()
        self._online_cache: OrderedDict[tuple, Ranked] = OrderedDict()
        experiment = config.experiment
        self.experiment = experiment if experiment is not None and experiment.enabled else None
        self.blendings = {None: config.blending}
        if experiment is not None:
            self.blendings.update({v.name: config.blending_for(v.name) for v in experiment.variants})

    def online(
        self,
        artefacts: Artefacts,
        user_id: int,
        events: list[int],
        heard: np.ndarray,
        blending: BlendingConfig,
    ) -> Ranked:
        """Online i2i picks, cached by (artefacts, user, the user's event tracks, parameters).

        The key holds everything the picks depend on (the history's heard tracks are fixed
        for a version of the artefacts), so a hit is exact; a new event changes the key.
        """
        key = (artefacts.version, user_id, tuple(events), blending.recent_events, blending.online_candidates)
        with self._cache_lock:
            hit = self._online_cache.get(key)
            if hit is not None:
                self._online_cache.move_to_end(key)
                return hit
        picks = artefacts.online_for(
            user_id, events[: blending.recent_events], heard, blending.online_candidates
        )
        if self.config.online_cache_size:
            with self._cache_lock:
                self._online_cache[key] = picks
                while len(self._online_cache) > self.config.online_cache_size:
                    self._online_cache.popitem(last=False)
        return picks

    def load(self) -> Artefacts:
        """Load the artefacts and swap them in (one load at a time); the old ones serve until then."""
        with self._reload_lock:
            version = self.artefacts.version + 1 if self.artefacts else 1
            try:
                artefacts = Artefacts.load(self.paths, self.config, version)
            except Exception as exc:
                # paths relative to the project: a client learns what is missing, not where it is kept
                self.load_error = f"{type(exc).__name__}: {exc}".replace(f"{self.paths.root}/", "")
                log.error("loading the artefacts of run %s failed: %s", self.paths.run, self.load_error)
                raise
            self.artefacts, self.load_error = artefacts, None  # one reference swap: atomic
            gc.collect()
            gc.freeze()  # what is loaded lives on: the collector no longer walks it on every full pass
            with self._cache_lock:  # entries of the old version can never hit again
                self._online_cache.clear()
            log.info("run %s loaded (version %d) in %.1f s", self.paths.run, version, artefacts.load_seconds)
            return artefacts

    def ready(self) -> Artefacts:
        artefacts = self.artefacts
        if artefacts is None:
            detail = (
                f"not ready: loading the artefacts failed: {self.load_error}"
                if self.load_error
                else "not ready: the artefacts are still loading"
            )
            raise NotReady(detail)
        return artefacts

    def require_store(self) -> EventStore:
        """The open store (:class:`NotReady` when it is not)."""
        if self.store is None:
            raise NotReady("not ready: the event store is not open")
        return self.store

    def recommend(self, user_id: int, k: int, at: int | None = None) -> Recommendation:
        """The user's list: offline list and online i2i picks blended, heard removed, top-popular fill.

        ``at``: the request's time in microseconds since the epoch (replays: only events up to it
        count, and the list is logged as served then); ``None``: now. Raises :class:`NotReady`
        before the artefacts are loaded or the store is open.
        """
        artefacts, store = self.ready(), self.require_store()
        experiment = self.experiment
        variant = ab.assign(user_id, experiment) if experiment is not None else None
        blending = self.blendings[variant]
        events = store.user_tracks(user_id, at, latest=self.config.events_read)
        heard = artefacts.heard_by(user_id)
        if events:
            heard = np.concatenate([heard, np.asarray(events, np.int64)])
        online = Ranked.empty(ONLINE)
        if events and blending.strategy != "offline":
            online = self.online(artefacts, user_id, events, heard, blending)
        picks = blend(artefacts.offline_for(user_id), online, artefacts.popular, k, heard, blending)
        counts = count_sources(picks)
        category = served_by(counts)
        rec_id = str(uuid.uuid4())
        served_at = at if at is not None else now_micros()
        experiment_name = experiment.name if experiment else None
        if self.config.log_recommendations:
            store.log_recommendation(
                rec_id, served_at, user_id, experiment_name, variant, [p.track_id for p in picks], k
            )
        self.stats.recommendation(category, variant)
        return Recommendation(
            user_id, rec_id, served_at, picks, counts, category, experiment_name, variant, artefacts
        )


def load_quietly(state: Recommender) -> None:
    """Load at start-up; a failure is kept for ``/ready`` (the service stays up for ``/admin/reload``)."""
    with contextlib.suppress(Exception):
        state.load()


def follow_reloads(state: Recommender, stop: threading.Event) -> None:
    """Reload when another worker was asked to (the store's reload generation moved on)."""
    while not stop.wait(state.config.reload_poll_seconds):
        try:
            generation = state.store.reload_generation()
        except Exception:  # the store busy or closing: look again next time
            log.exception("reading the reload generation failed")
            continue
        if generation > state.reload_seen:
            state.reload_seen = generation
            try:
                state.load()
            except Exception:  # logged by load(); the previous artefacts keep serving
                continue
            state.stats.reloaded()


def tracks_json(artefacts: Artefacts, picks: list, names: bool) -> list[dict[str, Any]]:
    tracks = [{"track_id": p.track_id, "score": p.score, "source": p.source} for p in picks]
    if names:
        track_names, artist_names = artefacts.names_of([p.track_id for p in picks])
        for item, track, artist in zip(tracks, track_names, artist_names, strict=True):
            item["track"], item["artist"] = track, artist
    return tracks
