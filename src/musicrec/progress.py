"""Progress as lines a log can hold: what a stage is doing, batch i of n, the time left.

A stage runs in a Jupyter kernel under papermill; what a cell prints reaches the executed
notebook and, streamed by ``musicrec stage``, the console of ``make all``. A redrawn tqdm bar
(carriage returns, or a widget) reads badly in both, so :func:`bar` keeps tqdm's counting and
time estimates but writes one plain line every ``every`` seconds, and :func:`say` and
:func:`step` print timestamped lines for the steps between.

>>> for part in bar(range(3), desc="scoring", every=0):   # doctest: +SKIP
...     pass
[12:00:01] scoring: 1/3 batches (33%), 0:00 so far, about 0:00 left
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Seconds between two progress lines of one loop (and the most silence a loop of slow
#: batches leaves: each batch ends with a line once this much time has passed).
EVERY_SECONDS = 10.0


#: A step that has printed nothing for this long says it is still going (the most silence a
#: stage leaves: a fit's own iterations can be slower than that at the full scale).
HEARTBEAT_SECONDS = 25.0

_last_line = [time.monotonic()]


def _stamp() -> str:
    return dt.datetime.now().strftime("%H:%M:%S")


def _print(line: str) -> None:
    _last_line[0] = time.monotonic()
    print(f"[{_stamp()}] {line}", file=sys.stdout, flush=True)


def say(message: str) -> None:
    """Print one timestamped progress line (flushed at once, so a streamed log shows it)."""
    _print(message)


@contextlib.contextmanager
def step(what: str, enabled: bool = True, heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Say how long ``what`` took when it ends (the loops inside it say how far they are); while
    it runs, a line every ``heartbeat`` seconds in which nothing else was printed."""
    start = time.perf_counter()
    stop = threading.Event()
    if enabled and heartbeat:

        def beat() -> None:
            while not stop.wait(min(heartbeat, 5.0)):
                if time.monotonic() - _last_line[0] >= heartbeat:
                    say(f"{what}: still going, {_duration(time.perf_counter() - start)} so far")

        threading.Thread(target=beat, name="musicrec-progress", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
    if enabled:
        say(f"{what}: done in {_duration(time.perf_counter() - start)}")


_watching = threading.Event()


def watch(heartbeat: float = HEARTBEAT_SECONDS) -> None:
    """From now on in this process, a line whenever nothing was printed for ``heartbeat`` seconds
    (a stage notebook's cells between the steps that say what they do); started once."""
    if _watching.is_set():
        return
    _watching.set()

    def beat() -> None:
        while True:
            time.sleep(min(heartbeat, 5.0))
            quiet = time.monotonic() - _last_line[0]
            if quiet >= heartbeat:
                say(f"still working ({_duration(quiet)} since the last line)")

    threading.Thread(target=beat, name="musicrec-watch", daemon=True).start()


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def iteration_lines(what: str, iterations: int, every: float = EVERY_SECONDS):
    """A fit callback ``(iteration, seconds, loss)`` (implicit's) saying how far a fit is, at most
    every ``every`` seconds, with the time left estimated from the mean iteration."""
    start, last = time.perf_counter(), [-every]

    def callback(iteration: int, seconds: float, loss: float) -> None:
        elapsed = time.perf_counter() - start
        done = iteration + 1
        if elapsed - last[0] >= every or done == iterations:
            last[0] = elapsed
            left = elapsed / done * (iterations - done)
            so_far, to_go = _duration(elapsed), _duration(left)
            say(f"{what}: iteration {done}/{iterations}, {so_far} so far, about {to_go} left")

    return callback


class _Lines:
    """A text stream for tqdm: each redraw of the bar becomes one stamped line (a redraw of the
    same state, as tqdm's closing one, is left out)."""

    def __init__(self) -> None:
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            self.last = line
            _print(line)

    def flush(self) -> None:
        sys.stdout.flush()


def _counter(items, total: int | None, desc: str, unit: str, every: float) -> tqdm:
    sized = total is not None or hasattr(items, "__len__")
    fmt = (
        "{desc}: {n_fmt}/{total_fmt} "
        + unit
        + " ({percentage:.0f}%), {elapsed} so far, about {remaining} left"
    )
    return tqdm(
        items,
        total=total,
        desc=desc,
        file=_Lines(),
        mininterval=every,
        maxinterval=max(every, 1.0),
        delay=every,  # a loop done sooner prints nothing (the step around it says how long it took)
        ascii=True,
        bar_format=fmt if sized else "{desc}: {n_fmt} " + unit + ", {elapsed} so far{postfix}",
    )


def bar(
    items: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "batches",
    enabled: bool = True,
    every: float = EVERY_SECONDS,
) -> Iterator[T]:
    """``items``, with a progress line at most every ``every`` seconds and one at the end."""
    if not enabled:
        yield from items
        return
    with _counter(items, total, desc, unit, every) as counted:
        yield from counted


def counter(total: int, desc: str, unit: str, enabled: bool = True, every: float = EVERY_SECONDS) -> tqdm:
    """A counter to ``update()`` by hand (a context manager), writing lines as :func:`bar` does."""
    return tqdm(total=total, disable=True) if not enabled else _counter(None, total, desc, unit, every)
