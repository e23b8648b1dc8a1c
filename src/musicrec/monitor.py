"""Peak resident memory of a block of work, sampled in a background thread."""

from __future__ import annotations

import contextlib
import threading

import psutil


class PeakMemory:
    """Samples resident memory every ``interval`` seconds while the block runs.

    ``children=True`` sums this process's descendants (a notebook kernel run by
    papermill); otherwise it is this process itself.

    >>> with PeakMemory() as memory:   # doctest: +SKIP
    ...     work()
    >>> memory.peak_gb                 # doctest: +SKIP
    """

    def __init__(self, children: bool = False, interval: float = 0.2):
        self.children, self.interval, self.peak = children, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, me: psutil.Process) -> int:
        if not self.children:
            return me.memory_info().rss
        total = 0
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample(me))
            self._stop.wait(self.interval)

    @property
    def peak_gb(self) -> float:
        return self.peak / 2**30

    def __enter__(self) -> PeakMemory:
        self.peak = self._sample(psutil.Process())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample(psutil.Process()))
