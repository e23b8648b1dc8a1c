"""Column names and the data contract for the canonical (Yandex Music) files.

Every source is turned into the same three files (plus optional track features)
and checked here on the way in. A broken input stops the run with a
:class:`DataContractError` that names the file, the column and a few offending
rows, in one paragraph.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import polars as pl


class Columns:
    """The one vocabulary for column names used in every artefact."""

    user_id = "user_id"
    track_id = "track_id"
    started_at = "started_at"
    track_seq = "track_seq"
    weight = "weight"
    albums = "albums"
    artists = "artists"
    genres = "genres"
    id = "id"
    type = "type"
    name = "name"
    score = "score"
    rank = "rank"
    similar_track_id = "similar_track_id"


C = Columns

#: Canonical dtypes of each file; lists of ids are ``List(Int32)``.
INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    C.user_id: pl.Int32(),
    C.track_id: pl.Int32(),
    C.started_at: pl.Datetime("ns"),
    C.track_seq: pl.Int16(),
    C.weight: pl.Float32(),
}
TRACKS_SCHEMA: dict[str, pl.DataType] = {
    C.track_id: pl.Int32(),
    C.albums: pl.List(pl.Int32()),
    C.artists: pl.List(pl.Int32()),
    C.genres: pl.List(pl.Int32()),
}
CATALOG_NAMES_SCHEMA: dict[str, pl.DataType] = {
    C.id: pl.Int32(),
    C.type: pl.Utf8(),
    C.name: pl.Utf8(),
}
CATALOG_TYPES = ("track", "album", "artist", "genre")

#: The largest ``track_seq`` an int16 holds; longer histories are an error.
MAX_TRACK_SEQ = 32767

N_EXAMPLES = 5
#: The ranges the interactions' integer columns must fall in (their contract types' ranges).
INTERACTION_LIMITS = {
    C.user_id: (-(2**31), 2**31 - 1),
    C.track_id: (-(2**31), 2**31 - 1),
    C.track_seq: (1, MAX_TRACK_SEQ),
}


class DataContractError(ValueError):
    """Input that breaks the data contract; the message names file, column and rows."""

    def __init__(self, file: str, column: str | None, problem: str, examples: pl.DataFrame | None = None):
        self.file, self.column, self.problem, self.examples = file, column, problem, examples
        where = f"{file}, column '{column}'" if column else file
        message = f"{where}: {problem}."
        if examples is not None and examples.height:
            rows = examples.head(N_EXAMPLES).to_dicts()
            message += " Examples: " + "; ".join(_format_row(r) for r in rows) + "."
        super().__init__(message)


def _format_row(row: dict) -> str:
    def show(v):
        return str(v) if isinstance(v, dt.date) else repr(v)

    return "{" + ", ".join(f"{k}={show(v)}" for k, v in row.items()) + "}"


@dataclass
class DropReport:
    """Rows removed on purpose by an adapter, counted by reason (nothing is dropped silently)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, n: int) -> None:
        if n:
            self.counts[reason] = self.counts.get(reason, 0) + int(n)

    def as_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {"reason": list(self.counts), "rows": list(self.counts.values())},
            schema={"reason": pl.Utf8, "rows": pl.Int64},
        )


def check_columns(
    df: pl.DataFrame, expected: dict[str, pl.DataType], file: str, optional: Iterable[str] = ()
) -> None:
    """Every expected column is present; a close misspelling is named in the error."""
    optional = set(optional)
    for column in expected:
        if column in df.columns or column in optional:
            continue
        near = [c for c in df.columns if _close(c, column)]
        hint = f" (found '{near[0]}': misspelled?)" if near else ""
        raise DataContractError(file, column, f"missing column{hint}; the file has {sorted(df.columns)}")


def _close(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    if a == b:
        return True
    if abs(len(a) - len(b)) > 2:
        return False
    # small edit distance, enough for typos like 'trackid' or 'user_di'
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] <= 2


