"""The service's endpoints, one router per concern: service (health, ready, stats),
recommendations (lists, similar tracks), events, experiments (A/B) and admin. They parse and
validate requests and format answers; the work is :class:`~.recommender.Recommender`'s.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations,
some of them aliases local to :func:`routers`.
"""

import asyncio
import datetime as dt
import hmac
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.requests import ClientDisconnect

from musicrec.service import ab
from musicrec.service.blending import Pick
from musicrec.service.events import from_micros, now_micros, to_micros
from musicrec.service.recommender import NotReady, Recommender, tracks_json
from musicrec.service.settings import NAME_PATTERN, ServiceConfig

ADMIN_TOKEN_ENV = "MUSICREC_ADMIN_TOKEN"
INT32_MAX = 2**31 - 1
MAX_EVENTS_PER_POST = 10_000
MAX_EVENTS_K = 1000
PARSE_INLINE_BYTES = 16_384  # a POST /events body up to this size is parsed on the event loop
INLINE_WRITE_EVENTS = 200  # a batch up to this size is written on the loop when the lock is free

Id = Annotated[int, Field(ge=0, le=INT32_MAX, strict=True)]
MAX_SHOWN = 5  # offending items named in an error reply


def _digits(value: object) -> object:
    """A path id as written: decimal digits only (no ``+5``, `` 5`` or ``1_000``, which int() takes)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("an id is decimal digits only")
    return value


def time_range(config: ServiceConfig) -> tuple[int, int]:
    """The accepted event and ``at=`` times, in microseconds: from ``earliest_time`` to
    ``future_days`` after now."""
    earliest = to_micros(dt.datetime.combine(config.earliest_time, dt.time(), dt.UTC))
    return earliest, now_micros() + int(config.future_days * 86_400e6)


def outside(accepted: tuple[int, int], times: list[dt.datetime | None]) -> list[int]:
    """Positions of the times outside ``accepted`` (:func:`time_range`; None: the arrival time)."""
    low, high = accepted
    return [i for i, when in enumerate(times) if when is not None and not low <= to_micros(when) <= high]


def _range_error(accepted: tuple[int, int], what: str, bad: list[str]) -> HTTPException:
    low, high = (from_micros(t).isoformat(timespec="seconds") for t in accepted)
    shown = "; ".join(bad[:MAX_SHOWN]) + (f"; ... ({len(bad)} in all)" if len(bad) > MAX_SHOWN else "")
    return HTTPException(422, f"{what} outside the accepted time range {low} to {high}: {shown}")


# request and response shapes (for validation and /docs)


class EventIn(BaseModel):
    """A listen. ``timestamp``: when it happened (ISO 8601; naive = UTC); the arrival time when absent."""

    model_config = ConfigDict(extra="forbid")
    user_id: Id
    track_id: Id
    timestamp: dt.datetime | None = None


_EVENTS_BODY = TypeAdapter(
    EventIn | Annotated[list[EventIn], Field(min_length=1, max_length=MAX_EVENTS_PER_POST)]
)


def _events_body_schema() -> dict:
    """``POST /events``' declared body (the endpoint parses it itself, in a thread)."""
    one = EventIn.model_json_schema()
    many = {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_EVENTS_PER_POST}
    return {
        "required": True,
        "description": f"one listen, or a list of up to {MAX_EVENTS_PER_POST:,}",
        "content": {"application/json": {"schema": {"anyOf": [one, many]}}},
    }


def parse_events(raw: bytes) -> list[EventIn]:
    """A ``POST /events`` body as listens; invalid JSON or items raise FastAPI's 422 error (with
    ``body`` first in each location, as FastAPI's own parsing gives)."""
    try:
        body = _EVENTS_BODY.validate_json(raw)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
    return body if isinstance(body, list) else [body]


class Problem(BaseModel):
    """Every error's body: a message, or (invalid requests) the first few validation errors."""

    detail: str | list[dict[str, Any]]
    errors: int | None = Field(None, description="how many validation errors there were in all")


#: The errors any endpoint can answer, with their body (declared, so clients and fuzzers know them).
ERRORS = {
    422: {"model": Problem, "description": "invalid request: the first few errors, or a message"},
    503: {"model": Problem, "description": "not ready, or the event store busy or failing"},
}


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


