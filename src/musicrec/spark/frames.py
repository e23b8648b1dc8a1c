"""Reading and writing artefacts on Spark, in the same schemas as the local engine.

Times: polars writes ``started_at`` as parquet ``TIMESTAMP(NANOS)``, which Spark reads as its
int64 nanoseconds (``spark.sql.legacy.parquet.nanosAsLong``, set by the session). The Spark
paths keep that integer as :data:`STARTED_NS` and compare it with the nanoseconds of midnight
of a boundary day: exact, and independent of time zones (the times are naive, as in polars).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from musicrec.io import atomic_path
from musicrec.schema import C

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: Column of the Spark interactions frames: ``started_at`` as int64 nanoseconds since 1970-01-01.
STARTED_NS = "started_ns"
_EPOCH = dt.datetime(1970, 1, 1)


def day_ns(day: dt.date) -> int:
    """Nanoseconds from 1970-01-01 to midnight of ``day`` (naive, like ``started_at``).

    >>> day_ns(dt.date(1970, 1, 2))
    86400000000000
    """
    delta = dt.datetime.combine(day, dt.time()) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000


def ns_date(ns: int) -> dt.date:
    """The calendar day of a :data:`STARTED_NS` value.

    >>> ns_date(86_400 * 10**9 + 1)
    datetime.date(1970, 1, 2)
    """
    return (_EPOCH + dt.timedelta(seconds=ns // 1_000_000_000)).date()


def read_interactions(spark: SparkSession, path: str | Path) -> DataFrame:
    """The interactions parquet (file or folder) with ``started_at`` replaced by :data:`STARTED_NS`.

    A ``started_at`` Spark reads as a timestamp (a file written in micro- or milliseconds) is
    converted to nanoseconds as well.
    """
    frame = spark.read.parquet(str(path))
    return frame.withColumn(STARTED_NS, nanoseconds(frame, C.started_at)).drop(C.started_at)


def nanoseconds(frame: DataFrame, column: str):
    """``column`` of ``frame`` (a time Spark reads as long nanoseconds or as a timestamp) as long
    nanoseconds from 1970-01-01, comparable with :func:`day_ns`."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    if isinstance(frame.schema[column].dataType, LongType):
        return F.col(column).cast("long")
    return (F.unix_micros(F.col(column).cast("timestamp")) * F.lit(1000)).cast("long")


def to_polars(frame: DataFrame) -> pl.DataFrame:
    """Collect a (small) Spark frame to the driver as polars, through Arrow."""
    if hasattr(frame, "toArrow"):  # pyspark >= 4.0
        return pl.from_arrow(frame.toArrow())
    return pl.from_pandas(frame.toPandas())


def from_polars(spark: SparkSession, frame: pl.DataFrame) -> DataFrame:
    """A polars frame (small, built on the driver) as a Spark frame."""
    return spark.createDataFrame(frame.to_pandas())


def write_large(frame: DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as a parquet folder of part files, atomically: written beside ``path`` and
    renamed into place on success (a failed write leaves the previous folder or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
    try:
        frame.write.mode("overwrite").parquet(str(tmp))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_frame(frame: DataFrame, path: str | Path, schema: dict, single_file: bool = True) -> Path:
    """Write a Spark frame in one of the artefacts' polars ``schema``: a single parquet file
    (Spark's parts streamed into one by polars, cast to ``schema``) or, with
    ``single_file=False``, a folder of parts (:func:`write_large`); atomically. An integer
    column where ``schema`` has a time (a :data:`STARTED_NS`-like value) becomes that time."""
    path = Path(path)
    if not single_file:
        return write_large(frame, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".parts", dir=path.parent))
    try:
        frame.write.mode("overwrite").parquet(str(parts))
        files = sorted(parts.glob("*.parquet"))
        lazy = pl.scan_parquet(files) if files else pl.LazyFrame(schema=schema)
        found = lazy.collect_schema()
        times = [
            pl.col(c).cast(pl.Datetime("ns"))
            for c, dtype in schema.items()
            if isinstance(dtype, pl.Datetime) and c in found and found[c].is_integer()
        ]
        with atomic_path(path) as tmp:
            lazy.with_columns(times).select(list(schema)).cast(schema).sink_parquet(
                tmp, compression="zstd", statistics=True
            )
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    return path