def check_dtype(df: pl.DataFrame, column: str, dtype: pl.DataType, file: str) -> pl.DataFrame:
    """Cast ``column`` to ``dtype``; values that do not convert are reported with examples."""
    series = df.get_column(column)
    if series.dtype == dtype:
        return df
    if isinstance(dtype, pl.Datetime) and series.dtype == pl.Utf8:
        converted = series.str.to_datetime(strict=False, time_unit=dtype.time_unit)
        converted = converted.fill_null(series.str.to_date(strict=False).cast(dtype))
        bad = converted.is_null() & series.is_not_null()
        if bad.any():
            raise DataContractError(
                file,
                column,
                f"{int(bad.sum())} values do not parse as dates",
                df.filter(bad).select(column),
            )
        return df.with_columns(converted.alias(column))
    if isinstance(dtype, pl.Datetime) and series.dtype == pl.Date:
        return df.with_columns(series.cast(dtype))
    if isinstance(dtype, pl.Datetime) and not isinstance(series.dtype, pl.Datetime):
        # integers would silently become 1970 dates in an unknown unit: refuse them
        raise DataContractError(
            file,
            column,
            f"wrong type {series.dtype}, expected dates (datetime or ISO strings)",
            df.select(column).drop_nulls().head(N_EXAMPLES),
        )
    numeric_target = dtype.is_integer() or dtype.is_float()
    if numeric_target and not (series.dtype.is_numeric() or series.dtype == pl.Null):
        problem, shown = f"wrong type {series.dtype}, expected {dtype}", df.select(column).drop_nulls()
        if series.dtype == pl.Utf8:  # the values that are no number at all are the ones to show
            not_numbers = (
                series.str.strip_chars().cast(pl.Float64, strict=False).is_null() & series.is_not_null()
            )
            if not_numbers.any():
                problem += f" ({int(not_numbers.sum())} values are not numbers)"
                shown = df.with_row_index("row").filter(not_numbers).select("row", column)
        raise DataContractError(file, column, problem, shown.head(N_EXAMPLES))
    converted = series.cast(dtype, strict=False)
    bad = converted.is_null() & series.is_not_null()
    if dtype.is_integer() and series.dtype.is_float():
        bad = bad | (series.is_not_null() & (series != series.round(0)))
    if bad.any():
        raise DataContractError(
            file,
            column,
            f"{int(bad.sum())} values do not fit {dtype} (wrong type or out of range)",
            df.filter(bad).select(column),
        )
    return df.with_columns(converted.alias(column))


def _reject_rows(df: pl.DataFrame, bad: pl.Series, file: str, column: str, problem: str) -> None:
    """Raise when any row is ``bad``: the count, the problem and the first such rows."""
    if bad.any():
        raise DataContractError(
            file, column, f"{int(bad.sum())} {problem}", df.with_row_index("row").filter(bad)
        )


def reject_by_stats(
    frame: pl.LazyFrame,
    stats: dict,
    file: str,
    nulls: Iterable[str],
    limits: dict[str, tuple[int, int]],
    shown: Iterable[str] | None = None,
) -> None:
    """Raise on the first problem a streaming pass found: ``stats`` holds ``<column>_nulls`` for
    the ``nulls`` columns and ``<column>_min``/``_max`` for the ``limits`` ones; the examples are
    read back from ``frame`` (the ``shown`` columns, all when None, with their row numbers)."""
    found = stats_problem(stats, nulls, limits)
    if found is None:
        return
    column, problem, bounds = found
    with_row = frame.with_row_index("row")
    keep = ["row", *shown] if shown is not None else with_row.collect_schema().names()
    bad = pl.col(column).is_null() if bounds is None else ~pl.col(column).is_between(*bounds)
    raise DataContractError(
        file, column, problem, with_row.filter(bad).select(keep).head(N_EXAMPLES).collect()
    )


