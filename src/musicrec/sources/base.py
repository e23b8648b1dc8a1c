"""What every adapter returns, and helpers the adapters share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from musicrec.schema import C, DropReport

#: The largest canonical id (ids are int32).
INT32_MAX = 2**31 - 1
#: An empty list of int32 ids, for tracks without albums, artists or genres.
EMPTY_IDS = pl.lit([], dtype=pl.List(pl.Int32))


@dataclass
class SourceData:
    """A source in canonical form, before the contract checks.

    ``interactions`` has ``user_id``, ``track_id``, ``started_at`` and ``weight``
    (``track_seq`` is numbered by the contract checks when absent), one row per
    (user, track) pair. A source too big for memory gives a lazy frame (with
    ``track_seq``), which is checked and written by streaming. ``extra`` holds further
    tables worth keeping beside the data, such as id maps (written as ``data/<run>/<name>.parquet``).
    """

    interactions: pl.DataFrame | pl.LazyFrame
    tracks: pl.DataFrame
    catalog_names: pl.DataFrame
    track_features: pl.DataFrame | None = None
    dropped: DropReport = field(default_factory=DropReport)
    extra: dict[str, pl.DataFrame | pl.LazyFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class SourceError(FileNotFoundError):
    """A raw source folder or file that is missing; the message says what to do."""


def require_files(folder: Path, source: str, *names: str) -> None:
    """Stop with a clear message when the raw folder or one of its files is missing."""
    if folder.is_file():
        raise SourceError(
            f"{source}: DATA_PATH={folder} is a file; DATA_PATH names the folder that holds the "
            f"{source} files (here: {folder.parent})"
        )
    if not folder.is_dir():
        raise SourceError(
            f"{source}: raw data folder {folder} does not exist. Put the {source} files there "
            f"or pass DATA_PATH=... to make (for example DATA_PATH=../shared/data/...)."
        )
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise SourceError(
            f"{source}: {folder} lacks {', '.join(missing)}; found {sorted(p.name for p in folder.iterdir())}"
        )


def dense_ids(values: pl.Series, name: str) -> pl.DataFrame:
    """Map arbitrary (string) ids to int32 ids 1..n in sorted order; the frame is the map."""
    unique = values.drop_nulls().unique().sort()
    return pl.DataFrame(
        {"source_id": unique, name: pl.int_range(1, unique.len() + 1, eager=True).cast(pl.Int32)}
    )


def names_frame(ids: pl.Series, names: pl.Series, kind: str) -> pl.DataFrame:
    """Rows of ``catalog_names`` for one type."""
    return pl.DataFrame({C.id: ids.cast(pl.Int32), C.type: kind, C.name: names.cast(pl.Utf8)})


def aggregate_pairs(events: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """One row per (user, track): first time, summed weight."""
    return events.group_by([C.user_id, C.track_id]).agg(
        pl.col(C.started_at).min(), pl.col(C.weight).sum().cast(pl.Float32)
    )
