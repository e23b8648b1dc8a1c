"""The service's store: listen events and the log of served recommendations, in SQLite.

One file (``outputs/<run>/service/events.sqlite`` by default) in WAL mode, so readers
never block the writer and several threads or worker processes can write at once: each
thread has its own connection, every write is one transaction that waits up to
``busy_timeout_ms`` for the lock (``BEGIN IMMEDIATE``: the lock is taken before anything is
read, so a writer never has to give up half-way). With ``synchronous=NORMAL`` a committed
write survives a crash of the service; ``FULL`` also survives a power loss.

Times are stored as integer microseconds since the epoch, UTC; naive datetimes are taken
as UTC.

Tables
------
``events(id, user_id, track_id, ts, received_at)``
    One listen each; ``ts`` is when it happened (given by the client or the arrival time).
``recommendations(rec_id, served_at, user_id, experiment, variant, k, tracks)``
    Every served list; ``tracks`` is a JSON array of track ids in served order.
``service_state(key, value)``
    What the worker processes share: ``reload``, the number of reloads asked for, so that
    a reload asked of one worker reaches the others.

Served lists can be written in batches (``log_flush_ms > 0``): a request only appends its
row to a buffer, and a background thread writes the buffer in one transaction every
``log_flush_ms``. That takes a write transaction (and the lock the worker processes share)
off every ``GET /recommendations``. Reads of the log through the store flush first, and
closing the store flushes; a crash of the process loses at most the last interval's lists.
Events are always written before ``POST /events`` answers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("musicrec.service")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    track_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_ts ON events (user_id, ts);
CREATE INDEX IF NOT EXISTS events_user_track_ts ON events (user_id, track_id, ts);
CREATE TABLE IF NOT EXISTS recommendations (
    rec_id TEXT PRIMARY KEY,
    served_at INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    experiment TEXT,
    variant TEXT,
    k INTEGER NOT NULL,
    tracks TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recommendations_experiment ON recommendations (experiment, variant);
CREATE TABLE IF NOT EXISTS service_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_INSERT_EVENT = "INSERT INTO events (user_id, track_id, ts, received_at) VALUES (?, ?, ?, ?) RETURNING id"
_INSERT_RECOMMENDATION = (
    "INSERT INTO recommendations (rec_id, served_at, user_id, experiment, variant, k, "
    "tracks) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_micros(when: dt.datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


_MIN_MICROS = to_micros(dt.datetime.min.replace(tzinfo=dt.UTC) + dt.timedelta(days=1))
_MAX_MICROS = to_micros(dt.datetime.max.replace(tzinfo=dt.UTC) - dt.timedelta(days=1))


def from_micros(micros: int) -> dt.datetime:
    """The UTC time of microseconds since the epoch, clamped to what a datetime can hold: a value
    stored before the service checked time ranges never makes a read fail."""
    return _EPOCH + dt.timedelta(microseconds=min(max(int(micros), _MIN_MICROS), _MAX_MICROS))


def now_micros() -> int:
    return to_micros(dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class Event:
    id: int
    user_id: int
    track_id: int
    ts: int

    @property
    def timestamp(self) -> dt.datetime:
        return from_micros(self.ts)


@dataclass(frozen=True)
class LoggedRecommendation:
    rec_id: str
    served_at: int
    user_id: int
    experiment: str | None
    variant: str | None
    tracks: list[int]


def _user_events(user_id: int, until: int | None) -> tuple[str, list[int]]:
    """The WHERE clause and arguments selecting one user's events, up to ``until`` when given."""
    if until is None:
        return "user_id = ?", [int(user_id)]
    return "user_id = ? AND ts <= ?", [int(user_id), int(until)]


#: :meth:`EventStore.try_add_events` commits without checkpointing; every this many, a thread does.
INLINE_CHECKPOINT_EVERY = 500