def stats_problem(
    stats: dict, nulls: Iterable[str], limits: dict[str, tuple[int, int]]
) -> tuple[str, str, tuple[int, int] | None] | None:
    """The first problem in a pass's ``stats`` (see :func:`reject_by_stats`): ``(column, problem,
    bounds)``, ``bounds`` the allowed range of a range problem and ``None`` for nulls."""
    for column in nulls:
        if stats[f"{column}_nulls"]:
            return column, f"{stats[f'{column}_nulls']:,} rows with a null value", None
    for column, (low, high) in limits.items():
        lo, hi = stats[f"{column}_min"], stats[f"{column}_max"]
        if lo is not None and not (low <= lo and hi <= high):
            return column, f"values outside {low:,} .. {high:,}: min {lo:,}, max {hi:,}", (low, high)
    return None


def check_not_null(df: pl.DataFrame, columns: Iterable[str], file: str) -> None:
    for column in columns:
        _reject_rows(df, df.get_column(column).is_null(), file, column, "rows with a null id")


def check_unique(df: pl.DataFrame, columns: list[str], file: str, what: str) -> None:
    dup = df.select(columns).is_duplicated()
    if dup.any():
        raise DataContractError(
            file,
            ", ".join(columns),
            f"{int(dup.sum())} rows repeat a {what} that must occur once",
            df.with_row_index("row").filter(dup).sort(columns),
        )


def validate_tracks(tracks: pl.DataFrame, file: str = "tracks.parquet") -> pl.DataFrame:
    """Check and normalise the tracks table: unique non-null ids, lists of int32 ids."""
    check_columns(tracks, TRACKS_SCHEMA, file)
    tracks = check_dtype(tracks, C.track_id, pl.Int32(), file)
    check_not_null(tracks, [C.track_id], file)
    check_unique(tracks, [C.track_id], file, "track_id")
    for column in (C.albums, C.artists, C.genres):
        dtype = tracks.schema[column]
        if not isinstance(dtype, pl.List):
            raise DataContractError(
                file, column, f"wrong type {dtype}, expected a list of ids", tracks.select(C.track_id, column)
            )
        cast = tracks.get_column(column).cast(pl.List(pl.Int32), strict=False)
        bad = cast.is_null() != tracks.get_column(column).is_null()
        if bad.any():
            raise DataContractError(
                file, column, "ids that are not int32", tracks.filter(bad).select(C.track_id, column)
            )
        tracks = tracks.with_columns(cast.fill_null(pl.lit([], dtype=pl.List(pl.Int32))).alias(column))
    return tracks.select(list(TRACKS_SCHEMA))


def validate_catalog_names(names: pl.DataFrame, file: str = "catalog_names.parquet") -> pl.DataFrame:
    """Check the names table: known types, non-null ids, one name per (type, id)."""
    check_columns(names, CATALOG_NAMES_SCHEMA, file)
    names = check_dtype(names, C.id, pl.Int32(), file)
    check_not_null(names, [C.id, C.type], file)
    unknown = ~names.get_column(C.type).is_in(list(CATALOG_TYPES))
    if unknown.any():
        raise DataContractError(
            file, C.type, f"unknown types (allowed: {CATALOG_TYPES})", names.filter(unknown)
        )
    check_unique(names, [C.type, C.id], file, "(type, id) pair")
    return names.select(list(CATALOG_NAMES_SCHEMA))


def latest_plausible() -> dt.datetime:
    """The latest time a listen can have happened: a day after now (a later date is a source's
    typo or clock, and would move the end of the data, hence every window, into the future)."""
    return dt.datetime.now() + dt.timedelta(days=1)


