"""Ordered work in a few threads: numpy, scipy, polars and implicit release the GIL in their
heavy loops, so two threads keep both cores of a small machine busy."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Threads for batch work: both cores of the reference machine, never more than the machine has.
WORKERS = min(2, os.cpu_count() or 1)


def in_order(work: Callable[[T], R], items: Iterable[T], workers: int = WORKERS) -> Iterator[R]:
    """``work(item)`` for every item, yielded in order, computed ``workers`` at a time in threads.

    While the caller uses one result, ``workers`` more are being computed (``workers=1``: the next
    batch is prepared while this one is consumed), so at most ``workers + 1`` are alive at once;
    ``workers=0`` computes each when it is asked for, in the caller's thread.

    >>> list(in_order(lambda x: x * x, range(5), workers=2))
    [0, 1, 4, 9, 16]
    """
    if workers < 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