class SimilarTrackOut(BaseModel):
    track_id: int
    score: float
    track: str | None = Field(None, description="with ?names=true")
    artist: str | None = Field(None, description="with ?names=true")


class TrackOut(SimilarTrackOut):
    source: str = Field(description="final (the ranked list of the pipeline), online_i2i or top_popular")


class RecommendationsOut(BaseModel):
    user_id: int
    recommendation_id: str = Field(description="a UUID; the list is logged under it")
    served_at: dt.datetime
    tracks: list[TrackOut]
    sources: dict[str, int] = Field(description="how many tracks each source filled")
    served_by: str = Field(description="online_blended, final or top_popular (the fallback)")
    experiment: str | None
    variant: str | None
    run: str
    artefacts_version: int


class SimilarOut(BaseModel):
    track_id: int
    similar: list[SimilarTrackOut]


# state ----------------------------------------------------------------------------------


def routers(state: Recommender) -> list[APIRouter]:
    """The endpoints over ``state``, as routers for :func:`~.app.create_app` to include."""
    config = state.config
    service_router = APIRouter(responses=ERRORS, tags=["service"])
    recommendations_router = APIRouter(responses=ERRORS, tags=["recommendations"])
    events_router = APIRouter(responses=ERRORS, tags=["events"])
    experiments_router = APIRouter(responses=ERRORS, tags=["experiments"])
    admin_router = APIRouter(responses=ERRORS, tags=["admin"])

    def given_token(x_admin_token: str | None, authorization: str | None) -> str | None:
        given = x_admin_token or None  # an empty header does not override a Bearer token
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        return given or None

    def require_admin(
        x_admin_token: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> None:
        if not state.admin_token:
            raise HTTPException(403, f"admin endpoints are disabled: set {ADMIN_TOKEN_ENV} to enable them")
        given = given_token(x_admin_token, authorization)
        if not given:
            raise HTTPException(401, "admin token required (header X-Admin-Token)")
        if not hmac.compare_digest(given.encode(), state.admin_token.encode()):
            raise HTTPException(403, "wrong admin token")

    def is_admin(
        x_admin_token: Annotated[str | None, Header()] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> bool:
        """Whether the request carries the admin token (never an error: for optional admin features)."""
        given = given_token(x_admin_token, authorization)
        return bool(
            state.admin_token and given and hmac.compare_digest(given.encode(), state.admin_token.encode())
        )

    UserId = Annotated[
        int, BeforeValidator(_digits), PathParam(ge=0, le=INT32_MAX, description="a user id (int32)")
    ]
    TrackId = Annotated[
        int, BeforeValidator(_digits), PathParam(ge=0, le=INT32_MAX, description="a track id (int32)")
    ]
    K = Annotated[int, Query(ge=1, le=config.max_k, description=f"list length, 1 to {config.max_k}")]
    Experiment = Annotated[str, PathParam(pattern=NAME_PATTERN, max_length=100)]

    @service_router.head("/health", include_in_schema=False)
    @service_router.get("/health", tags=["service"])
    async def health() -> dict:
        """Alive (whether or not the artefacts are loaded)."""
        return {"status": "ok"}

    @service_router.get(
        "/ready", tags=["service"], responses={503: {"description": "not loaded yet, or loading failed"}}
    )
    async def ready() -> dict:
        """200 once the artefacts are loaded and the store is open; 503 (with the reason) before."""
        artefacts = state.ready()
        state.require_store()
        if state.store_error:
            raise NotReady(f"not ready: the event store cannot write: {state.store_error}")
        return {"status": "ready", **artefacts.summary()}

    @recommendations_router.get(
        "/recommendations/{user_id}", tags=["recommendations"], response_model=RecommendationsOut
    )
    async def recommendations(
        user_id: UserId,
        k: K = config.default_k,
        names: Annotated[bool, Query(description="add track and artist names")] = False,
        at: Annotated[
            dt.datetime | None,
            Query(
                description="replays: the request's time (ISO 8601, naive = UTC); only events "
                "up to it count, and the list is logged as served then. Needs the admin token unless "
                "service.replay_mode is on"
            ),
        ] = None,
        admin: Annotated[bool, Depends(is_admin)] = False,
    ):
        """The user's list: offline list and online i2i picks blended, heard removed, top-popular fill."""
        if at is not None and not config.replay_mode and not admin:
            raise HTTPException(
                403, "at= is a replay feature: send the admin token, or set service.replay_mode"
            )
        accepted = time_range(config)
        if outside(accepted, [at]):
            raise _range_error(accepted, "at", [at.isoformat()])
        # on the loop: its store calls never wait for a lock (a WAL read of the latest events, and
        # the served list appended to a buffer that a background thread writes)
        served = state.recommend(user_id, k, to_micros(at) if at is not None else None)
        return JSONResponse(served.body(names))

    @events_router.post(
        "/events",
        tags=["events"],
        status_code=201,
        response_model=EventsStored,
        responses={422: {"description": "invalid body or a track not in the catalogue"}},
        openapi_extra={"requestBody": _events_body_schema()},
    )
    async def post_events(request: Request):
        """Store listens (all or none): they feed the online i2i and the A/B success."""
        artefacts, store = state.ready(), state.require_store()
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client left, or the body limit has answered 413 already
            return Response(status_code=400)
        # a large batch is parsed in a thread: 10,000 listens take 20-80 ms to validate, which
        # would hold every other request of this worker (FastAPI parses a declared body on the
        # event loop); a small one (under 1 ms) is not worth the thread's hand-over
        if len(raw) > PARSE_INLINE_BYTES:
            events = await asyncio.to_thread(parse_events, raw)
        else:
            events = parse_events(raw)
        accepted = time_range(config)
        late = outside(accepted, [e.timestamp for e in events])
        if late:
            raise _range_error(
                accepted, "timestamp", [f"item {i}: {events[i].timestamp.isoformat()}" for i in late]
            )
        tracks = np.asarray([e.track_id for e in events], np.int64)
        unknown = sorted(set(tracks[~artefacts.is_known(tracks)].tolist()))
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (", ..." if len(unknown) > 10 else "")
            raise HTTPException(
                422, f"unknown track_id (not in the catalogue of run {artefacts.run}): {shown}"
            )
        rows = [(e.user_id, e.track_id, to_micros(e.timestamp) if e.timestamp else None) for e in events]
        # on the loop when the write lock is free at once (no wait); else in a thread: a writer
        # waiting for SQLite's lock never holds up the event loop (/health)
        ids = store.try_add_events(rows) if len(rows) <= INLINE_WRITE_EVENTS else None
        if ids is None:
            ids = await asyncio.to_thread(store.add_events, rows)
        state.store_error = None  # it writes again
        state.stats.events(len(ids))
        return JSONResponse({"stored": len(ids), "ids": ids}, status_code=201)

    @events_router.get("/events/{user_id}", tags=["events"], response_model=UserEvents)
    async def get_events(user_id: UserId, k: Annotated[int, Query(ge=1, le=MAX_EVENTS_K)] = 20):
        """The user's latest ``k`` events, newest first."""
        store = state.require_store()
        latest = await asyncio.to_thread(store.latest, user_id, k)
        return {
            "user_id": user_id,
            "events": [{"id": e.id, "track_id": e.track_id, "timestamp": e.timestamp} for e in latest],
        }

    @recommendations_router.get(
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
                    for item in tracks_json(artefacts, picks, names)
                ],
            }
        )

    @service_router.get("/stats", tags=["service"])
    def stats() -> dict:
        """Counters since start (this process): requests, lists by source and variant, errors, events."""
        out = state.stats.snapshot()
        store = state.store
        out["events_in_store"] = store.count_events() if store is not None else None
        artefacts = state.artefacts
        out["artefacts"] = artefacts.summary() if artefacts is not None else None
        return out

    @experiments_router.get("/ab", tags=["experiments"])
    def experiments() -> dict:
        """The configured experiment and the experiments found in the log (lists per experiment)."""
        store = state.require_store()
        current = config.experiment.model_dump() if config.experiment is not None else None
        return {"experiment": current, "logged": store.experiments()}

    @experiments_router.get(
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
        outcomes = store.outcomes(
            experiment, int(window * 3600 * 1e6), by="ts" if config.replay_mode else "received_at"
        )
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

    @admin_router.delete("/ab/{experiment}/results", tags=["admin"], dependencies=[Depends(require_admin)])
    def ab_clear(experiment: Experiment) -> dict:
        """Delete the experiment's log (admin)."""
        return {"experiment": experiment, "deleted": state.require_store().clear_experiment(experiment)}

    @admin_router.post(
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

    return [service_router, recommendations_router, events_router, experiments_router, admin_router]
