"""Peak resident memory of a block of work, sampled in a background thread."""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from array import array

import psutil


class MemoryTimeline:
    """(wall-clock time, resident bytes) samples in time order, 16 bytes each.

    ``peak_between(start, end)`` is the highest sample of an interval, counting the last
    sample before it (the memory the interval started with).
    """

    def __init__(self) -> None:
        self.times, self.rss = array("d"), array("q")

    def add(self, at: float, rss: int) -> None:
        """Append one sample; ``at`` is seconds since the epoch (``time.time()``)."""
        self.times.append(at)
        self.rss.append(rss)

    def __len__(self) -> int:
        return len(self.times)

    def peak_between(self, start: float, end: float) -> int | None:
        """Peak resident bytes from ``start`` to ``end``; ``None`` when no sample covers it."""
        lo = max(bisect.bisect_right(self.times, start) - 1, 0)
        hi = bisect.bisect_right(self.times, end)
        if hi == 0 or lo >= len(self.times):
            return None
        return max(self.rss[lo : max(hi, lo + 1)])


class PeakMemory:
    """Samples resident memory every ``interval`` seconds while the block runs.

    ``children=True`` sums this process's descendants (a notebook kernel run by
    papermill); otherwise it is this process itself. ``timeline=True`` also keeps every
    sample in ``self.timeline`` (a :class:`MemoryTimeline`), for the peak of each step.

    >>> with PeakMemory() as memory:   # doctest: +SKIP
    ...     work()
    >>> memory.peak_gb                 # doctest: +SKIP
    """

    def __init__(self, children: bool = False, interval: float = 0.2, timeline: bool = False):
        self.children, self.interval, self.peak = children, interval, 0
        self.timeline: MemoryTimeline | None = MemoryTimeline() if timeline else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, me: psutil.Process) -> int:
        if not self.children:
            rss = me.memory_info().rss
        else:
            rss = 0
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
        if self.timeline is not None:
            self.timeline.add(time.time(), rss)
        return rss

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