class EventStore:
    """Events and the recommendation log in one SQLite file; safe across threads and processes.

    >>> store = EventStore(tmp_path / "events.sqlite")           # doctest: +SKIP
    >>> store.add_events([(7, 42, None)])                        # doctest: +SKIP
    [1]
    >>> [e.track_id for e in store.latest(7, 10)]                # doctest: +SKIP
    [42]
    """

    def __init__(
        self,
        path: str | Path,
        busy_timeout_ms: int = 10_000,
        synchronous: str = "NORMAL",
        log_flush_ms: int = 0,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._inline_commits = 0
        with self.transaction() as conn:
            for statement in filter(None, (s.strip() for s in SCHEMA.split(";"))):
                conn.execute(statement)
        self.log_flush_ms = log_flush_ms
        self._pending: list[tuple] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._closing = threading.Event()
        self._flusher: threading.Thread | None = None
        if log_flush_ms > 0:
            self._flusher = threading.Thread(target=self._flush_every, name="musicrec-log-flush", daemon=True)
            self._flusher.start()

    # connections -----------------------------------------------------------------------

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from its start (``BEGIN IMMEDIATE``).

        Writers of this process queue on a Python lock first: SQLite's own busy handler
        sleeps in steps of milliseconds, which under many threads costs far more than the
        write itself; it is left to arbitrate between processes only.
        """
        conn = self.connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Write the buffered lists, then close every thread's connection (at shutdown)."""
        self._closing.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        self.flush()
        with self._all_lock:
            for conn in self._all:
                with suppress(sqlite3.Error):  # closing is best effort
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # events ----------------------------------------------------------------------------

    def add_events(self, events: Sequence[tuple[int, int, int | None]]) -> list[int]:
        """Store ``(user_id, track_id, ts in microseconds or None for now)`` in one transaction.

        Returns the new events' ids, in order.
        """
        received = now_micros()
        with self.transaction() as conn:
            return [
                conn.execute(
                    _INSERT_EVENT, (int(u), int(t), received if ts is None else int(ts), received)
                ).fetchone()[0]
                for u, t, ts in events
            ]

    def try_add_events(self, events: Sequence[tuple[int, int, int | None]]) -> list[int] | None:
        """:meth:`add_events` if it can start at once, else ``None`` (another writer holds the
        lock: the caller waits for it in a thread). For the event loop: an uncontended insert
        takes a fraction of a millisecond, a hand-over to a thread more, and this never waits;
        its connection leaves WAL checkpoints to the other writers (the log's flusher)."""
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            conn = self._nowait_connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return None  # another process is writing
                raise
            received = now_micros()
            try:
                ids = [
                    conn.execute(
                        _INSERT_EVENT, (int(u), int(t), received if ts is None else int(ts), received)
                    ).fetchone()[0]
                    for u, t, ts in events
                ]
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            self._inline_commits += 1
            if self._inline_commits % INLINE_CHECKPOINT_EVERY == 0:  # the WAL never grows unbounded
                threading.Thread(target=self._checkpoint, name="musicrec-checkpoint", daemon=True).start()
            return ids
        finally:
            self._write_lock.release()

    def _checkpoint(self) -> None:
        with suppress(sqlite3.Error):  # busy: the next one will do
            self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _nowait_connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "nowait", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._local.nowait = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def latest(self, user_id: int, k: int, until: int | None = None) -> list[Event]:
        """The user's ``k`` latest events (by time, then arrival), newest first; ``until``: ts <= it."""
        where, args = _user_events(user_id, until)
        rows = self.connection().execute(
            f"SELECT id, user_id, track_id, ts FROM events WHERE {where} ORDER BY ts DESC, id DESC LIMIT ?",
            [*args, int(k)],
        )
        return [Event(*row) for row in rows]

    def user_tracks(self, user_id: int, until: int | None = None, latest: int | None = None) -> list[int]:
        """The tracks of the user's events (ts <= ``until``), newest first, each once; of the
        ``latest`` events only, when given (read through the (user, ts) index: a request costs
        the same after 100k events as after ten)."""
        where, args = _user_events(user_id, until)
        if latest is None:
            rows = self.connection().execute(
                f"SELECT track_id, max(ts) AS last FROM events WHERE {where} "
                "GROUP BY track_id ORDER BY last DESC, max(id) DESC",
                args,
            )
            return [row[0] for row in rows]
        rows = self.connection().execute(
            f"SELECT track_id FROM events WHERE {where} ORDER BY ts DESC, id DESC LIMIT ?",
            [*args, int(latest)],
        )
        return list(dict.fromkeys(row[0] for row in rows))

    def reload_generation(self) -> int:
        """How many reloads have been asked for (``POST /admin/reload`` on any worker)."""
        row = self.connection().execute("SELECT value FROM service_state WHERE key = 'reload'").fetchone()
        return row[0] if row else 0

    def ask_reload(self) -> int:
        """Count one more reload asked for; the new generation, which every worker will load."""
        with self.transaction() as conn:
            row = conn.execute(
                "INSERT INTO service_state (key, value) VALUES ('reload', 1) "
                "ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value"
            ).fetchone()
        return row[0]

    def count_events(self) -> int:
        return self.connection().execute("SELECT count(*) FROM events").fetchone()[0]

    # recommendation log ----------------------------------------------------------------

    def log_recommendation(
        self,
        rec_id: str,
        served_at: int,
        user_id: int,
        experiment: str | None,
        variant: str | None,
        tracks: Iterable[int],
        k: int,
    ) -> None:
        """Log a served list: at once, or into the buffer the flusher writes (``log_flush_ms > 0``)."""
        row = (
            rec_id,
            int(served_at),
            int(user_id),
            experiment,
            variant,
            int(k),
            json.dumps([int(t) for t in tracks], separators=(",", ":")),
        )
        with self._pending_lock:
            self._pending.append(row)
        if self._flusher is None:  # no batching: written before the request answers
            self.flush()

    def flush(self) -> int:
        """Write the buffered lists in one transaction; how many were written."""
        with self._flush_lock:  # a reader that flushes also waits for a flush in progress
            with self._pending_lock:
                rows, self._pending = self._pending, []
            if rows:
                try:
                    with self.transaction() as conn:
                        conn.executemany(_INSERT_RECOMMENDATION, rows)
                except BaseException:
                    with self._pending_lock:  # kept for the next flush, in order
                        self._pending[:0] = rows
                    raise
            return len(rows)

    def _flush_every(self) -> None:
        while not self._closing.wait(self.log_flush_ms / 1000):
            try:
                self.flush()
            except sqlite3.Error:  # the rows stay buffered; the next interval tries again
                log.exception("writing the recommendation log failed")

    def recommendations(self, experiment: str | None = None) -> list[LoggedRecommendation]:
        """The logged lists (of one experiment when given), oldest first."""
        self.flush()
        sql = "SELECT rec_id, served_at, user_id, experiment, variant, tracks FROM recommendations"
        args: tuple = ()
        if experiment is not None:
            sql += " WHERE experiment = ?"
            args = (experiment,)
        rows = self.connection().execute(sql + " ORDER BY served_at, rowid", args)
        return [LoggedRecommendation(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def outcomes(
        self, experiment: str, window_us: int, by: str = "received_at"
    ) -> list[tuple[str, int, bool, int]]:
        """``(variant, user_id, success, served_at)`` for each logged list of ``experiment``.

        Success: an event of the same user on one of the list's tracks with
        ``served_at <= t <= served_at + window_us``, ``t`` the event's ``received_at`` (normal
        serving: a client cannot date a listen into a window) or its own ``ts`` (replays).
        """
        if by not in ("received_at", "ts"):
            raise ValueError(f"outcomes by received_at or ts, not {by!r}")
        self.flush()
        sql = f"""
            SELECT r.variant, r.user_id,
                   EXISTS (SELECT 1 FROM json_each(r.tracks) AS j
                           JOIN events AS e ON e.user_id = r.user_id AND e.track_id = j.value
                           WHERE e.{by} >= r.served_at AND e.{by} <= r.served_at + ?) AS success,
                   r.served_at
            FROM recommendations AS r WHERE r.experiment = ?"""
        return [
            (v, u, bool(s), t) for v, u, s, t in self.connection().execute(sql, (int(window_us), experiment))
        ]

    def experiments(self) -> dict[str, int]:
        """Logged lists per experiment name."""
        self.flush()
        rows = self.connection().execute(
            "SELECT experiment, count(*) FROM recommendations "
            "WHERE experiment IS NOT NULL GROUP BY experiment"
        )
        return dict(rows.fetchall())

    def clear_experiment(self, experiment: str) -> int:
        """Delete the log of ``experiment``; the number of lists deleted."""
        self.flush()
        with self.transaction() as conn:
            return conn.execute("DELETE FROM recommendations WHERE experiment = ?", (experiment,)).rowcount
