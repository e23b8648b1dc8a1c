"""Blending the offline list with the online i2i picks: a pure function, no I/O.

Strategies (:class:`~musicrec.service.settings.BlendingConfig`):

``interleave`` (default)
    Both lists keep their own order. Slot ``j`` (1-based) of the result goes to the online
    list when ``floor(j * online_share)`` grows at ``j``, to the offline list otherwise: with
    ``online_share = 0.3`` the online picks take slots 4, 7 and 10 of ten, with ``0.5`` every
    second slot, and the offline list keeps the top slot unless the share is 1. When one list
    runs out, the other one goes on. The scores of the two lists are not comparable (ranker
    scores against summed item similarities), which is why this strategy uses positions only;
    each returned score is the one of the list it came from.
``rrf``
    Reciprocal rank fusion: a track scores ``1 / (rrf_k + r_offline) + online_weight / (rrf_k +
    r_online)`` over the lists it is in (ranks counted after heard tracks and duplicates are
    removed), so a track both lists propose climbs; ties go to the better offline rank, then the
    smaller id. The returned score is the fused one; the source is the list with the larger term.
``offline``
    The offline list alone (the online picks are ignored): a control arm for experiments.

Every strategy first drops heard tracks and repeats from each list, never places a track
twice, and fills the slots left (a short or empty list, a cold user) from top-popular,
again without heard tracks or repeats. The result can be shorter than ``k`` only when the
three lists together hold fewer unheard tracks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from musicrec.service.settings import BlendingConfig

#: The lists a served list is made of; "final" is the pipeline's final list everywhere (metrics,
#: recommendations.parquet, the service, the A/B log).
OFFLINE, ONLINE, POPULAR = "final", "online_i2i", "top_popular"


@dataclass(frozen=True)
class Ranked:
    """A ranked list: ``tracks`` best first, their ``scores``, and a ``source`` label.

    ``source`` is one label for the whole list, or one per track.
    """

    tracks: np.ndarray
    scores: np.ndarray
    source: str | Sequence[str]

    @classmethod
    def empty(cls, source: str) -> Ranked:
        return cls(np.empty(0, np.int64), np.empty(0, np.float64), source)

    @classmethod
    def of(
        cls, tracks: Iterable[int], scores: Iterable[float] | None = None, source: str = OFFLINE
    ) -> Ranked:
        """From Python sequences; without ``scores``, descending ones (n, n - 1, ..., 1)."""
        tracks = np.asarray(list(tracks), dtype=np.int64)
        scores = (
            np.asarray(list(scores), dtype=np.float64)
            if scores is not None
            else np.arange(len(tracks), 0, -1, dtype=np.float64)
        )
        return cls(tracks, scores, source)

    def __len__(self) -> int:
        return len(self.tracks)

    def label(self, i: int) -> str:
        return self.source if isinstance(self.source, str) else self.source[i]


class Pick(NamedTuple):
    track_id: int
    score: float
    source: str


def _clean(ranked: Ranked, heard: np.ndarray) -> Iterator[tuple[int, float, str]]:
    """The list without heard tracks and without repeats (first occurrence kept), in order, lazily."""
    if not len(ranked):
        return
    keep = ~np.isin(ranked.tracks, heard) if len(heard) else np.ones(len(ranked), bool)
    seen: set[int] = set()
    tracks, scores = ranked.tracks, ranked.scores
    for i in np.flatnonzero(keep).tolist():
        track = int(tracks[i])
        if track not in seen:
            seen.add(track)
            yield track, float(scores[i]), ranked.label(i)


def online_slots(k: int, share: float) -> list[int]:
    """The 1-based slots of the first ``k`` that the interleave gives the online list.

    >>> online_slots(10, 0.3), online_slots(6, 0.5), online_slots(3, 0.0)
    ([4, 7, 10], [2, 4, 6], [])
    """
    eps = 1e-9  # 0.3 * 10 is 3.0000000000000004 in floating point
    return [j for j in range(1, k + 1) if math.floor(j * share + eps) > math.floor((j - 1) * share + eps)]


def _interleave(offline: Iterator, online: Iterator, k: int, share: float) -> list[Pick]:
    online_at = set(online_slots(k, share))
    out: list[Pick] = []
    placed: set[int] = set()
    live = {False: offline, True: online}  # the lists not yet run out, by "is online"
    while len(out) < k and live:
        want_online = (len(out) + 1) in online_at
        source = want_online if want_online in live else (not want_online)
        item = next(live[source], None)
        if item is None:
            del live[source]
            continue
        track, score, label = item
        if track not in placed:
            placed.add(track)
            out.append(Pick(track, score, label))
    return out


def _rrf(offline: list, online: list, k: int, c: float, online_weight: float) -> list[Pick]:
    fused: dict[int, list] = {}  # track -> [score, offline rank, offline term, online term, labels]
    for rank, (track, _, source) in enumerate(offline, start=1):
        fused[track] = [1.0 / (c + rank), rank, 1.0 / (c + rank), 0.0, source, None]
    for rank, (track, _, source) in enumerate(online, start=1):
        term = online_weight / (c + rank)
        entry = fused.setdefault(track, [0.0, math.inf, 0.0, 0.0, None, source])
        entry[0] += term
        entry[3] = term
        entry[5] = source
    order = sorted(fused.items(), key=lambda item: (-item[1][0], item[1][1], item[0]))
    out = []
    for track, (score, _, off_term, on_term, off_label, on_label) in order[:k]:
        out.append(Pick(track, score, off_label if off_term >= on_term else on_label))
    return out


def blend(
    offline: Ranked,
    online: Ranked,
    popular: Ranked,
    k: int,
    heard: Iterable[int] | np.ndarray = (),
    config: BlendingConfig | None = None,
) -> list[Pick]:
    """The user's ``k`` tracks from the offline list, the online picks and top-popular.

    See the module's docstring for the strategies. ``heard`` (history listens and stored
    events) are never returned, and no track twice.

    Examples
    --------
    >>> offline = Ranked.of([10, 11, 12, 13], [4.0, 3.0, 2.0, 1.0], "final")
    >>> online = Ranked.of([20, 11, 21], [0.9, 0.8, 0.7], "online_i2i")
    >>> popular = Ranked.of([1, 2], [100.0, 90.0], "top_popular")
    >>> cfg = BlendingConfig(online_share=0.5)
    >>> [p.track_id for p in blend(offline, online, popular, 6, heard=[12], config=cfg)]
    [10, 20, 11, 21, 13, 1]
    """
    config = config or BlendingConfig()
    if k <= 0:
        return []
    heard_arr = np.fromiter(heard, dtype=np.int64) if not isinstance(heard, np.ndarray) else heard
    off = _clean(offline, heard_arr)
    on = _clean(online, heard_arr) if config.strategy != "offline" else iter(())
    if config.strategy == "rrf":
        out = _rrf(list(off), list(on), k, config.rrf_k, config.online_weight)
    else:
        out = _interleave(off, on, k, config.online_share)
    if len(out) < k:
        placed = {p.track_id for p in out}
        for track, score, source in _clean(popular, heard_arr):
            if len(out) >= k:
                break
            if track not in placed:
                placed.add(track)
                out.append(Pick(track, score, source))
    return out


def count_sources(picks: Sequence[Pick]) -> dict[str, int]:
    """How many of ``picks`` each source filled (every source named, zeros included)."""
    counts = {OFFLINE: 0, ONLINE: 0, POPULAR: 0}
    for pick in picks:
        counts[pick.source] = counts.get(pick.source, 0) + 1
    return counts


def served_by(counts: dict[str, int]) -> str:
    """The request's category for the statistics: ``online_blended``, ``final`` or ``top_popular``.

    ``online_blended`` when an online pick made it into the list, ``final`` when the
    offline ranker's list did, ``top_popular`` otherwise (the fallback).
    """
    if counts.get(ONLINE, 0):
        return "online_blended"
    if counts.get(OFFLINE, 0):
        return "final"
    return "top_popular"