def validate_interactions(
    interactions: pl.DataFrame,
    track_ids: pl.Series | None = None,
    file: str = "interactions.parquet",
    date_range: tuple | None = None,
    unique_pairs: bool = True,
) -> pl.DataFrame:
    """Check and normalise interactions to :data:`INTERACTIONS_SCHEMA`.

    Parameters
    ----------
    interactions
        ``user_id``, ``track_id``, ``started_at`` and optionally ``track_seq`` and
        ``weight`` (1.0 when absent; ``track_seq`` is recomputed when absent).
    track_ids
        The ids of ``tracks``; interactions with other ids are an error.
    date_range
        ``(first, last)`` datetimes the source promises; dates outside are an error.
    unique_pairs
        The source promises every (user, track) pair once, as Yandex Music does.
    """
    check_columns(interactions, INTERACTIONS_SCHEMA, file, optional=(C.track_seq, C.weight))
    for column in (C.user_id, C.track_id):
        interactions = check_dtype(interactions, column, pl.Int32(), file)
    check_not_null(interactions, [C.user_id, C.track_id], file)
    interactions = check_dtype(interactions, C.started_at, INTERACTIONS_SCHEMA[C.started_at], file)
    check_not_null(interactions, [C.started_at], file)
    latest = latest_plausible()
    _reject_rows(
        interactions,
        interactions.get_column(C.started_at) > latest,
        file,
        C.started_at,
        f"rows dated in the future (after {latest:%Y-%m-%d})",
    )
    if date_range is not None:
        first, last = date_range
        ts = interactions.get_column(C.started_at)
        outside = (ts < first) | (ts > last)
        _reject_rows(
            interactions,
            outside,
            file,
            C.started_at,
            f"dates fall outside the data's range {first} .. {last}",
        )
    if C.weight not in interactions.columns:
        interactions = interactions.with_columns(pl.lit(1.0, dtype=pl.Float32).alias(C.weight))
    interactions = check_dtype(interactions, C.weight, pl.Float32(), file)
    if unique_pairs:
        check_unique(interactions, [C.user_id, C.track_id], file, "(user_id, track_id) pair")
    if track_ids is not None:
        unknown = ~interactions.get_column(C.track_id).is_in(track_ids.implode())
        _reject_rows(
            interactions, unknown, file, C.track_id, "interactions name track ids missing from tracks"
        )
    if C.track_seq not in interactions.columns:
        interactions = with_track_seq(interactions)
    else:
        interactions = check_dtype(interactions, C.track_seq, pl.Int16(), file)
    return interactions.select(list(INTERACTIONS_SCHEMA))


def with_track_seq(interactions: pl.DataFrame) -> pl.DataFrame:
    """Sort by user and time and number each user's listens 1, 2, ... (``track_seq``)."""
    out = interactions.sort([C.user_id, C.started_at, C.track_id]).with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(C.user_id).alias(C.track_seq)
    )
    longest = out.get_column(C.track_seq).max()
    if longest is not None and longest > MAX_TRACK_SEQ:
        raise DataContractError(
            "interactions",
            C.track_seq,
            f"a user has {longest} listens, more than track_seq (int16) can number",
        )
    return out.with_columns(pl.col(C.track_seq).cast(pl.Int16))


def type_problem(schema: pl.Schema | dict[str, pl.DataType]) -> tuple[str, str] | None:
    """``(column, problem)`` of the first interactions column of a wrong type (integer ids and
    ``track_seq``, dates), from the schema alone; ``None`` when the types are right."""
    for column in (C.user_id, C.track_id, C.track_seq):
        if column in schema and not schema[column].is_integer():
            return column, f"wrong type {schema[column]}, expected integers"
    if not isinstance(schema[C.started_at], pl.Datetime | pl.Date):
        return C.started_at, f"wrong type {schema[C.started_at]}, expected dates"
    return None


def check_lazy_types(interactions: pl.LazyFrame, file: str) -> None:
    """Integer ids and ``track_seq``, and dates, checked from the schema alone (no data read)."""
    problem = type_problem(interactions.collect_schema())
    if problem is not None:
        column, text = problem
        raise DataContractError(file, column, text, interactions.select(column).head(N_EXAMPLES).collect())


def future_problem(latest: dt.datetime) -> str:
    """The streaming checks' words for listens after ``latest`` (:func:`latest_plausible`)."""
    return f"rows dated in the future (after {latest:%Y-%m-%d})"


