"""Adapter for MovieLens: movies play the role of tracks, ratings above a threshold of listens.

Layouts, detected from the files present:

- ``latest``: ml-latest-small, ml-20m, ml-25m, ml-32m: ``ratings.csv``
  (userId, movieId, rating, timestamp) and ``movies.csv`` (movieId, title,
  genres joined with ``|``);
- ``100k``: ml-100k: ``u.data`` (tab separated user, item, rating, timestamp)
  and ``u.item`` (``|`` separated, 19 genre flags, latin-1), genre names from
  ``u.genre`` when present;
- ``1m``: ml-1m (and ml-10m): ``ratings.dat`` and ``movies.dat`` with ``::``
  separators, latin-1.

User and movie ids stay as they are; genres (names) get int32 ids 1..n in
alphabetical order, kept in ``extra["genre_id_map"]``. "(no genres listed)"
and the 100k "unknown" flag mean no genre. Movies have no artists or albums.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import polars as pl

from musicrec.config import MovieLensConfig
from musicrec.schema import (
    C,
    DataContractError,
    DropReport,
    check_columns,
    check_dtype,
    check_not_null,
    check_unique,
    latest_plausible,
)
from musicrec.sources.base import (
    SourceData,
    SourceError,
    aggregate_pairs,
    dense_ids,
    names_frame,
    require_files,
)

SOURCE = "movielens"
#: Layout name -> (ratings file, movies file), checked in this order.
LAYOUTS: dict[str, tuple[str, str]] = {
    "latest": ("ratings.csv", "movies.csv"),
    "1m": ("ratings.dat", "movies.dat"),
    "100k": ("u.data", "u.item"),
}
#: Genre flag columns of ml-100k's ``u.item``, in order (``u.genre`` says the same).
GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
#: Genre labels that mean "no genre".
NO_GENRE = ("(no genres listed)", "unknown", "")

_USER, _MOVIE, _RATING, _TS = "userId", "movieId", "rating", "timestamp"
#: Every MovieLens release rates from 0.5 (or 1) to 5 stars.
RATING_SCALE = (0.5, 5.0)
_TITLE, _GENRES = "title", "genres"


def detect_layout(folder: Path) -> str:
    """The layout whose two files are in ``folder`` (``latest``, ``1m`` or ``100k``)."""
    require_files(folder, SOURCE)
    for layout, files in LAYOUTS.items():
        if all((folder / f).is_file() for f in files):
            return layout
    wanted = "; ".join(" + ".join(files) for files in LAYOUTS.values())
    raise SourceError(
        f"{SOURCE}: {folder} holds none of the known MovieLens layouts ({wanted}); found "
        f"{sorted(p.name for p in folder.iterdir())}"
    )


def load(folder: Path, options: MovieLensConfig) -> SourceData:
    """Read a MovieLens folder into canonical frames.

    Ratings at or above ``options.rating_threshold`` become listens with
    ``weight = 1.0`` (implicit feedback, as in Yandex Music, where a listen has
    no strength); lower ratings are dropped and counted. Repeated ratings of a
    (user, movie) pair, which the published files do not have, are merged and
    counted, so raw ratings = interactions + the ``dropped`` total.

    Parameters
    ----------
    folder
        A MovieLens folder in one of the :data:`LAYOUTS`.
    options
        The rating threshold.
    """
    folder = Path(folder)
    layout = detect_layout(folder)
    ratings_file, movies_file = LAYOUTS[layout]
    reader = {"latest": _ratings_latest, "1m": _ratings_1m, "100k": _ratings_100k}[layout]
    ratings = _normalise_ratings(reader(folder / ratings_file), ratings_file)
    movies = {"latest": _movies_latest, "1m": _movies_1m, "100k": _movies_100k}[layout](folder)
    movies = _normalise_movies(movies, movies_file)

    dropped = DropReport()
    notes = [f"MovieLens layout '{layout}' ({ratings_file}, {movies_file})"]
    positive = pl.col(_RATING) >= options.rating_threshold
    dropped.add(f"{ratings_file}: ratings below {options.rating_threshold}", ratings.filter(~positive).height)
    events = ratings.filter(positive).select(
        pl.col(_USER).alias(C.user_id),
        pl.col(_MOVIE).alias(C.track_id),
        pl.from_epoch(pl.col(_TS), time_unit="s").cast(pl.Datetime("ns")).alias(C.started_at),
        pl.lit(1.0, dtype=pl.Float32).alias(C.weight),
    )
    interactions = aggregate_pairs(events).sort(C.user_id, C.started_at, C.track_id)
    dropped.add(
        f"{ratings_file}: repeat ratings of a (user, movie) pair merged into its row",
        events.height - interactions.height,
    )

    unknown = ratings.select(pl.col(_MOVIE).unique()).join(movies, on=_MOVIE, how="anti")
    if unknown.height:
        notes.append(
            f"{unknown.height} rated movies missing from {movies_file}: kept with no genre, named by their id"
        )
        movies = pl.concat(
            [
                movies,
                unknown.select(
                    _MOVIE,
                    pl.col(_MOVIE).cast(pl.Utf8).alias(_TITLE),
                    pl.lit([], dtype=pl.List(pl.Utf8)).alias(_GENRES),
                ),
            ]
        )

    genre_map = dense_ids(movies.get_column(_GENRES).explode(), "genre_id")
    movie_genres = (
        movies.select(_MOVIE, _GENRES)
        .explode(_GENRES)
        .join(genre_map, left_on=_GENRES, right_on="source_id")
        .group_by(_MOVIE)
        .agg(pl.col("genre_id").unique().sort().alias("genre_ids"))
    )
    empty = pl.lit([], dtype=pl.List(pl.Int32))
    tracks = (
        movies.join(movie_genres, on=_MOVIE, how="left")
        .select(
            pl.col(_MOVIE).alias(C.track_id),
            empty.alias(C.albums),
            empty.alias(C.artists),
            pl.col("genre_ids").fill_null(empty).alias(C.genres),
        )
        .sort(C.track_id)
    )
    no_genre = tracks.filter(pl.col(C.genres).list.len() == 0).height
    notes.append(
        f"{tracks.height} movies as tracks ({no_genre} with no genre); no artists or albums in this source"
    )
    names = pl.concat(
        [
            names_frame(movies[_MOVIE], movies[_TITLE], "track"),
            names_frame(genre_map["genre_id"], genre_map["source_id"], "genre"),
        ]
    )
    return SourceData(
        interactions=interactions,
        tracks=tracks,
        catalog_names=names,
        dropped=dropped,
        extra={"genre_id_map": genre_map},
        notes=notes,
    )


def read_text(path: Path) -> str:
    """A small text file as UTF-8 when it is, else latin-1 (which decodes any byte)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_table(path: Path, separator: str, **kwargs) -> pl.DataFrame:
    """A delimited file, decoded robustly, no quoting; parse errors name the file."""
    try:
        return pl.read_csv(
            io.BytesIO(read_text(path).encode()), separator=separator, quote_char=None, **kwargs
        )
    except pl.exceptions.PolarsError as exc:
        raise DataContractError(path.name, None, f"cannot be read as a table ({exc})") from None


