"""Adapter for the Yandex Music files as published (the canonical format itself).

The three parquet files already have the canonical shape, so the adapter only
checks the columns, normalises dtypes and adds ``weight = 1.0``. The
interactions file has 222M rows: it is scanned lazily, only the needed columns
are read, and no pandas or Python-level loop touches it. The published
``track_seq`` is kept (cast to int16) so the contract checks need not renumber
222M rows.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from musicrec.config import YandexConfig
from musicrec.schema import (
    CATALOG_NAMES_SCHEMA,
    INTERACTIONS_SCHEMA,
    TRACKS_SCHEMA,
    C,
    DataContractError,
    DropReport,
    check_columns,
    check_lazy_types,
    validate_catalog_names,
    validate_tracks,
)
from musicrec.sources.base import SourceData, aggregate_pairs, require_files

SOURCE = "yandex"
INTERACTIONS_FILE = "interactions.parquet"
TRACKS_FILE = "tracks.parquet"
NAMES_FILE = "catalog_names.parquet"


def load(folder: Path, options: YandexConfig) -> SourceData:
    """Read the three Yandex Music parquet files into canonical frames.

    Parameters
    ----------
    folder
        Folder holding ``tracks.parquet``, ``catalog_names.parquet`` and
        ``interactions.parquet``.
    options
        ``unique_pairs``: the source promises each (user, track) pair once (as
        published). When false, repeats are merged by
        :func:`~musicrec.sources.base.aggregate_pairs` and counted in ``dropped``.

    Returns
    -------
    SourceData
        Interactions as a lazy frame (checked and written by streaming) with
        ``weight = 1.0`` (the data records a listen, not its strength); tracks with no
        artist or genre are kept (the data stage counts them).
    """
    folder = Path(folder)
    require_files(folder, SOURCE, TRACKS_FILE, NAMES_FILE, INTERACTIONS_FILE)
    dropped = DropReport()

    interactions = _read_interactions(folder / INTERACTIONS_FILE)
    if not options.unique_pairs:
        before = interactions.select(pl.len()).collect().item()
        pairs = interactions.drop(C.track_seq, strict=False)
        interactions = aggregate_pairs(pairs).collect(engine="streaming")
        dropped.add(
            f"{INTERACTIONS_FILE}: repeat rows of a (user, track) pair merged (first time, summed weight)",
            before - interactions.height,
        )
    elif C.track_seq not in interactions.collect_schema():
        # without the published numbering, the checks number listens in memory
        interactions = interactions.collect()

    tracks, names = read_catalog(folder)
    return SourceData(interactions=interactions, tracks=tracks, catalog_names=names, dropped=dropped)


def read_catalog(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The tracks and catalog names files, checked (on the driver on either engine: at the
    published size 1M tracks and their names)."""
    tracks = _scan(folder / TRACKS_FILE, TRACKS_SCHEMA).select(list(TRACKS_SCHEMA)).collect()
    tracks = validate_tracks(tracks, TRACKS_FILE)
    names = _scan(folder / NAMES_FILE, CATALOG_NAMES_SCHEMA).select(list(CATALOG_NAMES_SCHEMA))
    names = names.with_columns(pl.col(C.name).cast(pl.Utf8)).collect()
    return tracks, validate_catalog_names(names, NAMES_FILE)


def _scan(path: Path, expected: dict[str, pl.DataType], optional: tuple[str, ...] = ()) -> pl.LazyFrame:
    """Scan a parquet file lazily and check its columns from the footer alone."""
    try:
        frame = pl.scan_parquet(path)
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataContractError(path.name, None, f"not a readable parquet file ({exc})") from None
    check_columns(pl.DataFrame(schema=schema), expected, path.name, optional=optional)
    return frame


def _read_interactions(path: Path) -> pl.LazyFrame:
    """The canonical columns, lazily: 222M rows are checked and written by streaming.

    Types are checked here from the file's footer, so a wrong type stops the load at
    once; the remaining checks run in :func:`musicrec.schema.validate_interactions_lazy`.
    """
    frame = _scan(path, INTERACTIONS_SCHEMA, optional=(C.track_seq, C.weight))
    check_lazy_types(frame, path.name)
    schema = frame.collect_schema()
    seq = [pl.col(C.track_seq).cast(pl.Int16)] if C.track_seq in schema else []
    return frame.select(
        pl.col(C.user_id).cast(pl.Int32),
        pl.col(C.track_id).cast(pl.Int32),
        pl.col(C.started_at).cast(INTERACTIONS_SCHEMA[C.started_at]),
        *seq,
        pl.lit(1.0, dtype=pl.Float32).alias(C.weight),
    )
