"""The three time windows: history | labels | test (see DESIGN.md, "Time windows").

The boundaries come from the profile (dates, or the last N days of the data) and
are resolved against the data's actual first and last day. ``split.json`` records
the dates used and the row and user counts of each window, including the cold
users of the test window (first seen in it).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from musicrec.config import SplitConfig, share_of
from musicrec.schema import C, DataContractError

WINDOWS = ("history", "labels", "test")


#: What :func:`window_expr` calls the listens just before a boundary, left out of the window after it
#: (the gap before labels is still fitted on for test: it is in test's past).
GAP = "gap"


def window_expr(label_start: dt.date, test_start: dt.date, gap: dt.timedelta = dt.timedelta(0)) -> pl.Expr:
    """``history``/``labels``/``test`` for each row, from its ``started_at``; with a ``gap``,
    the rows within it before each boundary are ``gap`` (``split.gap_minutes``)."""
    ts = pl.col(C.started_at)
    expr = pl.when(ts < cut_before(label_start, gap)).then(pl.lit("history"))
    if gap:
        expr = expr.when(ts < midnight(label_start)).then(pl.lit(GAP))
    expr = expr.when(ts < cut_before(test_start, gap)).then(pl.lit("labels"))
    if gap:
        expr = expr.when(ts < midnight(test_start)).then(pl.lit(GAP))
    return expr.otherwise(pl.lit("test")).alias("window")


def compute_split(
    interactions: str | Path | pl.LazyFrame, cfg: SplitConfig, file: str = "interactions.parquet"
) -> dict:
    """Resolve the boundaries and count rows and users per window.

    An empty window is a :class:`~musicrec.schema.DataContractError` naming the
    window, its dates and the profile key to move.
    """
    lf = pl.scan_parquet(interactions) if not isinstance(interactions, pl.LazyFrame) else interactions
    if cfg.per_user:
        return per_user_split(lf, user_boundaries(lf, cfg), cfg, file)
    bounds = lf.select(
        pl.col(C.started_at).min().alias("first"), pl.col(C.started_at).max().alias("last")
    ).collect()
    first, last = bounds.item(0, "first"), bounds.item(0, "last")
    if first is None:
        raise DataContractError(file, C.started_at, "no interactions at all")
    first_day, last_day = first.date(), last.date()

    n_events = lf.select(pl.len()).collect().item()

    def day_at_share(share: float) -> dt.date:
        """The day of the earliest of the last ``ceil(share * events)`` events by time."""
        last = max(1, math.ceil(share * n_events))
        return lf.select(pl.col(C.started_at).top_k(last).min()).collect().item().date()

    label_start, test_start = cfg.resolve(first_day, last_day, day_at_share)

    gap = cfg.gap
    windowed = lf.select(C.user_id, C.started_at).with_columns(window_expr(label_start, test_start, gap))
    per_window = (
        windowed.group_by("window")
        .agg(pl.len().alias("rows"), pl.col(C.user_id).n_unique().alias("users"))
        .collect(engine="streaming")
    )
    counts = {row["window"]: row for row in per_window.to_dicts()}
    first_seen = lf.group_by(C.user_id).agg(pl.col(C.started_at).min().alias("first_seen"))
    # cold: no listen before the window's fitting data ends (with a gap, its start less the gap)
    seen = first_seen.select(
        (pl.col("first_seen") >= cut_before(test_start, gap)).sum().alias("test"),
        (
            (pl.col("first_seen") >= cut_before(label_start, gap))
            & (pl.col("first_seen") < cut_before(test_start, gap))
        )
        .sum()
        .alias("labels"),
    ).collect(engine="streaming")

    cold = {name: int(seen.item(0, name) or 0) for name in ("labels", "test")}
    summary = split_summary(first_day, last_day, label_start, test_start, counts, cold, file)
    if gap:
        summary["gap_minutes"] = cfg.gap_minutes
        summary["gap_rows"] = int(counts.get(GAP, {}).get("rows", 0))
    return summary


#: Where each user's windows begin under ``split.protocol: per_user`` (see :func:`user_boundaries`).
BOUNDARIES_FILE = "user_boundaries.parquet"


def user_boundaries(interactions: pl.LazyFrame, cfg: SplitConfig) -> pl.DataFrame:
    """Each user's boundaries under the per-user protocol, sorted by user: ``user_id``,
    ``label_start_at``, ``label_start_seq``, ``test_start_at``, ``test_start_seq``.

    Of a user's ``n`` listens in the order of ``(started_at, track_seq)``, the last
    ``ceil(test_start * n)`` are their test and the last ``ceil(label_start * n)`` their labels
    and test; a boundary is the ``(started_at, track_seq)`` of the first listen of its share, so
    the shares are exact even where many listens share a time (Last.fm 2k dates by the month).
    Every user with two listens has a history and a test listen.

    >>> import datetime as dt
    >>> from musicrec.config import SplitConfig
    >>> day = [dt.datetime(2022, 1, 1)] * 5 + [dt.datetime(2022, 1, d) for d in range(6, 11)]
    >>> lf = pl.LazyFrame({C.user_id: [7] * 10, C.started_at: day, C.track_seq: range(1, 11)})
    >>> user_boundaries(lf, SplitConfig(label_start="30%", test_start="10%", protocol="per_user")).row(0)
    (7, datetime.datetime(2022, 1, 8, 0, 0), 8, datetime.datetime(2022, 1, 10, 0, 0), 10)
    """
    n = pl.len()

    def first_of_last(share: float, column: str) -> pl.Expr:
        # the small epsilon keeps 100 * 7% at 7 listens (the product is 7.000000000000001)
        last = (n.cast(pl.Float64) * share - 1e-9).ceil().cast(pl.UInt32)
        return pl.col(column).sort_by(C.started_at, C.track_seq).gather(n - last).first()

    label, test = share_of(cfg.label_start), share_of(cfg.test_start)
    return (
        interactions.group_by(C.user_id)
        .agg(
            first_of_last(label, C.started_at).alias("label_start_at"),
            first_of_last(label, C.track_seq).alias("label_start_seq"),
            first_of_last(test, C.started_at).alias("test_start_at"),
            first_of_last(test, C.track_seq).alias("test_start_seq"),
        )
        .sort(C.user_id)
        .collect(engine="streaming")
    )


#: The columns :func:`user_boundaries` adds to each user's row.
_BOUNDARY_COLUMNS = ("label_start_at", "label_start_seq", "test_start_at", "test_start_seq")


def _from(boundary: str) -> pl.Expr:
    """Whether a listen comes at or after a user's ``label_start`` or ``test_start`` boundary
    (ordered by ``started_at``, then ``track_seq``)."""
    at, seq = pl.col(f"{boundary}_at"), pl.col(f"{boundary}_seq")
    ts = pl.col(C.started_at)
    return (ts > at) | ((ts == at) & (pl.col(C.track_seq) >= seq))


def per_user_split(interactions: pl.LazyFrame, boundaries: pl.DataFrame, cfg: SplitConfig, file: str) -> dict:
    """What ``split.json`` holds under the per-user protocol: each window's rows, users and first
    and last day (calendar days overlap across windows: each user has their own boundaries), and
    the users with no listen before their test (``cold_users``: a single listen, or all at one
    instant). An empty window is a :class:`~musicrec.schema.DataContractError`."""
    windows = Windows(dt.date.min, dt.date.min, per_user=boundaries.lazy())
    labelled = windows.with_window(interactions.select(C.user_id, C.started_at, C.track_seq))
    per_window = (
        labelled.group_by("window")
        .agg(
            pl.len().alias("rows"),
            pl.col(C.user_id).n_unique().alias("users"),
            pl.col(C.started_at).min().dt.date().alias("start"),
            pl.col(C.started_at).max().dt.date().alias("end"),
        )
        .collect(engine="streaming")
    )
    counts = {row["window"]: row for row in per_window.to_dicts()}
    has_history = labelled.filter(pl.col("window") == "history").select(C.user_id).unique()
    has_labels_before = labelled.filter(pl.col("window") != "test").select(C.user_id).unique()
    cold = {
        "labels": labelled.filter(pl.col("window") == "labels")
        .select(C.user_id)
        .unique()
        .join(has_history, on=C.user_id, how="anti"),
        "test": labelled.filter(pl.col("window") == "test")
        .select(C.user_id)
        .unique()
        .join(has_labels_before, on=C.user_id, how="anti"),
    }
    out = {}
    for name in WINDOWS:
        row = counts.get(name)
        if row is None:
            raise DataContractError(
                file,
                C.started_at,
                f"the per-user {name} window holds no interactions; raise split.label_start or "
                "split.test_start (shares of each user's listens) in the profile",
            )
        n_cold = cold[name].select(pl.len()).collect().item() if name in cold else 0
        out[name] = {
            "start": row["start"].isoformat(),
            "end": row["end"].isoformat(),
            "rows": int(row["rows"]),
            "users": int(row["users"]),
            "cold_users": int(n_cold),
            "warm_users": int(row["users"]) - int(n_cold),
        }
    return {
        "protocol": "per_user",
        "data_start": min(w["start"] for w in out.values()),
        "data_end": max(w["end"] for w in out.values()),
        "label_start": cfg.label_start,
        "test_start": cfg.test_start,
        "boundaries": BOUNDARIES_FILE,
        "windows": out,
    }


def split_summary(
    first_day: dt.date,
    last_day: dt.date,
    label_start: dt.date,
    test_start: dt.date,
    counts: dict[str, dict],
    cold: dict[str, int],
    file: str,
) -> dict:
    """What ``split.json`` holds, from each window's ``{"rows", "users"}`` counts and the number of
    users first seen in labels and in test (``cold``); an empty window is a
    :class:`~musicrec.schema.DataContractError` naming its dates and the profile key to move.
    Both engines' :func:`compute_split` end here."""
    ranges = {
        "history": (first_day, label_start - dt.timedelta(days=1)),
        "labels": (label_start, test_start - dt.timedelta(days=1)),
        "test": (test_start, last_day),
    }
    keys = {
        "history": "split.label_start",
        "labels": "split.test_start / split.label_start",
        "test": "split.test_start",
    }
    windows = {}
    for name in WINDOWS:
        start, end = ranges[name]
        row = counts.get(name, {"rows": 0, "users": 0})
        if row["rows"] == 0:
            raise DataContractError(
                file,
                C.started_at,
                f"the {name} window ({start} .. {end}) holds no interactions; "
                f"move {keys[name]} in the profile",
            )
        n_cold = cold.get(name, 0)
        windows[name] = {
            "start": start.isoformat(),
            "end": end.isoformat(),
            "rows": int(row["rows"]),
            "users": int(row["users"]),
            "cold_users": n_cold,
            "warm_users": int(row["users"]) - n_cold,
        }
    return {
        "data_start": first_day.isoformat(),
        "data_end": last_day.isoformat(),
        "label_start": label_start.isoformat(),
        "test_start": test_start.isoformat(),
        "windows": windows,
    }


