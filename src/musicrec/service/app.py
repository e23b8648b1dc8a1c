"""The recommendation service: FastAPI over a run's artefacts and a SQLite event store.

>>> app = create_app("params/default.yaml")        # doctest: +SKIP
>>> serve("params/default.yaml", port=8000)        # doctest: +SKIP

Endpoints (OpenAPI at ``/docs``): ``GET /recommendations/{user_id}``, ``POST /events``,
``GET /events/{user_id}``, ``GET /similar/{track_id}``, ``GET /stats``, ``GET /health``,
``GET /ready``, ``GET /ab``, ``GET /ab/{experiment}/results``; admin (header
``X-Admin-Token`` equal to ``MUSICREC_ADMIN_TOKEN``): ``POST /admin/reload``,
``DELETE /ab/{experiment}/results``.

The artefacts are loaded once, through the lifespan, into :class:`~.artefacts.Artefacts`;
``/admin/reload`` builds a new one beside it and swaps the reference, so a request in
flight finishes on the artefacts it started with. Counters (``/stats``) are per process.

The endpoints on the request path (recommendations, events, similar, health, ready) are
``async``: their work is a few hundred microseconds of numpy and one short SQLite statement,
cheaper to run on the event loop than to hand to a thread. The slow ones (``/stats``'s
count, A/B results, reload) are plain functions, which FastAPI runs in its thread pool.
"""

import asyncio
import contextlib
import datetime as dt
import gc
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from musicrec.config import Profile, load_profile
from musicrec.io import RunPaths
from musicrec.service import ab
from musicrec.service.artefacts import Artefacts
from musicrec.service.blending import ONLINE, Pick, Ranked, blend, count_sources, served_by
from musicrec.service.events import EventStore, from_micros, now_micros, to_micros
from musicrec.service.settings import NAME_PATTERN, BlendingConfig, ServiceConfig

log = logging.getLogger("musicrec.service")

ADMIN_TOKEN_ENV = "MUSICREC_ADMIN_TOKEN"
INT32_MAX = 2**31 - 1
MAX_EVENTS_PER_POST = 10_000
MAX_EVENTS_K = 1000
INLINE_WRITE_MAX = 100  # POST /events with more listens than this writes them from a thread

Id = Annotated[int, Field(ge=0, le=INT32_MAX, strict=True)]


# request and response shapes (for validation and /docs) -----------------------------------


class EventIn(BaseModel):
    """A listen. ``timestamp``: when it happened (ISO 8601; naive = UTC); the arrival time when absent."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id
    track_id: Id
    timestamp: dt.datetime | None = None


class EventsStored(BaseModel):
    stored: int
    ids: list[int]


class EventOut(BaseModel):
    id: int
    track_id: int
    timestamp: dt.datetime


class UserEvents(BaseModel):
    user_id: int
    events: list[EventOut]


class TrackOut(BaseModel):
    track_id: int
    score: float
    source: str = Field(description="ranker (the offline list), online_i2i or top_popular")
    track: str | None = Field(None, description="with ?names=true")
    artist: str | None = Field(None, description="with ?names=true")


class RecommendationsOut(BaseModel):
    user_id: int
    recommendation_id: str = Field(description="a UUID; the list is logged under it")
    served_at: dt.datetime
    tracks: list[TrackOut]
    sources: dict[str, int] = Field(description="how many tracks each source filled")
    served_by: str = Field(description="online_blended, personal or top_popular (the fallback)")
    experiment: str | None
    variant: str | None
    run: str
    artefacts_version: int


class SimilarOut(BaseModel):
    track_id: int
    similar: list[TrackOut]


# state ----------------------------------------------------------------------------------


class Stats:
    """Counters since start (this process), safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests = 0
        self.recommendations = 0
        self.by_source = {"personal": 0, "online_blended": 0, "top_popular": 0}
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


class _CountResponses:
    """ASGI middleware: counts every response by status (and an unhandled exception as a 500)."""

    def __init__(self, app, stats: Stats):
        self.app, self.stats = app, stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.stats.response(status["code"])


class ServiceState:
    """What the endpoints share: the configuration, the store, the current artefacts, the counters."""

    def __init__(self, paths: RunPaths, config: ServiceConfig, db_path: Path, admin_token: str | None):
        self.paths, self.config, self.db_path, self.admin_token = paths, config, db_path, admin_token
        self.store: EventStore | None = None
        self.artefacts: Artefacts | None = None
        self.load_error: str | None = None
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
                self.load_error = f"{type(exc).__name__}: {exc}"
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
            raise HTTPException(503, detail)
        return artefacts

    def require_store(self) -> EventStore:
        if self.store is None:
            raise HTTPException(503, "not ready: the event store is not open")
        return self.store


