"""Offline metrics of recommendation lists, with bootstrap confidence intervals over users.

Metrics are small objects in the RecTools style: ``Precision(k=10)`` has
``calc_per_user(recos, relevant, users=None)`` (a frame ``user_id, value``, one row
per evaluated user, sorted by user) and ``calc(...)`` (the mean over those users).
:func:`evaluate` computes many metrics and cut-offs at once, with the join of the
recommendations to the relevant items done a single time, and adds a percentile
bootstrap interval over users (:func:`bootstrap_ci`).

Inputs
------
``recos``
    ``user_id``, ``track_id``, ``rank`` (1 is the best; other columns are ignored).
    The rank column decides the order, never the row order. A user's list is read
    in the order of ``(rank, track_id)`` and each row gets a *position* 1, 2, ...
    in that order: ties in ``rank`` are broken by the smaller ``track_id`` and gaps
    are closed (ranks 1, 3, 7 are positions 1, 2, 3). The top k is positions 1..k.
    Input sorted by user with ranks exactly 1..n per user (what every generator
    writes) is recognised in one pass and used as it is; any other input is sorted
    first, which at 100M rows costs some 15-20 s more.
``relevant``
    ``user_id``, ``track_id``: the test-window listens. Repeated pairs are counted
    once.
``users`` (optional)
    A Series of user ids: the users to evaluate. Without it the users are those in
    ``relevant``.

Which users count
-----------------
* Ranking metrics (precision, recall, NDCG, MAP, hit rate) are averaged over the
  evaluated users *that have at least one relevant item*: users given in ``users``
  without any relevant item are left out (every one of these metrics is undefined
  or meaningless for them). A user with relevant items and no recommendations
  scores 0. Recommendations of users outside the evaluated set are ignored.
* Beyond-accuracy metrics (coverage, novelty, diversity) use the evaluated users
  (``users``, else the users of ``relevant``, else, when neither is given, every
  user of ``recos``), whether or not they have relevant items. Novelty is averaged
  over users with at least one recommendation, diversity over users with at least
  two distinct tracks with known genres in their top k; coverage is one number for
  the union of the lists.

A track repeated in one list is a hit once, at its best position (the later copy
still takes up a position); coverage and diversity count distinct tracks, novelty
every row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import polars as pl

from musicrec.schema import C

#: Column of :class:`TopLists` and :class:`Hits`: the 1-based position in the list.
POSITION = "position"
#: Column of :attr:`Hits.hits`: the hit's number within the user's hits (1 = first hit).
HIT_INDEX = "hit_index"
VALUE = "value"

#: Largest support of the bootstrap: more distinct values are grouped into this many bins. A draw
#: costs n_boot x support binomials; on scale10's ALS lists, intervals of NDCG@100 and MAP@100 with
#: 1,024 bins, 4,096 and none (2,716 distinct values) differed by less than between three seeds
#: (1e-4), at a third of the time of 4,096.
BOOTSTRAP_MAX_SUPPORT = 1024
#: Decimals to which per-user values are compared when the bootstrap counts distinct values.
SUPPORT_DECIMALS = 12
#: Users per chunk in the intra-list diversity computation (bounds its memory).
DIVERSITY_CHUNK = 200_000

_PER_USER_SCHEMA = {C.user_id: pl.Int32, VALUE: pl.Float64}


# --------------------------------------------------------------------------- inputs


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; it has {frame.columns}")
    nulls = [c for c in columns if frame.get_column(c).null_count()]
    if nulls:
        raise ValueError(f"{what}: null values in columns {nulls}")


def _ids(frame: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """The columns with the id columns cast to Int32 (strict: ids beyond int32 are an error)."""
    return frame.select(
        pl.col(c).cast(pl.Int32, strict=True) if c in (C.user_id, C.track_id) else pl.col(c) for c in columns
    )


def pair_key(user: str = C.user_id, track: str = C.track_id) -> pl.Expr:
    """One int64 per (user, track) pair, so that joins and lookups use a single key.

    Keys sort like the pairs (user, then track); :func:`pair_keys` is the numpy twin.
    """
    return pl.col(user).cast(pl.Int64) * (1 << 32) + (pl.col(track).cast(pl.Int64) + (1 << 31))


def pair_keys(users: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """:func:`pair_key` for numpy arrays of user and track ids."""
    return np.asarray(users).astype(np.int64) * (1 << 32) + (np.asarray(tracks).astype(np.int64) + (1 << 31))


def _user_set(users: pl.Series | Iterable[int] | None) -> pl.Series | None:
    if users is None:
        return None
    series = users if isinstance(users, pl.Series) else pl.Series(list(users))
    return series.cast(pl.Int32, strict=True).unique().sort().rename(C.user_id)


def _in_lists_order(recos: pl.DataFrame) -> bool:
    """Rows grouped by user, each user once, with ranks exactly 1, 2, ..., n in row order."""
    user, rank = pl.col(C.user_id), pl.col(C.rank)
    continues = (user == user.shift(1)) & (rank == rank.shift(1) + 1)
    starts = (rank == 1) & (user != user.shift(1))
    step_ok = pl.when(rank == 1).then(starts).otherwise(continues).fill_null(rank == 1)  # row 0: no previous
    if not recos.select(step_ok.all()).item():
        return False
    starts = recos.filter(pl.col(C.rank) == 1).get_column(C.user_id)
    return starts.is_unique().all()


@dataclass
class TopLists:
    """The first ``max_k`` positions of each user's list: ``user_id, track_id, position``.

    Rows of one user are contiguous and in position order. Built once and shared by
    every metric of an :func:`evaluate` call.
    """

    frame: pl.DataFrame
    max_k: int

    @classmethod
    def from_recos(cls, recos: pl.DataFrame, max_k: int) -> TopLists:
        _require(recos, [C.user_id, C.track_id, C.rank], "recos")
        if not float(max_k).is_integer() or max_k < 1:
            raise ValueError(f"k must be a positive integer, got {max_k}")
        max_k = int(max_k)
        frame = _ids(recos, [C.user_id, C.track_id, C.rank])
        if not frame.schema[C.rank].is_integer():
            raise ValueError(f"recos: rank must be integer, got {frame.schema[C.rank]}")
        if _in_lists_order(frame):
            frame = frame.filter(pl.col(C.rank) <= max_k).rename({C.rank: POSITION})
        else:
            frame = frame.sort([C.user_id, C.rank, C.track_id])
            row = pl.int_range(pl.len(), dtype=pl.Int64)
            new_user = (pl.col(C.user_id) != pl.col(C.user_id).shift(1)).fill_null(True)
            first_row = pl.when(new_user).then(row).otherwise(None).forward_fill()
            frame = frame.select(C.user_id, C.track_id, (row - first_row + 1).alias(POSITION))
            frame = frame.filter(pl.col(POSITION) <= max_k)
        return cls(frame.with_columns(pl.col(POSITION).cast(pl.Int32)), max_k)

    def for_users(self, users: pl.Series | None) -> TopLists:
        if users is None:
            return self
        return TopLists(self.frame.filter(pl.col(C.user_id).is_in(users.implode())), self.max_k)

    def cut(self, k: int) -> TopLists:
        """The same lists cut to their first ``k`` positions."""
        return self if k == self.max_k else TopLists(self.top(k), k)

    def top(self, k: int) -> pl.DataFrame:
        _check_k(k, self.max_k)
        return self.frame if k >= self.max_k else self.frame.filter(pl.col(POSITION) <= k)


def _check_k(k: int, max_k: int) -> None:
    if k > max_k:
        raise ValueError(f"k={k} is beyond the {max_k} positions these lists were cut to")


def _lists(recos: pl.DataFrame | TopLists, k: int) -> TopLists:
    return recos if isinstance(recos, TopLists) else TopLists.from_recos(recos, k)


# --------------------------------------------------------------------------- hits


@dataclass
class Hits:
    """The positions of the relevant items in each user's top ``max_k``, computed once.

    Attributes
    ----------
    users
        ``user_id, n_relevant``: the evaluated users (those with at least one
        relevant item), sorted by user id; ``n_relevant`` counts distinct tracks.
    hits
        ``user_id, position, hit_index`` for every relevant track found in the top
        ``max_k`` (at its best position when listed twice); ``hit_index`` numbers a
        user's hits 1, 2, ... by position.
    """

    users: pl.DataFrame
    hits: pl.DataFrame
    max_k: int
    _stats: dict[int, pl.DataFrame] = field(default_factory=dict, repr=False)

    @classmethod
    def compute(
        cls,
        recos: pl.DataFrame | TopLists,
        relevant: pl.DataFrame,
        max_k: int,
        users: pl.Series | Iterable[int] | None = None,
    ) -> Hits:
        """Join ``recos`` (or lists already cut) to ``relevant`` once, for every k ≤ ``max_k``."""
        lists = _lists(recos, max_k)
        _check_k(max_k, lists.max_k)
        _require(relevant, [C.user_id, C.track_id], "relevant")
        keys = _ids(relevant, [C.user_id, C.track_id]).select(pair_key().alias("key")).unique()
        key_user = (pl.col("key") // (1 << 32)).cast(pl.Int32).alias(C.user_id)
        user_set = _user_set(users)
        if user_set is not None:
            keys = keys.filter(key_user.is_in(user_set.implode()))
        n_rel = keys.group_by(key_user).agg(pl.len().cast(pl.Int64).alias("n_relevant")).sort(C.user_id)
        hits = (
            lists.top(max_k)
            .lazy()
            .join(keys.lazy(), left_on=pair_key(), right_on="key", how="semi")
            .collect()
            .sort([C.user_id, POSITION])
            .unique([C.user_id, C.track_id], keep="first", maintain_order=True)
            .select(
                C.user_id,
                POSITION,
                pl.int_range(1, pl.len() + 1, dtype=pl.Int32).over(C.user_id).alias(HIT_INDEX),
            )
        )
        return cls(n_rel, hits, max_k)

    def stats(self, k: int) -> pl.DataFrame:
        """Per evaluated user: ``n_relevant``, ``n_hits``, ``dcg`` and ``ap_sum`` in the top k."""
        _check_k(k, self.max_k)
        if k not in self._stats:
            position = pl.col(POSITION).cast(pl.Float64)
            per_user = (
                self.hits.filter(pl.col(POSITION) <= k)
                .group_by(C.user_id)
                .agg(
                    pl.len().cast(pl.Int64).alias("n_hits"),
                    (1.0 / (position + 1.0).log(2)).sum().alias("dcg"),
                    (pl.col(HIT_INDEX).cast(pl.Float64) / position).sum().alias("ap_sum"),
                )
            )
            joined = self.users.join(per_user, on=C.user_id, how="left", maintain_order="left")
            self._stats[k] = joined.with_columns(
                pl.col("n_hits").fill_null(0),
                pl.col("dcg").fill_null(0.0),
                pl.col("ap_sum").fill_null(0.0),
            )
        return self._stats[k]


# --------------------------------------------------------------------------- metrics


class Metric:
    """A metric at cut-off ``k``: ``calc_per_user`` gives a value per user, ``calc`` their mean."""

    name: ClassVar[str] = "metric"
    #: Whether the metric is a mean of per-user values (so it has a bootstrap interval).
    per_user: ClassVar[bool] = True
    k: int

    def calc_per_user(
        self, recos: pl.DataFrame, relevant: pl.DataFrame | None = None, users: pl.Series | None = None
    ) -> pl.DataFrame:
        raise NotImplementedError

    def calc(
        self, recos: pl.DataFrame, relevant: pl.DataFrame | None = None, users: pl.Series | None = None
    ) -> float:
        """The mean of :meth:`calc_per_user` (NaN when no user is evaluated)."""
        return _mean(self.calc_per_user(recos, relevant, users))


def _mean(per_user: pl.DataFrame) -> float:
    return float(per_user.get_column(VALUE).mean()) if per_user.height else math.nan


def _validate_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


@dataclass(frozen=True)
class RankingMetric(Metric):
    """A metric of the hits in the top k; needs ``relevant``."""

    k: int

    def __post_init__(self) -> None:
        _validate_k(self.k)

    def calc_per_user(
        self, recos: pl.DataFrame, relevant: pl.DataFrame | None = None, users: pl.Series | None = None
    ) -> pl.DataFrame:
        if relevant is None:
            raise ValueError(f"{type(self).__name__} needs the relevant interactions")
        return self.from_hits(Hits.compute(recos, relevant, self.k, users))

    def from_hits(self, hits: Hits) -> pl.DataFrame:
        """Per-user values from hits already computed (any ``max_k`` ≥ k)."""
        stats = self.from_stats(hits.stats(self.k))
        return stats.select(pl.col(C.user_id), pl.col(VALUE).cast(pl.Float64))

    def from_stats(self, stats: pl.DataFrame) -> pl.DataFrame:
        raise NotImplementedError


class Precision(RankingMetric):
    """Precision@k: the share of the top k that is relevant, ``hits in top k / k``.

    The denominator is k even when the list is shorter than k.

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 1, 1], "track_id": [1, 4, 2, 5], "rank": [1, 2, 3, 4]})
    >>> relevant = pl.DataFrame({"user_id": [1, 1, 1], "track_id": [1, 2, 3]})
    >>> Precision(k=2).calc(recos, relevant)
    0.5
    """

    name = "precision"

    def from_stats(self, stats: pl.DataFrame) -> pl.DataFrame:
        return stats.with_columns((pl.col("n_hits") / self.k).alias(VALUE))


class Recall(RankingMetric):
    """Recall@k: the share of the relevant items found, ``hits in top k / |relevant|``.

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 1, 1], "track_id": [1, 4, 2, 5], "rank": [1, 2, 3, 4]})
    >>> relevant = pl.DataFrame({"user_id": [1, 1, 1], "track_id": [1, 2, 3]})
    >>> round(Recall(k=3).calc(recos, relevant), 4)
    0.6667
    """

    name = "recall"

    def from_stats(self, stats: pl.DataFrame) -> pl.DataFrame:
        return stats.with_columns((pl.col("n_hits") / pl.col("n_relevant")).alias(VALUE))


def ideal_dcg(n: np.ndarray | int) -> np.ndarray:
    """``sum_{r=1..n} 1/log2(r+1)``: the DCG of ``n`` hits at the first positions."""
    n = np.asarray(n, dtype=np.int64)
    top = int(n.max()) if n.size else 0
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, top + 2)))])
    return table[n]


class NDCG(RankingMetric):
    """NDCG@k with binary gain: ``DCG / ideal DCG``.

    ``DCG = sum over hits at position r ≤ k of 1/log2(r+1)``; the ideal DCG puts
    ``min(|relevant|, k)`` hits at positions 1, 2, ...

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 1, 1], "track_id": [1, 4, 2, 5], "rank": [1, 2, 3, 4]})
    >>> relevant = pl.DataFrame({"user_id": [1, 1, 1], "track_id": [1, 2, 3]})
    >>> round(NDCG(k=2).calc(recos, relevant), 4)  # 1 / (1 + 1/log2(3))
    0.6131
    """

    name = "ndcg"

    def from_stats(self, stats: pl.DataFrame) -> pl.DataFrame:
        ideal = ideal_dcg(np.minimum(stats.get_column("n_relevant").to_numpy(), self.k))
        return stats.with_columns((pl.col("dcg") / pl.Series(ideal)).alias(VALUE))


class MAP(RankingMetric):
    """MAP@k: ``sum over hits at position r ≤ k of precision@r, / min(|relevant|, k)``.

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 1, 1], "track_id": [1, 4, 2, 5], "rank": [1, 2, 3, 4]})
    >>> relevant = pl.DataFrame({"user_id": [1, 1, 1], "track_id": [1, 2, 3]})
    >>> round(MAP(k=3).calc(recos, relevant), 4)  # (1/1 + 2/3) / 3
    0.5556
    """

    name = "map"

    def from_stats(self, stats: pl.DataFrame) -> pl.DataFrame:
        denominator = pl.min_horizontal(pl.col("n_relevant"), pl.lit(self.k, dtype=pl.Int64))
        return stats.with_columns((pl.col("ap_sum") / denominator).alias(VALUE))


class HitRate(RankingMetric):
    """HitRate@k: 1 when at least one relevant item is in the top k, else 0.

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 1, 1], "track_id": [1, 4, 2, 5], "rank": [1, 2, 3, 4]})
    >>> relevant = pl.DataFrame({"user_id": [1, 1, 1], "track_id": [1, 2, 3]})
    >>> HitRate(k=1).calc(recos, relevant)
    1.0
    """

    name = "hitrate"

    def from_stats(self, stats: pl.DataFrame) -> pl.DataFrame:
        return stats.with_columns((pl.col("n_hits") > 0).cast(pl.Float64).alias(VALUE))


def _beyond_users(relevant: pl.DataFrame | None, users: pl.Series | Iterable[int] | None) -> pl.Series | None:
    """The users of a beyond-accuracy metric: ``users``, else those of ``relevant``, else all."""
    if users is not None:
        return _user_set(users)
    if relevant is not None:
        _require(relevant, [C.user_id], "relevant")
        return _user_set(relevant.get_column(C.user_id))
    return None


@dataclass(frozen=True)
class ListMetric(Metric):
    """A metric of the lists alone (``relevant`` only names the users when ``users`` is absent)."""

    k: int

    def __post_init__(self) -> None:
        _validate_k(self.k)

    def calc_per_user(
        self, recos: pl.DataFrame, relevant: pl.DataFrame | None = None, users: pl.Series | None = None
    ) -> pl.DataFrame:
        lists = _lists(recos, self.k).for_users(_beyond_users(relevant, users))
        return self.from_lists(lists)

    def from_lists(self, lists: TopLists) -> pl.DataFrame:
        raise NotImplementedError


@dataclass(frozen=True)
class Coverage(ListMetric):
    """Catalogue coverage@k: ``distinct tracks in the evaluated users' top k / n_items``.

    One number for all lists together, not a mean over users: ``calc_per_user``
    is not defined and :func:`evaluate` gives no bootstrap interval (a user
    bootstrap of a distinct count is biased downwards, each resample dropping about
    a third of the users).

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 2, 2], "track_id": [1, 2, 2, 3], "rank": [1, 2, 1, 2]})
    >>> Coverage(k=2, n_items=10).calc(recos)
    0.3
    """

    n_items: int = 0
    name: ClassVar[str] = "coverage"
    per_user: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _validate_k(self.k)
        if self.n_items < 1:
            raise ValueError(f"Coverage needs the catalogue size n_items ≥ 1, got {self.n_items}")

    def calc_per_user(self, recos, relevant=None, users=None) -> pl.DataFrame:
        raise TypeError("coverage is a property of all lists together; use calc()")

    def calc(
        self, recos: pl.DataFrame, relevant: pl.DataFrame | None = None, users: pl.Series | None = None
    ) -> float:
        lists = _lists(recos, self.k).for_users(_beyond_users(relevant, users))
        return self.from_lists(lists)

    def from_lists(self, lists: TopLists) -> float:  # type: ignore[override]
        return lists.top(self.k).get_column(C.track_id).n_unique() / self.n_items


def track_novelty(train: pl.DataFrame) -> tuple[pl.DataFrame, float]:
    """``track_id, novelty`` with ``novelty = -log2(users of the track / users of train)``.

    Returns the table and the novelty of a track never listened to in ``train``,
    ``log2(n_users)``: such a track counts as if one user had listened to it, the
    rarest share observable, which keeps the value finite.
    """
    _require(train, [C.user_id, C.track_id], "train")
    train = _ids(train, [C.user_id, C.track_id])
    n_users = train.get_column(C.user_id).n_unique()
    listeners = train.group_by(C.track_id).agg(pl.col(C.user_id).n_unique().alias("listeners"))
    return novelty_from_counts(listeners, n_users)


def novelty_from_counts(listeners: pl.DataFrame, n_users: int) -> tuple[pl.DataFrame, float]:
    """:func:`track_novelty` from counts already made: ``track_id, listeners`` (distinct users of
    each track; tracks with 0 are dropped, they count as unseen) and the number of users of train.

    The same numbers as from the interactions themselves, without holding them.
    """
    _require(listeners, [C.track_id, "listeners"], "listeners")
    if n_users <= 0:
        raise ValueError("train: no interactions to measure novelty against")
    table = listeners.filter(pl.col("listeners") > 0).select(
        pl.col(C.track_id).cast(pl.Int32, strict=True),
        (math.log2(n_users) - pl.col("listeners").cast(pl.Float64).log(2)).alias("novelty"),
    )
    return table, math.log2(n_users)


@dataclass(frozen=True)
class Novelty(ListMetric):
    """Novelty@k: mean inverse user frequency, log2 (bits).

    Per user, the mean over the rows of the top k of ``-log2(share of the training
    users who listened to the track)``; the metric is the mean over users with at
    least one recommendation (users without are left out: 0 would mean "only the
    most popular tracks"). A track absent from ``train`` gets ``log2(n_train_users)``
    (as if one user had listened to it). Not bounded by 1. Instead of ``train``, its counts
    can be given: ``listeners`` (``track_id, listeners``: distinct users of each track) and
    ``n_users`` (distinct users of train), which give the same values
    (:func:`novelty_from_counts`) without the interactions in memory.

    Examples
    --------
    >>> train = pl.DataFrame({"user_id": [1, 2, 3, 4, 1], "track_id": [1, 1, 1, 1, 2]})
    >>> recos = pl.DataFrame({"user_id": [9, 9], "track_id": [1, 2], "rank": [1, 2]})
    >>> Novelty(k=2, train=train).calc(recos)  # (-log2(4/4) - log2(1/4)) / 2
    1.0
    """

    train: pl.DataFrame | None = field(default=None, repr=False, compare=False)
    listeners: pl.DataFrame | None = field(default=None, repr=False, compare=False)
    n_users: int | None = None
    name: ClassVar[str] = "novelty"
    _table: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate_k(self.k)
        if self.train is not None:
            table = track_novelty(self.train)
        elif self.listeners is not None and self.n_users is not None:
            table = novelty_from_counts(self.listeners, self.n_users)
        else:
            raise ValueError(
                "Novelty needs the training interactions (train=...), or their counts "
                "(listeners=..., n_users=...)"
            )
        object.__setattr__(self, "_table", table)

    def from_lists(self, lists: TopLists) -> pl.DataFrame:
        table, unseen = self._table
        return (
            lists.top(self.k)
            .join(table, on=C.track_id, how="left")
            .group_by(C.user_id)
            .agg(pl.col("novelty").fill_null(unseen).mean().alias(VALUE))
            .sort(C.user_id)
            .select(pl.col(C.user_id), pl.col(VALUE).cast(pl.Float64))
        )


@dataclass(frozen=True)
class IntraListDiversity(ListMetric):
    """Intra-list diversity by genre@k: mean genre distance of the pairs in the top k.

    Per user, the mean over unordered pairs of distinct tracks in the top k of
    ``1 - |G_a ∩ G_b| / |G_a ∪ G_b|`` (one minus the Jaccard similarity of the genre
    sets). Tracks without genres (an empty list, or absent from ``tracks``) carry no
    information and are left out of the pairs; users with fewer than two tracks with
    genres in their top k are left out of the mean. The cost grows with k² (each
    genre set is a bit mask, each of the k(k-1)/2 pairs of positions one vectorised
    step over all users): meant for small k (10, 20).

    Examples
    --------
    >>> tracks = pl.DataFrame({"track_id": [1, 2, 3], "genres": [[1], [1, 2], [3]]})
    >>> recos = pl.DataFrame({"user_id": [9, 9, 9], "track_id": [1, 2, 3], "rank": [1, 2, 3]})
    >>> IntraListDiversity(k=3, tracks=tracks).calc(recos)  # ((1 - 1/2) + 1 + 1) / 3
    0.8333333333333334
    """

    tracks: pl.DataFrame | None = field(default=None, repr=False, compare=False)
    name: ClassVar[str] = "diversity"
    _masks: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate_k(self.k)
        if self.tracks is None:
            raise ValueError("IntraListDiversity needs the tracks table with genres (tracks=...)")
        object.__setattr__(self, "_masks", genre_masks(self.tracks))

    def from_lists(self, lists: TopLists) -> pl.DataFrame:
        track_ids, masks, sizes = self._masks
        top = lists.top(self.k)
        missing = len(track_ids)  # the last row of masks: no genres
        row = _rows_of(track_ids, top.get_column(C.track_id).to_numpy(), missing)
        row = np.where(sizes[row] > 0, row, missing)
        user = top.get_column(C.user_id).to_numpy()
        new_user = np.ones(len(user), dtype=bool)
        new_user[1:] = user[1:] != user[:-1]
        slots = np.full((int(new_user.sum()), self.k), missing, dtype=np.int32)
        slots[np.cumsum(new_user) - 1, top.get_column(POSITION).to_numpy() - 1] = row
        words = np.ascontiguousarray(masks.T)
        values = [
            _mean_pair_distance(slots[s : s + DIVERSITY_CHUNK], words, sizes, missing)
            for s in range(0, len(slots), DIVERSITY_CHUNK)
        ]
        out = pl.DataFrame(
            {C.user_id: user[new_user], VALUE: np.concatenate([np.zeros(0), *values])},
            schema=_PER_USER_SCHEMA,
        )
        return out.filter(pl.col(VALUE).is_not_nan()).sort(C.user_id)


def _rows_of(sorted_ids: np.ndarray, ids: np.ndarray, missing: int) -> np.ndarray:
    """Row of each id in ``sorted_ids``, ``missing`` when absent (a lookup table when ids are dense)."""
    if not len(sorted_ids):
        return np.full(len(ids), missing, dtype=np.int64)
    low, high = int(sorted_ids[0]), int(sorted_ids[-1])
    if low >= 0 and high < 4 * len(sorted_ids) + 1_000_000:
        table = np.full(high + 2, missing, dtype=np.int64)  # the last cell: any id beyond the range
        table[sorted_ids] = np.arange(len(sorted_ids))
        return table[np.clip(ids, -1, high + 1)]  # -1 (negative ids) is the last cell too
    row = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[row] == ids, row, missing)


def genre_masks(tracks: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genre sets as bit masks: sorted ``track_ids``, ``masks[row, word]`` (uint64) and sizes.

    Genre ids are numbered densely; genre ``g`` is bit ``g % 64`` of word ``g // 64``.
    One extra last row (all zero) stands for "no genres".
    """
    _require(tracks, [C.track_id], "tracks")
    if C.genres not in tracks.columns:
        raise ValueError(f"tracks: missing column '{C.genres}'")
    tracks = tracks.select(pl.col(C.track_id).cast(pl.Int32), pl.col(C.genres)).sort(C.track_id)
    track_ids = tracks.get_column(C.track_id).to_numpy()
    pairs = tracks.with_row_index("row").explode(C.genres).drop_nulls(C.genres).unique(["row", C.genres])
    genre_index = pairs.get_column(C.genres).rank("dense").cast(pl.Int64).to_numpy() - 1
    n_words = max(1, -(-int(genre_index.max() + 1 if len(genre_index) else 0) // 64))
    masks = np.zeros((len(track_ids) + 1, n_words), dtype=np.uint64)
    bits = np.left_shift(np.uint64(1), (genre_index % 64).astype(np.uint64))
    # (track, genre) pairs are distinct, so summing the bits of one word is their OR
    flat = pairs.get_column("row").cast(pl.Int64).to_numpy() * n_words + genre_index // 64
    summed = pl.DataFrame({"cell": flat, "bits": bits}).group_by("cell").agg(pl.col("bits").sum())
    masks.reshape(-1)[summed.get_column("cell").to_numpy()] = summed.get_column("bits").to_numpy()
    sizes = np.bitwise_count(masks).sum(axis=1).astype(np.int64)
    return track_ids, masks, sizes


def _mean_pair_distance(slots: np.ndarray, words: np.ndarray, sizes: np.ndarray, missing: int) -> np.ndarray:
    """Mean ``1 - Jaccard`` over pairs of distinct known tracks, per row of ``slots``; NaN below two.

    ``slots[u, p]`` is the mask row of the track at position ``p + 1`` (``missing``:
    none, or no genres); ``words[w]`` is word ``w`` of every mask row. A track listed
    twice is counted once. A pair with an unknown track has no common genre and a
    zero-size union, so it adds nothing to the sum of Jaccard similarities.
    """
    slots = slots.copy()
    k = slots.shape[1]
    for j in range(1, k):  # later copies of a track are dropped
        repeated = (slots[:, :j] == slots[:, j : j + 1]).any(axis=1)
        slots[repeated, j] = missing
    slot_words = [[w[slots[:, i]] for w in words] for i in range(k)]
    slot_sizes = [sizes[slots[:, i]] for i in range(k)]
    similarity = np.zeros(len(slots))
    for i in range(k):
        for j in range(i + 1, k):
            pairs_of_words = zip(slot_words[i], slot_words[j], strict=True)
            common = sum(np.bitwise_count(a & b).astype(np.int64) for a, b in pairs_of_words)
            union = slot_sizes[i] + slot_sizes[j] - common
            similarity += common / np.maximum(union, 1)
    n = (slots != missing).sum(axis=1)
    pairs = n * (n - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pairs - similarity) / pairs, np.nan)


# --------------------------------------------------------------------------- bootstrap


def _support(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts; beyond ``BOOTSTRAP_MAX_SUPPORT`` values, bins.

    Values equal to :data:`SUPPORT_DECIMALS` decimals are one value (the smallest): the same
    users' values summed in another order (another engine: Spark's, say) differ in the last
    bits, and without this would split a distinct value in two and change the draws. Binned
    values are replaced by their bin's mean, so the sample mean is kept exactly and only the
    spread within a bin (at most 1/1024 of the range) is lost.

    >>> support, counts = _support(np.array([0.1 + 0.2, 0.3, 0.5]))
    >>> counts.tolist()
    [2, 1]
    """
    ordered = np.sort(values)
    keys = np.round(ordered, SUPPORT_DECIMALS)  # rounding keeps the order
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    if len(starts) <= BOOTSTRAP_MAX_SUPPORT:  # each value is its group's smallest
        return ordered[starts], np.diff(np.r_[starts, len(ordered)])
    low, high = float(keys.min()), float(keys.max())
    bins = np.minimum(
        ((keys - low) / (high - low) * BOOTSTRAP_MAX_SUPPORT).astype(np.int64), BOOTSTRAP_MAX_SUPPORT - 1
    )
    counts = np.bincount(bins, minlength=BOOTSTRAP_MAX_SUPPORT)
    sums = np.bincount(bins, weights=ordered, minlength=BOOTSTRAP_MAX_SUPPORT)
    used = counts > 0
    return sums[used] / counts[used], counts[used]


def bootstrap_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``n_boot`` means of resamples (with replacement, of the same size) of ``values``.

    A resample is drawn as multinomial counts over the distinct values, the same
    distribution as drawing users with replacement, in ``O(n_boot × distinct)``
    instead of ``O(n_boot × n)``.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(x).any():
        raise ValueError("bootstrap: values contain NaN")
    if x.size == 0:
        return np.full(n_boot, np.nan)
    support, counts = _support(x)
    rng = np.random.default_rng(seed)
    resampled = rng.multinomial(x.size, counts / x.size, size=n_boot)
    return resampled @ support / x.size


def bootstrap_ci(
    per_user_values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(lower, upper)`` of the mean over users.

    Users are resampled with replacement ``n_boot`` times (see
    :func:`bootstrap_means`); the bounds are the ``alpha/2`` and ``1 - alpha/2``
    quantiles of the resampled means. The same seed gives the same interval. NaN
    bounds for an empty input.

    Examples
    --------
    >>> bootstrap_ci(np.full(100, 0.25))
    (0.25, 0.25)
    >>> low, high = bootstrap_ci(np.r_[np.zeros(5000), np.ones(5000)])
    >>> bool(0.488 < low < 0.492 and 0.508 < high < 0.512)
    True
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    means = bootstrap_means(per_user_values, n_boot, seed)
    if np.isnan(means).any():
        return math.nan, math.nan
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_diff_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Paired bootstrap interval of ``mean(a) - mean(b)``, two models on the same users.

    ``a[i]`` and ``b[i]`` must be the same user (align per-user frames by a join on
    ``user_id`` first). Users are resampled together, which is resampling the
    per-user differences ``a - b``.

    Examples
    --------
    >>> bootstrap_diff_ci(np.array([1.5, 2.5, 0.5]), np.array([1.0, 2.0, 0.0]))
    (0.5, 0.5)
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs values of the same users: {a.size} vs {b.size} values")
    return bootstrap_ci(a - b, n_boot, alpha, seed)


# --------------------------------------------------------------------------- evaluate


def ranking_values(
    lists: pl.DataFrame | TopLists,
    relevant: pl.DataFrame,
    metrics: Sequence[RankingMetric],
    users: pl.Series | Iterable[int] | None = None,
) -> list[pl.DataFrame]:
    """Each ranking metric's per-user frame (``user_id, value``), in order, from one join of
    the lists and ``relevant``: the local engine's :data:`musicrec.evaluation.RankingValues`
    (:class:`musicrec.spark.metrics.RankingValues` is Spark's)."""
    metrics = list(metrics)
    if not metrics:
        return []
    hits = Hits.compute(lists, relevant, max(m.k for m in metrics), users)
    return [m.from_hits(hits) for m in metrics]


def evaluate_per_user(
    recos: pl.DataFrame,
    relevant: pl.DataFrame,
    metrics: Sequence[Metric],
    users: pl.Series | Iterable[int] | None = None,
) -> list[pl.DataFrame | float]:
    """Each metric's per-user frame (``user_id, value``), or its value for coverage, in order.

    The lists are cut and joined to ``relevant`` once for all metrics and ks. Use it
    to compare two models user by user (:func:`bootstrap_diff_ci` after a join on
    ``user_id``).
    """
    metrics = list(metrics)
    if not metrics:
        return []
    max_k = max(m.k for m in metrics)
    lists = TopLists.from_recos(recos, max_k)
    user_set = _user_set(users)
    unknown = [m for m in metrics if not isinstance(m, RankingMetric | ListMetric)]
    if unknown:
        raise TypeError(f"evaluate does not know how to compute {unknown}")
    ranking_ks = [m.k for m in metrics if isinstance(m, RankingMetric)]
    hits = Hits.compute(lists, relevant, max(ranking_ks), user_set) if ranking_ks else None
    list_ks = [m.k for m in metrics if isinstance(m, ListMetric)]
    beyond = lists.cut(max(list_ks)).for_users(_beyond_users(relevant, user_set)) if list_ks else None
    return [m.from_hits(hits) if isinstance(m, RankingMetric) else m.from_lists(beyond) for m in metrics]


def evaluate(
    recos: pl.DataFrame,
    relevant: pl.DataFrame,
    metrics: Sequence[Metric],
    users: pl.Series | Iterable[int] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pl.DataFrame:
    """Every metric with a percentile bootstrap interval over users.

    Returns one row per metric: ``metric`` (its name), ``k``, ``value`` (mean over
    users), ``lower``, ``upper`` (the ``1 - alpha`` interval of :func:`bootstrap_ci`;
    null for coverage, which is not a mean over users). Every interval uses the same
    seed. See the module docstring for which users count.

    Examples
    --------
    >>> recos = pl.DataFrame({"user_id": [1, 1, 2, 2], "track_id": [1, 4, 2, 5], "rank": [1, 2, 1, 2]})
    >>> relevant = pl.DataFrame({"user_id": [1, 2], "track_id": [1, 3]})
    >>> evaluate(recos, relevant, [Precision(1), HitRate(2)], n_boot=200)["value"].to_list()
    [0.5, 0.5]
    """
    metrics = list(metrics)
    results = evaluate_per_user(recos, relevant, metrics, users)
    rows = []
    for m, result in zip(metrics, results, strict=True):
        if isinstance(result, pl.DataFrame):
            values = result.get_column(VALUE).to_numpy()
            value = float(values.mean()) if values.size else math.nan
            low, high = bootstrap_ci(values, n_boot, alpha, seed)
        else:
            value, low, high = float(result), None, None
        rows.append({"metric": m.name, "k": int(m.k), "value": value, "lower": low, "upper": high})
    return pl.DataFrame(
        rows,
        schema={
            "metric": pl.Utf8,
            "k": pl.Int32,
            "value": pl.Float64,
            "lower": pl.Float64,
            "upper": pl.Float64,
        },
        orient="row",
    )
