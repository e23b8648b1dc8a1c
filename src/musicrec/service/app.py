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
``async``; what can wait for SQLite's write lock (storing events) runs in a thread
(``asyncio.to_thread``), so it never holds up the event loop (``/health`` answers meanwhile),
unless the lock is free at once: then a small batch is written on the loop, which never waits
(``EventStore.try_add_events``; the thread hand-over cost more: p99 78 -> 50 ms, median of
interleaved ``make bench-service`` runs).
A list is computed on the loop: its store calls never wait (a WAL read; the served list goes
to a buffer a background thread writes). Moving it to a thread too cut the throughput of
``make bench-service`` from some 1,600-1,970 to 1,019 requests/s (p99 317 ms). The
slow ones (``/stats``'s count, A/B results, reload) are plain functions, which FastAPI runs in
its thread pool. Store errors answer 503: a lock held too long with ``Retry-After``, a store
that cannot write also makes ``/ready`` say so.
"""

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from musicrec.config import Profile, load_profile
from musicrec.io import RunPaths
from musicrec.service.events import EventStore
from musicrec.service.recommender import NotReady, Recommender, Stats, follow_reloads, load_quietly
from musicrec.service.routes import ADMIN_TOKEN_ENV, MAX_SHOWN, routers
from musicrec.service.settings import ServiceConfig

log = logging.getLogger("musicrec.service")


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


class _GuardBody:
    """ASGI middleware: a request body above ``max_bytes`` gets 413, by its Content-Length before a
    byte is read, or as soon as a streamed body passes the limit; a body that stops arriving for
    ``idle_seconds`` (shorter than its Content-Length, say) gets 408 instead of holding the
    connection."""

    def __init__(self, app, max_bytes: int, idle_seconds: float):
        self.app, self.max_bytes, self.idle_seconds = app, max_bytes, idle_seconds

    @staticmethod
    async def _answer(send, status: int, detail: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body above {self.max_bytes:,} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._answer(send, 413, too_large)
        seen, body_done, started, answered = 0, False, False, False

        async def refuse(status: int, detail: str) -> dict:
            # answer here, and tell the app the client left: it stops reading, and what it would
            # send is dropped (FastAPI turns errors raised while reading into 400)
            nonlocal answered
            answered = True
            if not started:
                await self._answer(send, status, detail)
            return {"type": "http.disconnect"}

        async def guarded():
            nonlocal seen, body_done
            if body_done:  # after the body, the app waits for the disconnect: no time limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_seconds)
            except TimeoutError:
                return await refuse(408, f"no request body byte for {self.idle_seconds:g} s")
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > self.max_bytes:
                    return await refuse(413, too_large)
            return message

        async def send_unless_answered(message):
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, guarded, send_unless_answered)


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) with a cap on a request's head (request line and
    headers): past ``max_head_bytes`` it answers 431 and closes, where httptools alone would buffer
    a header of any size (64 MB was accepted)."""

    def __init__(self, *args, max_head_bytes: int = 32_768, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_head_bytes = max_head_bytes
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def data_received(self, data: bytes) -> None:
        if self._in_head:  # count up to the blank line that ends the head, before httptools buffers it
            end = (self._tail + data).find(b"\r\n\r\n")
            size = self._head_bytes + (len(data) if end < 0 else end + 4 - len(self._tail))
            if size > self.max_head_bytes:
                return self._refuse()
            self._head_bytes, self._tail = size, (self._tail + data)[-3:]
        super().data_received(data)

    def _refuse(self) -> None:
        msg = f"request head above {self.max_head_bytes:,} bytes".encode()
        self.logger.warning(msg.decode())
        self.transport.write(
            STATUS_LINE[431] + b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg)
        )
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head, self._head_bytes, self._tail = True, 0, b""
        super().on_message_complete()


def _json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it: NaN and infinities, bytes and objects become short text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bool | int | str) or value is None:
        return value if not isinstance(value, str) or len(value) <= 200 else value[:200] + "..."
    if isinstance(value, dict) and depth < 2:
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:MAX_SHOWN]}
    if isinstance(value, list | tuple) and depth < 2:
        return [_json_safe(v, depth + 1) for v in value[:MAX_SHOWN]]
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def validation_body(errors: list[dict]) -> dict:
    """A 422's body: the first few errors, each with its location, message and (short) input; never
    the whole request echoed back (a 19 MB body once got a 35 MB reply), always valid JSON."""
    shown = [
        {key: _json_safe(error[key]) for key in ("type", "loc", "msg", "input", "ctx") if key in error}
        for error in errors[:MAX_SHOWN]
    ]
    return {"detail": shown, "errors": len(errors)}


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
    state = Recommender(paths, config, db, token or None)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.store = await asyncio.to_thread(
            EventStore, db, config.busy_timeout_ms, config.synchronous, config.log_flush_ms
        )
        state.reload_seen = await asyncio.to_thread(state.store.reload_generation)
        loader = None
        if background_load:
            loader = threading.Thread(target=load_quietly, args=(state,), name="musicrec-load", daemon=True)
            loader.start()
        else:
            await asyncio.to_thread(load_quietly, state)
        stop = threading.Event()
        watcher = None
        if config.reload_poll_seconds > 0:
            watcher = threading.Thread(
                target=follow_reloads, args=(state, stop), name="musicrec-reloads", daemon=True
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
    app.add_middleware(_GuardBody, max_bytes=config.max_body_bytes, idle_seconds=config.body_idle_seconds)
    app.add_middleware(_CountResponses, stats=state.stats)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(exc.errors()), status_code=422)

    @app.exception_handler(sqlite3.Error)
    async def store_failed(request: Request, exc: sqlite3.Error) -> JSONResponse:
        message = str(exc)
        if "locked" in message or "busy" in message:
            wait = config.busy_timeout_ms
            detail = f"the event store is busy (another writer held its lock past {wait} ms): retry"
        else:
            state.store_error = f"{type(exc).__name__}: {message} ({state.db_path.name})"
            detail = f"the event store cannot write: {state.store_error}"
            log.error("event store %s: %s", state.db_path, message)
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    for router in routers(state):
        app.include_router(router)

    return app