def _with_names(frame: pl.DataFrame, file: str, names: tuple[str, ...]) -> pl.DataFrame:
    """Name the columns of a header-less file, checking their number first."""
    if frame.width != len(names):
        raise DataContractError(
            file,
            None,
            f"expected {len(names)} fields per line ({', '.join(names)}), found {frame.width}",
            frame.head(),
        )
    return frame.rename(dict(zip(frame.columns, names, strict=True)))


def _ratings_latest(path: Path) -> pl.DataFrame:
    frame = pl.scan_csv(path, infer_schema_length=10_000)
    try:
        header = pl.DataFrame(schema=frame.collect_schema())
    except pl.exceptions.PolarsError as exc:
        raise DataContractError(path.name, None, f"cannot be read as CSV ({exc})") from None
    check_columns(
        header, {_USER: pl.Int32(), _MOVIE: pl.Int32(), _RATING: pl.Float32(), _TS: pl.Int64()}, path.name
    )
    try:
        return frame.select(_USER, _MOVIE, _RATING, _TS).collect()
    except pl.exceptions.PolarsError as exc:
        raise DataContractError(path.name, None, f"cannot be read as CSV ({exc})") from None


def _ratings_100k(path: Path) -> pl.DataFrame:
    frame = read_table(path, "\t", has_header=False)
    return _with_names(frame, path.name, (_USER, _MOVIE, _RATING, _TS))


def _ratings_1m(path: Path) -> pl.DataFrame:
    # '::' is two separators in a row; numbers hold no ':' so every other field is empty
    frame = read_table(path, ":", has_header=False)
    if frame.width != 7:
        raise DataContractError(
            path.name,
            None,
            f"expected UserID::MovieID::Rating::Timestamp lines, found {(frame.width + 1) // 2} fields",
            frame.head(),
        )
    return _with_names(frame.select(frame.columns[::2]), path.name, (_USER, _MOVIE, _RATING, _TS))