def unknown_tracks_problem(n: int) -> str:
    """The streaming checks' words for ``n`` track ids the tracks table lacks."""
    return f"{n} track ids missing from tracks"


def repeated_pairs_problem(n: int) -> str:
    """The streaming checks' words for ``n`` rows beyond the first of their (user, track) pair."""
    return f"{n} rows repeat a (user_id, track_id) pair that must occur once"


def validate_interactions_lazy(
    interactions: pl.LazyFrame,
    track_ids: pl.Series,
    file: str = "interactions.parquet",
    unique_pairs: bool = True,
) -> pl.LazyFrame:
    """The contract checks of :func:`validate_interactions` for sources too big for memory.

    Types are checked from the schema, nulls, ranges and unknown track ids with
    streaming aggregates, and repeated pairs by sorting one int64 key per row
    (1.8 GB at 222M rows). Returns the canonical columns as a lazy frame for
    ``sink_parquet``, so the full table is never held in memory. ``track_seq`` must be
    present (the Yandex files have it); ``weight`` is 1.0 when absent.
    """
    schema = interactions.collect_schema()
    check_columns(pl.DataFrame(schema=schema), INTERACTIONS_SCHEMA, file, optional=(C.weight,))
    check_lazy_types(interactions, file)
    if C.weight not in schema:
        interactions = interactions.with_columns(pl.lit(1.0, dtype=pl.Float32).alias(C.weight))
    limits = INTERACTION_LIMITS
    stats = (
        interactions.select(
            *[pl.col(c).null_count().alias(f"{c}_nulls") for c in (C.user_id, C.track_id, C.started_at)],
            *[pl.col(c).min().alias(f"{c}_min") for c in limits],
            *[pl.col(c).max().alias(f"{c}_max") for c in limits],
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    reject_by_stats(interactions, stats, file, (C.user_id, C.track_id, C.started_at), limits)
    with_row = interactions.with_row_index("row")
    latest = latest_plausible()
    future = pl.col(C.started_at) > latest
    if interactions.select(future.any()).collect(engine="streaming").item():
        raise DataContractError(
            file,
            C.started_at,
            future_problem(latest),
            with_row.filter(future).head(N_EXAMPLES).collect(),
        )
    used = interactions.select(pl.col(C.track_id).unique()).collect(engine="streaming").to_series()
    unknown = used.filter(~used.is_in(track_ids.implode()))
    if unknown.len():
        raise DataContractError(
            file,
            C.track_id,
            unknown_tracks_problem(unknown.len()),
            with_row.filter(pl.col(C.track_id).is_in(unknown.head(N_EXAMPLES).implode()))
            .head(N_EXAMPLES)
            .collect(),
        )
    if unique_pairs:
        _check_unique_pairs_by_sorting(interactions, file)
    return interactions.select([pl.col(c).cast(dtype) for c, dtype in INTERACTIONS_SCHEMA.items()])


def _check_unique_pairs_by_sorting(interactions: pl.LazyFrame, file: str) -> None:
    """Repeated (user, track) pairs, found by sorting one int64 key per row."""
    key = pl.col(C.user_id).cast(pl.Int64) * 2**32 + pl.col(C.track_id).cast(pl.UInt32).cast(pl.Int64)
    keys = interactions.select(key.alias("key")).collect(engine="streaming").to_series().to_numpy()
    keys = np.sort(keys)
    repeats = keys[1:][keys[1:] == keys[:-1]]
    if len(repeats):
        first = np.unique(repeats)[:N_EXAMPLES]
        examples = pl.DataFrame(
            {
                C.user_id: (first >> 32).astype(np.int32),
                C.track_id: (first & 0xFFFFFFFF).astype(np.uint32).astype(np.int32),
            }
        )
        raise DataContractError(
            file,
            f"{C.user_id}, {C.track_id}",
            repeated_pairs_problem(len(repeats)),
            examples,
        )
