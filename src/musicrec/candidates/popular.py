"""Top-popular: tracks ranked by distinct listeners over the last days of the window."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from musicrec.candidates.base import GLOBAL_SCHEMA
from musicrec.schema import C


def top_popular(
    interactions: pl.DataFrame | pl.LazyFrame, n: int = 100, days: int | None = None
) -> pl.DataFrame:
    """The ``n`` tracks with the most distinct listeners, over the last ``days`` of the window.

    ``score`` is the number of distinct listeners; ties are broken by track id so the
    list is deterministic. ``days=None`` uses the whole window.

    >>> import datetime as dt
    >>> frame = pl.DataFrame({"user_id": [1, 2, 2], "track_id": [7, 7, 8],
    ...                       "started_at": [dt.datetime(2022, 1, 1)] * 3})
    >>> top_popular(frame, n=2)["track_id"].to_list()
    [7, 8]
    """
    lf = interactions.lazy()
    if days is not None:
        end = lf.select(pl.col(C.started_at).max()).collect().item()
        start = dt.datetime.combine(end.date() - dt.timedelta(days=days - 1), dt.time())
        lf = lf.filter(pl.col(C.started_at) >= start)
    return (
        lf.group_by(C.track_id)
        .agg(pl.col(C.user_id).n_unique().alias(C.score))
        .sort([C.score, C.track_id], descending=[True, False])
        .head(n)
        .with_columns(pl.int_range(1, pl.len() + 1).alias(C.rank))
        .collect()
        .cast(GLOBAL_SCHEMA)
    )


def top_popular_of_matrix(track_ids: np.ndarray, listeners: np.ndarray, n: int = 100) -> pl.DataFrame:
    """:func:`top_popular` over a whole window from its distinct listeners per track
    (:meth:`musicrec.candidates.base.FitData.listeners`, tracks with none left out): the same
    list without a group-by of the window's listens (some 20 s at full scale)."""
    heard = listeners > 0
    frame = pl.DataFrame({C.track_id: track_ids[heard], C.score: listeners[heard]})
    return (
        frame.sort([C.score, C.track_id], descending=[True, False])
        .head(n)
        .with_columns(pl.int_range(1, pl.len() + 1).alias(C.rank))
        .cast(GLOBAL_SCHEMA)
    )


def listeners_per_track(interactions: pl.DataFrame) -> pl.DataFrame:
    """Distinct listeners of each track, most listened first."""
    return (
        interactions.group_by(C.track_id)
        .agg(pl.col(C.user_id).n_unique().alias("listeners"))
        .sort(["listeners", C.track_id], descending=[True, False])
    )
