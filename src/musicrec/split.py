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

from musicrec.config import SplitConfig
from musicrec.schema import C, DataContractError

WINDOWS = ("history", "labels", "test")


def window_expr(label_start: dt.date, test_start: dt.date) -> pl.Expr:
    """``history``/``labels``/``test`` for each row, from its ``started_at``."""
    ts = pl.col(C.started_at)
    return (
        pl.when(ts < pl.lit(label_start).cast(pl.Datetime("ns")))
        .then(pl.lit("history"))
        .when(ts < pl.lit(test_start).cast(pl.Datetime("ns")))
        .then(pl.lit("labels"))
        .otherwise(pl.lit("test"))
        .alias("window")
    )


def compute_split(
    interactions: str | Path | pl.LazyFrame, cfg: SplitConfig, file: str = "interactions.parquet"
) -> dict:
    """Resolve the boundaries and count rows and users per window.

    An empty window is a :class:`~musicrec.schema.DataContractError` naming the
    window, its dates and the profile key to move.
    """
    lf = pl.scan_parquet(interactions) if not isinstance(interactions, pl.LazyFrame) else interactions
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

    windowed = lf.select(C.user_id, C.started_at).with_columns(window_expr(label_start, test_start))
    per_window = (
        windowed.group_by("window")
        .agg(pl.len().alias("rows"), pl.col(C.user_id).n_unique().alias("users"))
        .collect(engine="streaming")
    )
    counts = {row["window"]: row for row in per_window.to_dicts()}
    first_seen = lf.group_by(C.user_id).agg(pl.col(C.started_at).min().alias("first_seen"))
    seen = first_seen.select(
        (pl.col("first_seen") >= pl.lit(test_start).cast(pl.Datetime("ns"))).sum().alias("test"),
        (
            (pl.col("first_seen") >= pl.lit(label_start).cast(pl.Datetime("ns")))
            & (pl.col("first_seen") < pl.lit(test_start).cast(pl.Datetime("ns")))
        )
        .sum()
        .alias("labels"),
    ).collect(engine="streaming")

    cold = {name: int(seen.item(0, name) or 0) for name in ("labels", "test")}
    return split_summary(first_day, last_day, label_start, test_start, counts, cold, file)


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


def split_table(split: dict) -> pl.DataFrame:
    """The windows of a ``split.json`` as a small table for display."""
    return pl.DataFrame([{"window": name, **split["windows"][name]} for name in WINDOWS])


def midnight(day: dt.date) -> pl.Expr:
    """Midnight of ``day`` as a literal comparable with ``started_at``."""
    return pl.lit(day).cast(pl.Datetime("ns"))


def before(listens: pl.LazyFrame, day: dt.date) -> pl.LazyFrame:
    """The listens strictly before midnight of ``day``."""
    return listens.filter(pl.col(C.started_at) < midnight(day))


@dataclass(frozen=True)
class Windows:
    """``split.json`` read once: the two boundaries and the listens of each window.

    The fitting windows are ``history`` (before ``label_start``) and ``history+labels``
    (before ``test_start``); the target windows are ``labels`` and ``test``. With
    ``disliked`` (``user_id, track_id, disliked_at``: sources with dislikes, Yambda) each
    window leaves out the pairs disliked before its end, and only those: what a user
    disliked later was still a positive then, and a window must not know the future.

    >>> w = Windows(dt.date(2022, 12, 1), dt.date(2022, 12, 16))
    >>> w.fit_end("history"), w.bounds("test")
    (datetime.date(2022, 12, 1), (datetime.date(2022, 12, 16), None))
    """

    label_start: dt.date
    test_start: dt.date
    record: dict = field(default_factory=dict, compare=False)  # the whole file, for tables
    disliked: pl.LazyFrame | None = field(default=None, compare=False, repr=False)

    @classmethod
    def read(cls, path: str | Path, disliked: pl.LazyFrame | None = None) -> Windows:
        """The windows of a ``split.json``; a clear error when it is missing (the data stage writes it)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no split; run the data stage first (make data)")
        record = json.loads(path.read_text())
        return cls(
            dt.date.fromisoformat(record["label_start"]),
            dt.date.fromisoformat(record["test_start"]),
            record,
            disliked,
        )

    def fit_end(self, window: str) -> dt.date:
        """The end (exclusive) of a fitting window: ``history`` or ``history+labels``."""
        ends = {"history": self.label_start, "history+labels": self.test_start}
        if window not in ends:
            raise ValueError(f"fitting window must be 'history' or 'history+labels', got {window!r}")
        return ends[window]

    def bounds(self, window: str) -> tuple[dt.date, dt.date | None]:
        """``(start, end)`` of a target window, ``labels`` or ``test`` (end exclusive; None: open)."""
        spans = {"labels": (self.label_start, self.test_start), "test": (self.test_start, None)}
        if window not in spans:
            raise ValueError(f"window must be 'labels' or 'test', got {window!r}")
        return spans[window]

    def fit_listens(self, listens: pl.LazyFrame, window: str) -> pl.LazyFrame:
        """The listens a fitting window holds (in their order)."""
        end = self.fit_end(window)
        return self._without_disliked(before(listens, end), end)

    def target_listens(self, listens: pl.LazyFrame, window: str) -> pl.LazyFrame:
        """The listens inside a target window (in their order)."""
        start, end = self.bounds(window)
        inside = listens.filter(pl.col(C.started_at) >= midnight(start))
        return self._without_disliked(inside if end is None else before(inside, end), end)

    def disliked_before(self, end: dt.date | None) -> pl.LazyFrame | None:
        """``user_id, track_id`` of the pairs disliked before midnight of ``end`` (None: by the
        data's end); None when the source has no dislikes."""
        if self.disliked is None:
            return None
        disliked = (
            self.disliked if end is None else self.disliked.filter(pl.col("disliked_at") < midnight(end))
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