def _resolve(
    params: str | Path | Profile | None,
    root: str | Path,
    config: ServiceConfig | dict | None,
    db_path: str | Path | None,
) -> tuple[RunPaths, ServiceConfig, Path]:
    if params is None:
        params = Path(root) / "params" / "default.yaml"
    profile = params if isinstance(params, Profile) else load_profile(params)
    if config is None:
        config = getattr(profile, "service", None) or ServiceConfig()
    elif isinstance(config, dict):
        config = ServiceConfig.model_validate(config)
    paths = RunPaths.for_profile(profile, root)
    where = db_path or config.db_path
    if where is None:
        where = paths.events_db
    where = Path(where)
    if not where.is_absolute():
        where = paths.root / where
    return paths, config, where


def create_app(
    params: str | Path | Profile | None = None,
    root: str | Path = ".",
    db_path: str | Path | None = None,
    admin_token: str | None = None,
    config: ServiceConfig | dict | None = None,
    background_load: bool = False,
) -> FastAPI:
    """The service over the run of ``params`` (a profile's path or a loaded :class:`Profile`).

    Parameters
    ----------
    root
        The project root the run's ``data/`` and ``outputs/`` are under.
    db_path
        The SQLite store; else ``config.db_path``; else ``outputs/<run>/service/events.sqlite``.
    admin_token
        The token admin endpoints require; else the ``MUSICREC_ADMIN_TOKEN`` environment
        variable; with neither (or empty), admin endpoints are disabled.
    config
        The service's settings; else the profile's ``service`` section; else the defaults.
    background_load
        Load the artefacts in a thread after start-up (``/health`` answers at once, ``/ready``
        says 503 until done); by default the lifespan waits for them.
    """
    paths, config, db = _resolve(params, root, config, db_path)
    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV)
    state = ServiceState(paths, config, db, token or None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.store = await asyncio.to_thread(
            EventStore, db, config.busy_timeout_ms, config.synchronous, config.log_flush_ms
        )
        state.reload_seen = await asyncio.to_thread(state.store.reload_generation)
        loader = None
        if background_load:
            loader = threading.Thread(target=_load_quietly, args=(state,), name="musicrec-load", daemon=True)
            loader.start()
        else:
            await asyncio.to_thread(_load_quietly, state)
        stop = threading.Event()
        watcher = None
        if config.reload_poll_seconds > 0:
            watcher = threading.Thread(
                target=_follow_reloads, args=(state, stop), name="musicrec-reloads", daemon=True
            )
            watcher.start()
        try:
            yield
        finally:
            stop.set()
            for thread in (loader, watcher):
                if thread is not None:
                    await asyncio.to_thread(thread.join)
            state.store.close()

    app = FastAPI(
        title="musicrec",
        lifespan=lifespan,
        description=f"Recommendations of run `{paths.run}`: offline lists blended with online "
        "i2i picks from the events posted here, A/B experiments, statistics.",
    )
    app.state.service = state
    app.add_middleware(_CountResponses, stats=state.stats)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    def require_admin(
        x_admin_token: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        if not state.admin_token:
            raise HTTPException(403, f"admin endpoints are disabled: set {ADMIN_TOKEN_ENV} to enable them")
        given = x_admin_token
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if not given:
            raise HTTPException(401, "admin token required (header X-Admin-Token)")
        if not hmac.compare_digest(given.encode(), state.admin_token.encode()):
            raise HTTPException(403, "wrong admin token")

    UserId = Annotated[int, PathParam(ge=0, le=INT32_MAX, description="a user id (int32)")]
    TrackId = Annotated[int, PathParam(ge=0, le=INT32_MAX, description="a track id (int32)")]
    K = Annotated[int, Query(ge=1, le=config.max_k, description=f"list length, 1 to {config.max_k}")]
    Experiment = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=100)]

    @app.get("/health", tags=["service"])
    async def health() -> dict:
        """Alive (whether or not the artefacts are loaded)."""
        return {"status": "ok"}

    @app.get(
        "/ready", tags=["service"], responses={503: {"description": "not loaded yet, or loading failed"}}
    )
    async def ready() -> dict:
        """200 once the artefacts are loaded and the store is open; 503 (with the reason) before."""
        artefacts = state.ready()
        state.require_store()
        return {"status": "ready", **artefacts.summary()}

    @app.get("/recommendations/{user_id}", tags=["recommendations"], response_model=RecommendationsOut)
    async def recommendations(
        user_id: UserId,
        k: K = config.default_k,
        names: Annotated[bool, Query(description="add track and artist names")] = False,
        at: Annotated[
            dt.datetime | None,
            Query(
                description="replays: the request's time (ISO 8601, naive = UTC); only events "
                "up to it count, and the list is logged as served then"
            ),
        ] = None,
    ):
        """The user's list: offline list and online i2i picks blended, heard removed, top-popular fill."""
        artefacts, store = state.ready(), state.require_store()
        experiment = state.experiment
        variant = ab.assign(user_id, experiment) if experiment is not None else None
        blending = state.blendings[variant]
        until = to_micros(at) if at is not None else None
        events = store.user_tracks(user_id, until)
        heard = artefacts.heard_by(user_id)
        if events:
            heard = np.concatenate([heard, np.asarray(events, np.int64)])
        online = Ranked.empty(ONLINE)
        if events and blending.strategy != "offline":
            online = state.online(artefacts, user_id, events, heard, blending)
        picks = blend(artefacts.offline_for(user_id), online, artefacts.popular, k, heard, blending)
        counts = count_sources(picks)
        category = served_by(counts)
        rec_id = str(uuid.uuid4())
        served_at = until if until is not None else now_micros()
        if config.log_recommendations:
            store.log_recommendation(
                rec_id,
                served_at,
                user_id,
                experiment.name if experiment else None,
                variant,
                [p.track_id for p in picks],
                k,
            )
        state.stats.recommendation(category, variant)
        tracks = _tracks_json(artefacts, picks, names)
        body = {
            "user_id": user_id,
            "recommendation_id": rec_id,
            "served_at": from_micros(served_at).isoformat(),
            "tracks": tracks,
            "sources": counts,
            "served_by": category,
            "experiment": experiment.name if experiment else None,
            "variant": variant,
            "run": artefacts.run,
            "artefacts_version": artefacts.version,
        }
        return JSONResponse(body)

    @app.post(
        "/events",
        tags=["events"],
        status_code=201,
        response_model=EventsStored,
        responses={422: {"description": "invalid body or a track not in the catalogue"}},
    )
    async def post_events(
        body: Annotated[
            EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_POST)],
            Body(description="one listen, or a list of up to 10,000"),
        ],
    ):
        """Store listens (all or none): they feed the online i2i and the A/B success."""
        artefacts, store = state.ready(), state.require_store()
        events = body if isinstance(body, list) else [body]
        tracks = np.asarray([e.track_id for e in events], np.int64)
        unknown = sorted(set(tracks[~artefacts.is_known(tracks)].tolist()))
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
            raise HTTPException(
                422, f"unknown track_id (not in the catalogue of run {artefacts.run}): {shown}"
            )
        rows = [(e.user_id, e.track_id, to_micros(e.timestamp) if e.timestamp else None) for e in events]
        # one listen is written on the event loop; a large batch in a thread, not to hold up other requests
        ids = (
            store.add_events(rows)
            if len(rows) <= INLINE_WRITE_MAX
            else await asyncio.to_thread(store.add_events, rows)
        )
        state.stats.events(len(ids))
        return JSONResponse({"stored": len(ids), "ids": ids}, status_code=201)

    @app.get("/events/{user_id}", tags=["events"], response_model=UserEvents)
    async def get_events(user_id: UserId, k: Annotated[int, Query(ge=1, le=MAX_EVENTS_K)] = 20):
        """The user's latest ``k`` events, newest first."""
        store = state.require_store()
        return {
            "user_id": user_id,
            "events": [
                {"id": e.id, "track_id": e.track_id, "timestamp": e.timestamp}
                for e in store.latest(user_id, k)
            ],
        }

    @app.get(
        "/similar/{track_id}",
        tags=["recommendations"],
        response_model=SimilarOut,
        responses={404: {"description": "a track not in the catalogue"}},
    )
    async def similar(track_id: TrackId, k: K = config.default_k, names: bool = False):
        """The track's nearest tracks (the ALS item-to-item list), best first."""
        artefacts = state.ready()
        if not artefacts.is_known(np.asarray([track_id]))[0]:
            raise HTTPException(404, f"track {track_id} is not in the catalogue of run {artefacts.run}")
        ranked = artefacts.similar_to(track_id, k)
        picks = [Pick(int(t), float(s), "similar") for t, s in zip(ranked.tracks, ranked.scores, strict=True)]
        return JSONResponse(
            {
                "track_id": track_id,
                "similar": [
                    {key: value for key, value in item.items() if key != "source"}
                    for item in _tracks_json(artefacts, picks, names)
                ],
            }
        )

    @app.get("/stats", tags=["service"])
    def stats() -> dict:
        """Counters since start (this process): requests, lists by source and variant, errors, events."""
        out = state.stats.snapshot()
        store = state.store
        out["events_in_store"] = store.count_events() if store is not None else None
        artefacts = state.artefacts
        out["artefacts"] = artefacts.summary() if artefacts is not None else None
        return out

    @app.get("/ab", tags=["experiments"])
    def experiments() -> dict:
        """The configured experiment and the experiments found in the log (lists per experiment)."""
        store = state.require_store()
        current = config.experiment.model_dump() if config.experiment is not None else None
        return {"experiment": current, "logged": store.experiments()}

    @app.get(
        "/ab/{experiment}/results",
        tags=["experiments"],
        responses={404: {"description": "an experiment neither configured nor logged"}},
    )
    def ab_results(
        experiment: Experiment, window_hours: Annotated[float | None, Query(gt=0, le=24 * 365)] = None
    ) -> dict:
        """Per variant: users, lists, success rate with its interval; z-tests against the first variant."""
        store = state.require_store()
        configured = config.experiment if config.experiment and config.experiment.name == experiment else None
        window = window_hours or (configured.success_window_hours if configured else 24.0)
        confidence = configured.confidence if configured else 0.95
        outcomes = store.outcomes(experiment, int(window * 3600 * 1e6))
        if configured is None and not outcomes:
            raise HTTPException(404, f"no experiment named {experiment!r} is configured or logged")
        names = [v.name for v in configured.variants] if configured else []
        shares = {v.name: v.share for v in configured.variants} if configured else None
        result = ab.summarize(((v, u, s) for v, u, s, _ in outcomes), names, confidence, shares)
        now = now_micros()
        pending = sum(1 for *_, served in outcomes if served + window * 3600 * 1e6 > now)
        return {
            "experiment": experiment,
            "configured": configured is not None,
            "window_hours": window,
            "pending": pending,
            **result,
            "note": "success: a listen to one of the list's tracks within the window after serving; "
            "lists still inside their window count as they stand (pending)",
        }

    @app.delete("/ab/{experiment}/results", tags=["admin"], dependencies=[Depends(require_admin)])
    def ab_clear(experiment: Experiment) -> dict:
        """Delete the experiment's log (admin)."""
        return {"experiment": experiment, "deleted": state.require_store().clear_experiment(experiment)}

    @app.post(
        "/admin/reload",
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        responses={503: {"description": "loading failed; the previous artefacts keep serving"}},
    )
    def reload() -> dict:
        """Load the run's artefacts again and swap them in; requests in flight are not disturbed."""
        try:
            state.reload_seen = state.require_store().ask_reload()  # the other workers follow
            artefacts = state.load()
        except Exception as exc:
            serving = state.artefacts.version if state.artefacts else None
            raise HTTPException(
                503, f"reload failed ({type(exc).__name__}: {exc}); still serving version {serving}"
            ) from None
        state.stats.reloaded()
        return {"status": "reloaded", **artefacts.summary()}

    return app