def protocol_note(split: dict) -> str:
    """One Markdown sentence saying which protocol a ``split.json`` used, for the reports: the
    per-user one is labelled as such, with its price.

    >>> print(protocol_note({"protocol": "per_user", "label_start": "20%", "test_start": "10%"})[:65])
    **Per-user split**: each user's last 10% of listens is their test
    """
    if split.get("protocol") == "per_user":
        labels = share_of(split["label_start"]) - share_of(split["test_start"])
        return (
            f"**Per-user split**: each user's last {split['test_start']} of listens is their test and "
            f"the {labels:.0%} before it their labels, so every user with two listens is tested. "
            "Calendar time mixes across users (one user's test may come before another's history), "
            "so these numbers are not comparable with a global split's, and top-popular and the "
            "time features see listens from after some users' test."
        )
    note = (
        f"**Global time split**: history before {split['label_start']}, labels from it, test from "
        f"{split['test_start']} for every user: no model sees a listen from its target's future."
    )
    if split.get("gap_minutes"):
        note += (
            f" The {split['gap_minutes']} minutes before each boundary are left out of the window "
            f"after it ({split.get('gap_rows', 0):,} interactions: neither fitted on for it nor its "
            "targets), so that a session running across a boundary does not leak into it."
        )
    return note


def split_table(split: dict) -> pl.DataFrame:
    """The windows of a ``split.json`` as a small table for display."""
    return pl.DataFrame([{"window": name, **split["windows"][name]} for name in WINDOWS])


