"""Readable names for ids, from ``catalog_names``: what makes a sample list readable."""

from __future__ import annotations

import polars as pl

from musicrec.io import RunPaths
from musicrec.schema import C


def with_names(frame: pl.DataFrame, paths: RunPaths, column: str = C.track_id) -> pl.DataFrame:
    """Add ``track`` (the track's name) and ``artist`` (its artists' names) beside ``column``."""
    names = pl.scan_parquet(paths.catalog_names)
    ids = frame.select(pl.col(column).unique()).to_series().implode()
    track_names = names.filter((pl.col(C.type) == "track") & pl.col(C.id).is_in(ids)).select(
        pl.col(C.id).alias(column), pl.col(C.name).alias("track")
    )
    artists = (
        pl.scan_parquet(paths.tracks)
        .filter(pl.col(C.track_id).is_in(ids))
        .select(pl.col(C.track_id).alias(column), C.artists)
        .explode(C.artists)
        .join(
            names.filter(pl.col(C.type) == "artist").select(C.id, C.name),
            left_on=C.artists,
            right_on=C.id,
            how="left",
        )
        .group_by(column)
        .agg(pl.col(C.name).drop_nulls().str.join(", ").alias("artist"))
    )
    return (
        frame.lazy()
        .with_row_index("_order")
        .join(track_names, on=column, how="left")
        .join(artists, on=column, how="left")
        .sort("_order")
        .drop("_order")
        .collect()
    )