def _load_quietly(state: ServiceState) -> None:
    """Load at start-up; a failure is kept for ``/ready`` (the service stays up for ``/admin/reload``)."""
    with contextlib.suppress(Exception):
        state.load()


def _follow_reloads(state: ServiceState, stop: threading.Event) -> None:
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


def _tracks_json(artefacts: Artefacts, picks: list, names: bool) -> list[dict[str, Any]]:
    tracks = [{"track_id": p.track_id, "score": p.score, "source": p.source} for p in picks]
    if names:
        track_names, artist_names = artefacts.names_of([p.track_id for p in picks])
        for item, track, artist in zip(tracks, track_names, artist_names, strict=True):
            item["track"], item["artist"] = track, artist
    return tracks


# running --------------------------------------------------------------------------------

_ENV = "MUSICREC_SERVICE_ARGS"


def app_from_env() -> FastAPI:
    """Factory for uvicorn's worker processes (``serve(workers=n)``): arguments from the environment."""
    args = json.loads(os.environ[_ENV])
    # each worker loads before it takes a connection: the kernel hands connections only to workers
    # that accept, so none of them answers 503 while another is already serving
    return create_app(args["params"], root=args["root"], db_path=args["db_path"])


def serve(
    params: str | Path = "params/default.yaml",
    host: str | None = None,
    port: int | None = None,
    root: str | Path = ".",
    db_path: str | Path | None = None,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Run the service with uvicorn, bound to ``127.0.0.1:8000`` unless told otherwise.

    ``workers > 1`` starts that many processes (each loads its own copy of the artefacts
    before it accepts connections; they share the SQLite store, and a reload asked of one
    reaches the others within ``service.reload_poll_seconds``; ``/stats`` counters are per
    process). With one worker, ``/health`` answers at once and ``/ready`` says 503 until
    the artefacts are loaded.
    """
    import uvicorn

    profile = load_profile(params)
    config = getattr(profile, "service", None) or ServiceConfig()
    host = host or config.host
    port = port or config.port
    if workers <= 1:
        app = create_app(profile, root=root, db_path=db_path, config=config, background_load=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    os.environ[_ENV] = json.dumps(
        {"params": str(params), "root": str(root), "db_path": str(db_path) if db_path else None}
    )
    uvicorn.run(
        "musicrec.service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