# running --------------------------------------------------------------------------------

_ENV = "MUSICREC_SERVICE_ARGS"


def exit_with_parent(
    parent: int,
    poll_seconds: float = 1.0,
    getppid=os.getppid,
    stop=lambda: os.kill(os.getpid(), signal.SIGTERM),
) -> threading.Thread:
    """Watch the parent process; when it is gone (``kill -9`` of uvicorn's supervisor makes the
    worker an orphan, still serving and holding the port), stop this process as SIGTERM does."""

    def watch() -> None:
        while getppid() == parent:
            time.sleep(poll_seconds)
        log.warning("the supervisor (pid %d) is gone: this worker stops", parent)
        stop()

    thread = threading.Thread(target=watch, name="musicrec-parent-watch", daemon=True)
    thread.start()
    return thread


def app_from_env() -> FastAPI:
    """Factory for uvicorn's worker processes (``serve(workers=n)``): arguments from the environment."""
    args = json.loads(os.environ[_ENV])
    # the supervisor's pid as it started us: a worker that comes up after it died stops too
    exit_with_parent(args.get("supervisor", os.getppid()))
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
    http = functools.partial(BoundedHeadProtocol, max_head_bytes=config.max_head_bytes)
    if workers <= 1:
        app = create_app(profile, root=root, db_path=db_path, config=config, background_load=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level, http=http)
        return
    os.environ[_ENV] = json.dumps(
        {
            "params": str(params),
            "root": str(root),
            "db_path": str(db_path) if db_path else None,
            "supervisor": os.getpid(),
        }
    )
    uvicorn.run(
        "musicrec.service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        http=http,
    )