def midnight(day: dt.date) -> pl.Expr:
    """Midnight of ``day`` as a literal comparable with ``started_at``."""
    return pl.lit(day).cast(pl.Datetime("ns"))


def cut_before(day: dt.date, gap: dt.timedelta) -> pl.Expr:
    """``gap`` before midnight of ``day``, as a literal comparable with ``started_at``."""
    return pl.lit(dt.datetime.combine(day, dt.time()) - gap).cast(pl.Datetime("ns"))


def before(listens: pl.LazyFrame, day: dt.date, gap: dt.timedelta = dt.timedelta(0)) -> pl.LazyFrame:
    """The listens strictly before midnight of ``day`` (less ``gap``)."""
    return listens.filter(pl.col(C.started_at) < cut_before(day, gap))


@dataclass(frozen=True)
class Windows:
    """``split.json`` read once: the two boundaries and the listens of each window.

    The fitting windows are ``history`` (before ``label_start``) and ``history+labels``
    (before ``test_start``); the target windows are ``labels`` and ``test``. With
    ``disliked`` (``user_id, track_id, disliked_at``: sources with dislikes, Yambda) each
    window leaves out the pairs disliked before its end, and only those: what a user
    disliked later was still a positive then, and a window must not know the future.

    Under the per-user protocol ``per_user`` holds each user's boundaries
    (:func:`user_boundaries`) and the windows cut each user's listens at their own; the
    dates then both stand for the day after the data's end (the end of the latest user's
    windows), which is what the features measure ages from.

    >>> w = Windows(dt.date(2022, 12, 1), dt.date(2022, 12, 16))
    >>> w.fit_end("history"), w.bounds("test")
    (datetime.date(2022, 12, 1), (datetime.date(2022, 12, 16), None))
    """

    label_start: dt.date
    test_start: dt.date
    record: dict = field(default_factory=dict, compare=False)  # the whole file, for tables
    disliked: pl.LazyFrame | None = field(default=None, compare=False, repr=False)
    per_user: pl.LazyFrame | None = field(default=None, compare=False, repr=False)
    gap: dt.timedelta = dt.timedelta(0)  # before each boundary, left out of the window after it

    @classmethod
    def read(cls, path: str | Path, disliked: pl.LazyFrame | None = None) -> Windows:
        """The windows of a ``split.json`` (and of the per-user boundaries beside it, under that
        protocol); a clear error when either is missing (the data stage writes both)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no split; run the data stage first (make data)")
        record = json.loads(path.read_text())
        if record.get("protocol") == "per_user":
            boundaries = path.parent / record.get("boundaries", BOUNDARIES_FILE)
            if not boundaries.is_file():
                raise FileNotFoundError(
                    f"{boundaries}: the per-user boundaries that {path} names are missing; "
                    "run the data stage again (make data)"
                )
            after_end = dt.date.fromisoformat(record["data_end"]) + dt.timedelta(days=1)
            return cls(after_end, after_end, record, disliked, pl.scan_parquet(boundaries))
        return cls(
            dt.date.fromisoformat(record["label_start"]),
            dt.date.fromisoformat(record["test_start"]),
            record,
            disliked,
            gap=dt.timedelta(minutes=record.get("gap_minutes", 0)),
        )

    @property
    def protocol(self) -> str:
        """``global`` or ``per_user`` (see :class:`musicrec.config.SplitConfig`)."""
        return "global" if self.per_user is None else "per_user"

    def fit_end(self, window: str) -> dt.date:
        """The end (exclusive) of a fitting window: ``history`` or ``history+labels``."""
        ends = {"history": self.label_start, "history+labels": self.test_start}
        if window not in ends:
            raise ValueError(f"fitting window must be 'history' or 'history+labels', got {window!r}")
        return ends[window]

    def bounds(self, window: str) -> tuple[dt.date, dt.date | None]:
        """``(start, end)`` of a target window, ``labels`` or ``test`` (end exclusive; None: open).
        The global protocol's only: per-user windows have no common dates."""
        spans = {"labels": (self.label_start, self.test_start), "test": (self.test_start, None)}
        if window not in spans:
            raise ValueError(f"window must be 'labels' or 'test', got {window!r}")
        if self.per_user is not None:
            raise ValueError(f"the per-user protocol's {window} window has no common dates")
        return spans[window]

    def fit_listens(self, listens: pl.LazyFrame, window: str) -> pl.LazyFrame:
        """The listens a fitting window holds (in their order)."""
        end = self.fit_end(window)
        if self.per_user is not None:
            inside = self._per_user_filter(
                listens, ~_from("label_start" if window == "history" else "test_start")
            )
        else:
            inside = before(listens, end, self.gap)
        return self._without_disliked(inside, end)

    def target_listens(self, listens: pl.LazyFrame, window: str) -> pl.LazyFrame:
        """The listens inside a target window (in their order)."""
        if window not in ("labels", "test"):
            raise ValueError(f"window must be 'labels' or 'test', got {window!r}")
        if self.per_user is not None:
            inside = self._per_user_filter(
                listens,
                _from("label_start") & ~_from("test_start") if window == "labels" else _from("test_start"),
            )
            return self._without_disliked(inside, None if window == "test" else self.test_start)
        start, end = self.bounds(window)
        inside = listens.filter(pl.col(C.started_at) >= midnight(start))
        return self._without_disliked(inside if end is None else before(inside, end, self.gap), end)

    def users_before(self, listens: pl.LazyFrame, window: str) -> pl.LazyFrame:
        """``user_id`` (unique) of the users with a listen before the target ``window`` (its warm
        users; dislikes do not matter here)."""
        if window not in ("labels", "test"):
            raise ValueError(f"window must be 'labels' or 'test', got {window!r}")
        if self.per_user is not None:
            seen = self._per_user_filter(
                listens, ~_from("label_start" if window == "labels" else "test_start")
            )
        else:
            seen = before(listens, self.bounds(window)[0], self.gap)
        return seen.select(C.user_id).unique()

    def with_window(self, listens: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame | pl.DataFrame:
        """``listens`` with a ``window`` column: ``history``, ``labels`` or ``test``."""
        if self.per_user is None:
            return listens.with_columns(window_expr(self.label_start, self.test_start, self.gap))
        label = (
            pl.when(~_from("label_start"))
            .then(pl.lit("history"))
            .when(~_from("test_start"))
            .then(pl.lit("labels"))
            .otherwise(pl.lit("test"))
            .alias("window")
        )
        lazy = listens.lazy() if isinstance(listens, pl.DataFrame) else listens
        out = self._joined(lazy).with_columns(label).drop(_BOUNDARY_COLUMNS)
        return out.collect() if isinstance(listens, pl.DataFrame) else out

    def _joined(self, listens: pl.LazyFrame) -> pl.LazyFrame:
        """``listens`` with their user's per-user boundaries (every user has them)."""
        schema = listens.collect_schema()
        if C.track_seq not in schema:
            raise ValueError(
                "per-user windows order a user's listens by started_at, then track_seq: "
                f"the listens have no {C.track_seq} column (columns: {', '.join(schema)})"
            )
        bounds = self.per_user.with_columns(pl.col(C.user_id).cast(schema[C.user_id]))
        return listens.join(bounds, on=C.user_id, how="inner", maintain_order="left")

    def _per_user_filter(self, listens: pl.LazyFrame, keep: pl.Expr) -> pl.LazyFrame:
        return self._joined(listens).filter(keep).drop(_BOUNDARY_COLUMNS)

    def disliked_before(self, end: dt.date | None) -> pl.LazyFrame | None:
        """``user_id, track_id`` of the pairs disliked before midnight of ``end`` (less the gap, if
        any; None: by the data's end); None when the source has no dislikes."""
        if self.disliked is None:
            return None
        disliked = (
            self.disliked
            if end is None
            else self.disliked.filter(pl.col("disliked_at") < cut_before(end, self.gap))
        )
        return disliked.select(C.user_id, C.track_id)

    def _without_disliked(self, listens: pl.LazyFrame, end: dt.date | None) -> pl.LazyFrame:
        """``listens`` less the pairs disliked before ``end`` (None: by the data's end)."""
        disliked = self.disliked_before(end)
        if disliked is None:
            return listens
        schema = listens.collect_schema()
        keys = [C.user_id, C.track_id]
        disliked = disliked.select(pl.col(k).cast(schema[k]) for k in keys)
        return listens.join(disliked, on=keys, how="anti", maintain_order="left")
