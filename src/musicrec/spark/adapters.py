"""The Yandex Music adapter on Spark (``engine: spark``, ``data.source: yandex``).

The interactions file (222M rows as published; any size here) is read, checked against the data
contract (:mod:`musicrec.spark.contract`: the local engine's errors) and written to
``data/<run>/interactions.parquet`` by Spark, in the canonical schema; the tracks and catalog
names (1M tracks) are read and checked on the driver, as the local adapter does. The checks run
in the local adapter's order, with its file names: the columns and types of
``interactions.parquet`` first, then the catalogue's files, then the contract on the
interactions under the data stage's label.

Two cases stay on the local engine, which the data summary's notes say: ``yandex.unique_pairs:
false`` (repeats merged) and a file without ``track_seq`` (numbered in memory): both need the
local adapter's sort of every listen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from musicrec.schema import INTERACTIONS_SCHEMA, C, validate_catalog_names, validate_tracks
from musicrec.sources import yandex
from musicrec.sources.base import require_files
from musicrec.spark.contract import check_schema, validate_interactions
from musicrec.spark.frames import write_frame

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from musicrec.config import YandexConfig

#: The sources whose adapter runs on Spark.
SOURCES = ("yandex",)


def local_reason(folder: Path, options: YandexConfig, spark: SparkSession) -> str | None:
    """Why this Yandex folder is adapted on the local engine, or ``None`` (on Spark)."""
    if not options.unique_pairs:
        return "yandex.unique_pairs is false: repeats are merged by the local adapter"
    path = folder / yandex.INTERACTIONS_FILE
    frame, _ = check_schema(spark, path, path.name, optional=(C.track_seq, C.weight))
    if C.track_seq not in frame.columns:
        return "the interactions have no track_seq: the local adapter numbers them"
    return None


def adapt_yandex(spark: SparkSession, folder: Path, label: str, out: dict[str, Path]) -> set[Path]:
    """Check and write the Yandex files of ``folder`` on Spark: ``out`` maps ``interactions``,
    ``tracks`` and ``catalog_names`` to their paths; errors name ``label`` as the data stage's do.
    Returns the files written."""
    from musicrec.io import write_parquet

    tracks, names = yandex.read_catalog(folder)
    tracks = validate_tracks(tracks, file=f"{label} (tracks)")
    names = validate_catalog_names(names, file=f"{label} (catalog names)")
    checked = validate_interactions(
        spark,
        folder / yandex.INTERACTIONS_FILE,
        tracks.get_column(C.track_id),
        file=f"{label} (interactions)",
    )
    return {
        write_frame(checked, out["interactions"], INTERACTIONS_SCHEMA),
        write_parquet(tracks, out["tracks"]),
        write_parquet(names, out["catalog_names"]),
    }


def require(folder: Path) -> None:
    """The Yandex files are there (the local adapter's message otherwise)."""
    require_files(folder, yandex.SOURCE, yandex.TRACKS_FILE, yandex.NAMES_FILE, yandex.INTERACTIONS_FILE)
