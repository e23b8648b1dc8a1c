"""The data contract's interactions checks on Spark, for sources too big for one machine.

:func:`validate_interactions` runs the checks of :func:`musicrec.schema.validate_interactions_lazy`
in the same order and raises the same :class:`~musicrec.schema.DataContractError` (file, column
and problem; a test holds them equal): the columns and their types from the files' footers, then
one pass of Spark aggregates for nulls and ranges, the dates after :func:`latest_plausible`,
track ids missing from the tracks table (an anti join against their broadcast ids) and repeated
(user, track) pairs (a group-by). Only counts and a few example rows reach the driver. The
examples are offending rows as Spark finds them, without the local error's row numbers (a
distributed read has no global row order).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from musicrec.schema import (
    INTERACTION_LIMITS,
    INTERACTIONS_SCHEMA,
    N_EXAMPLES,
    C,
    DataContractError,
    check_columns,
    future_problem,
    latest_plausible,
    repeated_pairs_problem,
    stats_problem,
    type_problem,
    unknown_tracks_problem,
)
from musicrec.spark.frames import day_ns, nanoseconds, to_polars

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: The columns whose nulls are an error, in the order the local checks look at them.
NOT_NULL = (C.user_id, C.track_id, C.started_at)


def file_schema(path: str | Path) -> pl.Schema:
    """The polars schema of a parquet file or folder of parts, from the footers alone (what
    ``pl.scan_parquet(path).collect_schema()`` gives for a file)."""
    import pyarrow.dataset as ds

    try:
        schema = ds.dataset(str(path), format="parquet").schema
    except (OSError, ValueError) as exc:
        raise DataContractError(Path(str(path)).name, None, f"not a readable parquet file ({exc})") from None
    return pl.from_arrow(schema.empty_table()).schema


def datetime_ns(moment: dt.datetime) -> int:
    """Nanoseconds from 1970-01-01 to a naive ``moment`` (as :func:`musicrec.spark.frames.day_ns`).

    >>> datetime_ns(dt.datetime(1970, 1, 1, 0, 0, 1, 5))
    1000005000
    """
    midnight = dt.datetime.combine(moment.date(), dt.time())
    return day_ns(moment.date()) + (moment - midnight) // dt.timedelta(microseconds=1) * 1000


def _after(frame: DataFrame, moment: dt.datetime):
    """``started_at`` later than ``moment``: compared in nanoseconds where Spark reads them as
    integers, else in microseconds (nanoseconds of dates past 2262 overflow a long)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    if isinstance(frame.schema[C.started_at].dataType, LongType):
        return nanoseconds(frame, C.started_at) > F.lit(datetime_ns(moment))
    return F.unix_micros(F.col(C.started_at).cast("timestamp")) > F.lit(datetime_ns(moment) // 1000)


def _examples(rows: DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """A few rows, with times as the file has them (Spark reads parquet nanoseconds as integers)."""
    shown = to_polars(rows.limit(N_EXAMPLES))
    kind = schema.get(C.started_at)
    if (
        C.started_at in shown.columns
        and isinstance(kind, pl.Datetime)
        and shown.schema[C.started_at].is_integer()
    ):
        shown = shown.with_columns(pl.col(C.started_at).cast(pl.Datetime("ns")).cast(kind))
    return shown


def check_schema(
    spark: SparkSession, path: str | Path, file: str, optional: tuple[str, ...] = (C.weight,)
) -> tuple[DataFrame, pl.Schema]:
    """The interactions' columns (all of the contract's but ``optional``) and their types, from the
    footers, as :func:`musicrec.schema.check_columns` and :func:`~musicrec.schema.type_problem`
    name them; returns the file as Spark reads it and its polars schema."""
    schema = file_schema(path)
    check_columns(pl.DataFrame(schema=schema), INTERACTIONS_SCHEMA, file, optional=optional)
    frame = spark.read.parquet(str(path))
    problem = type_problem(schema)
    if problem is not None:
        column, text = problem
        raise DataContractError(file, column, text, _examples(frame.select(column), schema))
    return frame, schema


def validate_interactions(
    spark: SparkSession,
    path: str | Path,
    track_ids: pl.Series,
    file: str = "interactions.parquet",
    unique_pairs: bool = True,
) -> DataFrame:
    """The interactions at ``path`` checked against the contract on Spark; returns them with the
    canonical columns (ids int, ``track_seq`` short, ``weight`` float, 1.0 when absent;
    ``started_at`` as Spark read it). ``track_ids``: the tracks table's ids."""
    from pyspark.sql import functions as F

    frame, schema = check_schema(spark, path, file)
    if C.weight not in frame.columns:
        frame = frame.withColumn(C.weight, F.lit(1.0).cast("float"))

    stats = frame.agg(
        *[F.sum(F.col(c).isNull().cast("long")).alias(f"{c}_nulls") for c in NOT_NULL],
        *[F.min(c).alias(f"{c}_min") for c in INTERACTION_LIMITS],
        *[F.max(c).alias(f"{c}_max") for c in INTERACTION_LIMITS],
    ).first()
    counts = {
        k: (v or 0) if k.endswith("_nulls") else v for k, v in stats.asDict().items()
    }  # sum(): null on none
    found = stats_problem(counts, NOT_NULL, INTERACTION_LIMITS)
    if found is not None:
        column, text, bounds = found
        bad = F.col(column).isNull() if bounds is None else ~F.col(column).between(*bounds)
        raise DataContractError(file, column, text, _examples(frame.filter(bad), schema))

    latest = latest_plausible()
    future = _after(frame, latest)
    if frame.filter(future).limit(1).count():
        raise DataContractError(
            file, C.started_at, future_problem(latest), _examples(frame.filter(future), schema)
        )

    known = spark.createDataFrame(
        pl.DataFrame({C.track_id: track_ids.cast(pl.Int64).unique()}).to_pandas(), f"{C.track_id} long"
    )
    used = frame.select(F.col(C.track_id).cast("long").alias(C.track_id)).distinct()
    unknown = used.join(F.broadcast(known), on=C.track_id, how="left_anti").cache()
    n_unknown = unknown.count()
    if n_unknown:
        shown = unknown.limit(N_EXAMPLES).withColumn(C.track_id, F.col(C.track_id).cast("int"))
        raise DataContractError(
            file,
            C.track_id,
            unknown_tracks_problem(n_unknown),
            _examples(frame.join(F.broadcast(shown), on=C.track_id, how="left_semi"), schema),
        )
    unknown.unpersist()

    if unique_pairs:
        repeated = frame.groupBy(C.user_id, C.track_id).count().filter(F.col("count") > 1)
        extra = repeated.agg(F.sum(F.col("count") - 1)).first()[0]
        if extra:
            first = repeated.orderBy(C.user_id, C.track_id).select(C.user_id, C.track_id)
            raise DataContractError(
                file,
                f"{C.user_id}, {C.track_id}",
                repeated_pairs_problem(int(extra)),
                _examples(first, schema),
            )
    return frame.select(
        F.col(C.user_id).cast("int").alias(C.user_id),
        F.col(C.track_id).cast("int").alias(C.track_id),
        F.col(C.started_at),
        F.col(C.track_seq).cast("short").alias(C.track_seq),
        F.col(C.weight).cast("float").alias(C.weight),
    )