def _normalise_ratings(ratings: pl.DataFrame, file: str) -> pl.DataFrame:
    """Int32 ids, Float32 ratings, Int64 epoch seconds; errors name the file and column."""
    if ratings.height == 0:
        raise DataContractError(file, None, "has no rows (a header alone): no ratings to adapt")
    for column, dtype in (
        (_USER, pl.Int32()),
        (_MOVIE, pl.Int32()),
        (_RATING, pl.Float32()),
        (_TS, pl.Int64()),
    ):
        ratings = check_dtype(ratings, column, dtype, file)
    check_not_null(ratings, [_USER, _MOVIE, _RATING, _TS], file)
    # epoch seconds from 1970 to a day after now; anything else would overflow the dates or move
    # the end of the data (hence every window) into the future
    latest = int(latest_plausible().timestamp())
    off_clock = ~ratings.get_column(_TS).is_between(0, latest)
    if off_clock.any():
        raise DataContractError(
            file,
            _TS,
            f"{int(off_clock.sum())} timestamps outside 0 .. {latest:,} seconds since 1970 "
            f"(1970-01-01 to {dt.datetime.fromtimestamp(latest, dt.UTC):%Y-%m-%d})",
            ratings.with_row_index("row").filter(off_clock),
        )
    low, high = RATING_SCALE
    off_scale = ~ratings.get_column(_RATING).is_between(low, high)
    if off_scale.any():
        raise DataContractError(
            file,
            _RATING,
            f"{int(off_scale.sum())} ratings outside MovieLens's scale {low} .. {high}",
            ratings.with_row_index("row").filter(off_scale),
        )
    return ratings


def _movies_latest(folder: Path) -> pl.DataFrame:
    path = folder / "movies.csv"
    try:
        frame = pl.read_csv(io.BytesIO(read_text(path).encode()), infer_schema_length=0)
    except pl.exceptions.PolarsError as exc:
        raise DataContractError(path.name, None, f"cannot be read as CSV ({exc})") from None
    check_columns(frame, {_MOVIE: pl.Int32(), _TITLE: pl.Utf8(), _GENRES: pl.Utf8()}, path.name)
    return frame.select(_MOVIE, _TITLE, pl.col(_GENRES).str.split("|"))


def _movies_1m(folder: Path) -> pl.DataFrame:
    path = folder / "movies.dat"
    lines = pl.Series("line", read_text(path).splitlines()).str.strip_chars_end()
    lines = lines.filter(lines.str.len_chars() > 0)
    # the title may hold ':' (even '::' in principle); the greedy middle group keeps it whole
    parts = lines.str.extract_groups(r"^\s*(\d+)::(.*)::([^:]*)$").struct.unnest()
    parts.columns = [_MOVIE, _TITLE, _GENRES]
    bad = parts.get_column(_MOVIE).is_null()
    if bad.any():
        raise DataContractError(
            path.name,
            None,
            f"{int(bad.sum())} lines are not MovieID::Title::Genres",
            lines.filter(bad).to_frame(),
        )
    return parts.with_columns(pl.col(_GENRES).str.split("|"))


def _movies_100k(folder: Path) -> pl.DataFrame:
    path = folder / "u.item"
    genre_names = list(GENRES_100K)
    genre_file = folder / "u.genre"
    if genre_file.is_file():
        listed = read_table(genre_file, "|", has_header=False)
        listed = _with_names(listed, genre_file.name, ("genre", "index")).drop_nulls()
        genre_names = listed.sort("index").get_column("genre").to_list()
    frame = read_table(path, "|", has_header=False, infer_schema_length=0)
    fields = (
        _MOVIE,
        _TITLE,
        "release_date",
        "video_release_date",
        "url",
        *(f"genre_{i}" for i in range(len(genre_names))),
    )
    frame = _with_names(frame, path.name, fields)
    flags = [pl.when(pl.col(f"genre_{i}") == "1").then(pl.lit(name)) for i, name in enumerate(genre_names)]
    return frame.select(_MOVIE, _TITLE, pl.concat_list(flags).list.drop_nulls().alias(_GENRES))


def _normalise_movies(movies: pl.DataFrame, file: str) -> pl.DataFrame:
    """Int32 ids, unique; genre lists without the "no genre" labels."""
    if movies.schema[_MOVIE] == pl.Utf8:
        text = movies.get_column(_MOVIE).str.strip_chars()
        ids = text.cast(pl.Int64, strict=False)
        bad = ids.is_null() & text.is_not_null()
        if bad.any():
            raise DataContractError(
                file,
                _MOVIE,
                f"{int(bad.sum())} ids are not whole numbers",
                movies.filter(bad).select(_MOVIE, _TITLE),
            )
        movies = movies.with_columns(ids.alias(_MOVIE))
    movies = check_dtype(movies, _MOVIE, pl.Int32(), file)
    check_not_null(movies, [_MOVIE], file)
    check_unique(movies, [_MOVIE], file, "movie id")
    return movies.with_columns(
        pl.col(_TITLE).cast(pl.Utf8).fill_null(pl.col(_MOVIE).cast(pl.Utf8)),
        pl.col(_GENRES)
        .fill_null([])
        .list.eval(pl.element().str.strip_chars().filter(~pl.element().str.strip_chars().is_in(NO_GENRE))),
    )
