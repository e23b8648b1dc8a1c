"""Adapter for the IUM course music-streaming format (JSON lines).

Files: ``sessions.jsonl`` (timestamp, user_id, track_id, event_type, session_id),
``tracks.jsonl`` (id, name, id_artist, release_date and Spotify audio features),
``artists.jsonl`` (id, name, genres as a list of strings) and ``users.jsonl``
(not needed here). Only ``sessions.jsonl`` is required; without ``tracks.jsonl``
tracks carry no artist or genre, names fall back to the id string and there
are no audio features.

Track, artist and genre ids are strings in this format: they are mapped to
int32 ids 1..n in sorted order, and the maps are kept in ``extra``
(``track_id_map``, ``artist_id_map``, ``genre_id_map``; ``source_id`` is the
original string). User ids are integers and stay as they are.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from musicrec.config import IumConfig
from musicrec.schema import (
    C,
    DataContractError,
    DropReport,
    check_columns,
    check_dtype,
    check_not_null,
    check_unique,
)
from musicrec.sources.base import SourceData, aggregate_pairs, dense_ids, names_frame, require_files

SOURCE = "ium"
SESSIONS_FILE = "sessions.jsonl"
TRACKS_FILE = "tracks.jsonl"
ARTISTS_FILE = "artists.jsonl"

#: Numeric track attributes kept as audio features (those present are used).
AUDIO_FEATURES = (
    "popularity",
    "duration_ms",
    "explicit",
    "danceability",
    "energy",
    "key",
    "loudness",
    "mode",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "time_signature",
)
#: Timestamp layouts seen in the course data: with and without fractional seconds.
TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f")

_EVENT = "event_type"
_TS = "timestamp"


def load(folder: Path, options: IumConfig) -> SourceData:
    """Read an IUM folder into canonical frames.

    A (user, track) pair's weight is the sum of ``options.event_weights`` over
    its events (event types compared in lower case; by default play 1, like 2,
    skip -0.5): a like is a stronger signal than a play, and a skip half cancels
    the play that preceded it. The pair's time is its first event. Dropped and
    counted (in events): events without a user, time or track (ADVERTISEMENT,
    BUY_PREMIUM, empty or null ``track_id``), events of a type with no weight,
    and the events of pairs whose summed weight is not positive (only skips, or
    a play and skips). Repeat events merged into their pair's row are counted
    as well, so raw events = kept pairs + the ``dropped`` total.

    Parameters
    ----------
    folder
        Folder holding ``sessions.jsonl`` and optionally ``tracks.jsonl`` and
        ``artists.jsonl``.
    options
        The event weights.
    """
    folder = Path(folder)
    require_files(folder, SOURCE, SESSIONS_FILE)
    dropped = DropReport()
    notes: list[str] = []
    extra: dict[str, pl.DataFrame] = {}
    weights = {k.lower(): float(v) for k, v in options.event_weights.items()}

    events = _read_events(folder / SESSIONS_FILE, dropped, weights, extra)

    catalog = _read_catalog(folder, notes)
    track_map = dense_ids(pl.concat([catalog["id"], events["source_track"]]), C.track_id)
    extra["track_id_map"] = track_map
    unknown = (
        events.select("source_track")
        .unique()
        .join(catalog.select("id"), left_on="source_track", right_on="id", how="anti")
        .height
    )
    if unknown and catalog.height:
        notes.append(
            f"{unknown} tracks in {SESSIONS_FILE} are missing from {TRACKS_FILE}: "
            "kept with no artist or genre, named by their id"
        )

    events = events.join(track_map, left_on="source_track", right_on="source_id")
    pairs = aggregate_pairs(events.select(C.user_id, C.track_id, C.started_at, C.weight))
    positive = pl.col(C.weight) > 0
    losing = pairs.filter(~positive)
    n_losing_events = events.join(losing, on=[C.user_id, C.track_id], how="semi").height
    interactions = pairs.filter(positive).sort(C.user_id, C.started_at, C.track_id)
    dropped.add(f"{SESSIONS_FILE}: events of pairs whose summed weight is not positive", n_losing_events)
    dropped.add(
        f"{SESSIONS_FILE}: repeat events of a kept (user, track) pair merged into its row",
        events.height - n_losing_events - interactions.height,
    )
    notes.append(
        f"{losing.height} (user, track) pairs with a summed weight <= 0 dropped (skipped, never liked)"
    )

    tracks, names, features = _tracks_and_names(folder, catalog, track_map, notes, extra)
    return SourceData(
        interactions=interactions,
        tracks=tracks,
        catalog_names=names,
        track_features=features,
        dropped=dropped,
        extra=extra,
        notes=notes,
    )


def read_jsonl(path: Path) -> pl.DataFrame:
    """Read a JSON-lines file (fields in any order), turning parse errors into contract errors."""
    try:
        return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataContractError(path.name, None, f"not valid JSON lines ({exc})") from None


def _read_events(
    path: Path, dropped: DropReport, weights: dict[str, float], extra: dict[str, pl.DataFrame]
) -> pl.DataFrame:
    """Sessions as ``user_id``, ``source_track``, ``started_at``, ``weight``, one row per event."""
    file = path.name
    raw = read_jsonl(path)
    check_columns(
        raw, {_TS: pl.Utf8(), C.user_id: pl.Int32(), C.track_id: pl.Utf8(), _EVENT: pl.Utf8()}, file
    )
    events = raw.select(
        pl.col(_TS),
        pl.col(C.user_id),
        pl.col(C.track_id).cast(pl.Utf8).str.strip_chars().alias("source_track"),
        pl.col(_EVENT).cast(pl.Utf8).str.strip_chars().str.to_lowercase(),
    ).with_columns(pl.when(pl.col("source_track").str.len_chars() > 0).then(pl.col("source_track")))

    no_user = pl.col(C.user_id).is_null()
    dropped.add(f"{file}: events without a user", events.filter(no_user).height)
    events = events.filter(~no_user)
    if events.schema[C.user_id] == pl.Utf8:
        text = pl.col(C.user_id).str.strip_chars()
        numeric = text.str.contains(r"^[0-9]+$")
        n_numeric = events.select(numeric.sum()).item()
        if n_numeric == events.height:  # integers written as strings: the same ids
            events = events.with_columns(text.cast(pl.Int64))
        elif n_numeric:  # some integers, some not: renumbering would change every user's id
            bad = events.with_row_index("line", offset=1).filter(~numeric).head(5)
            shown = "; ".join(f"line {line}: {user!r}" for line, user in bad.select("line", C.user_id).rows())
            raise DataContractError(
                file,
                C.user_id,
                f"mixes integer and other ids ({events.height - n_numeric} not integers: {shown})",
            )
    if events.schema[C.user_id] == pl.Utf8:  # string ids throughout: mapped to 1..n, kept in extra
        user_map = dense_ids(events.get_column(C.user_id), C.user_id)
        extra["user_id_map"] = user_map
        events = (
            events.rename({C.user_id: "source_user"})
            .join(user_map, left_on="source_user", right_on="source_id")
            .drop("source_user")
        )
    else:
        events = check_dtype(events, C.user_id, pl.Int32(), file)

    no_time = pl.col(_TS).is_null()
    dropped.add(f"{file}: events without a timestamp", events.filter(no_time).height)
    events = events.filter(~no_time)
    events = events.with_columns(_parse_timestamps(events, file))

    no_track = pl.col("source_track").is_null()
    by_type = events.filter(no_track).group_by(_EVENT).len()
    for event_type, n in by_type.iter_rows():
        dropped.add(f"{file}: events without a track ({event_type})", n)
    events = events.filter(~no_track)

    unweighted = ~pl.col(_EVENT).is_in(list(weights)) | pl.col(_EVENT).is_null()
    by_type = events.filter(unweighted).group_by(_EVENT).len()
    for event_type, n in by_type.iter_rows():
        dropped.add(f"{file}: events of a type with no weight ({event_type})", n)
    events = events.filter(~unweighted)

    # an exact repeat of an event (same user, track, time and type: a line written twice) would
    # count its weight twice; it is merged and counted instead
    distinct = events.unique(maintain_order=True)
    dropped.add(f"{file}: exact duplicate events merged", events.height - distinct.height)
    return distinct.select(
        C.user_id,
        "source_track",
        pl.col(_TS).alias(C.started_at),
        pl.col(_EVENT).replace_strict(weights, return_dtype=pl.Float32).alias(C.weight),
    )


def _parse_timestamps(events: pl.DataFrame, file: str) -> pl.Series:
    """ISO timestamps with or without fractional seconds (both occur) as Datetime("ns")."""
    column = events.get_column(_TS)
    if isinstance(column.dtype, pl.Datetime):
        return column.cast(pl.Datetime("ns"))
    if column.dtype != pl.Utf8:
        raise DataContractError(
            file, _TS, f"wrong type {column.dtype}, expected ISO date strings", events.select(_TS).head()
        )
    parsed = column.str.to_date(strict=False).cast(pl.Datetime("ns"))
    for fmt in reversed(TIMESTAMP_FORMATS):
        parsed = column.str.to_datetime(fmt, strict=False, time_unit="ns").fill_null(parsed)
    bad = parsed.is_null()
    if bad.any():
        raise DataContractError(
            file,
            _TS,
            f"{int(bad.sum())} values do not parse as dates",
            events.filter(bad).select(_TS, C.user_id, _EVENT),
        )
    return parsed.alias(_TS)


def _read_catalog(folder: Path, notes: list[str]) -> pl.DataFrame:
    """``tracks.jsonl`` checked (ids unique), or an empty frame when the file is absent."""
    path = folder / TRACKS_FILE
    if not path.is_file():
        notes.append(
            f"no {TRACKS_FILE}: tracks carry no artist or genre, names are the ids, no audio features"
        )
        return pl.DataFrame(schema={"id": pl.Utf8, "id_artist": pl.Utf8})
    raw = read_jsonl(path)
    check_columns(raw, {"id": pl.Utf8(), "id_artist": pl.Utf8()}, TRACKS_FILE)
    raw = raw.with_columns(pl.col("id", "id_artist").cast(pl.Utf8).str.strip_chars())
    check_not_null(raw, ["id"], TRACKS_FILE)
    check_unique(raw, ["id"], TRACKS_FILE, "track id")
    return raw


def _read_artists(folder: Path, notes: list[str]) -> pl.DataFrame:
    """``artists.jsonl`` as ``id``, ``name``, ``genres`` (list of strings); empty when absent."""
    path = folder / ARTISTS_FILE
    schema = {"id": pl.Utf8, C.name: pl.Utf8, C.genres: pl.List(pl.Utf8)}
    if not path.is_file():
        notes.append(f"no {ARTISTS_FILE}: artists have no genres and are named by their id")
        return pl.DataFrame(schema=schema)
    raw = read_jsonl(path)
    check_columns(raw, schema, ARTISTS_FILE)
    if not isinstance(raw.schema[C.genres], pl.List | pl.Null):
        raise DataContractError(
            ARTISTS_FILE,
            C.genres,
            f"wrong type {raw.schema[C.genres]}, expected a list of genre names",
            raw.select("id", C.genres),
        )
    raw = raw.select(
        pl.col("id").cast(pl.Utf8).str.strip_chars(),
        pl.col(C.name).cast(pl.Utf8),
        pl.col(C.genres).cast(pl.List(pl.Utf8)).fill_null([]),
    )
    check_not_null(raw, ["id"], ARTISTS_FILE)
    check_unique(raw, ["id"], ARTISTS_FILE, "artist id")
    return raw


def _tracks_and_names(
    folder: Path,
    catalog: pl.DataFrame,
    track_map: pl.DataFrame,
    notes: list[str],
    extra: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """Tracks (artist = ``id_artist``, genres = the artist's genres), names and features."""
    artists = (
        _read_artists(folder, notes)
        if catalog.height
        else pl.DataFrame(schema={"id": pl.Utf8, C.name: pl.Utf8, C.genres: pl.List(pl.Utf8)})
    )
    artist_map = dense_ids(pl.concat([artists["id"], catalog["id_artist"]]), "artist_id")
    genre_map = dense_ids(artists[C.genres].explode(), "genre_id")
    extra["artist_id_map"] = artist_map
    extra["genre_id_map"] = genre_map

    artist_genres = (
        artists.select("id", C.genres)
        .explode(C.genres)
        .join(genre_map, left_on=C.genres, right_on="source_id")
        .group_by("id")
        .agg(pl.col("genre_id").unique().sort().alias(C.genres))
        .join(artist_map, left_on="id", right_on="source_id")
    )
    per_track = (
        catalog.select("id", "id_artist")
        .join(artist_map, left_on="id_artist", right_on="source_id", how="left")
        .join(artist_genres.select("artist_id", C.genres), on="artist_id", how="left")
    )
    empty = pl.lit([], dtype=pl.List(pl.Int32))
    tracks = (
        track_map.join(per_track, left_on="source_id", right_on="id", how="left")
        .select(
            pl.col(C.track_id),
            empty.alias(C.albums),
            pl.when(pl.col("artist_id").is_not_null())
            .then(pl.concat_list(pl.col("artist_id").cast(pl.Int32)))
            .otherwise(empty)
            .alias(C.artists),
            pl.col(C.genres).cast(pl.List(pl.Int32)).fill_null(empty),
        )
        .sort(C.track_id)
    )
    n_no_artist = tracks.filter(pl.col(C.artists).list.len() == 0).height
    n_no_genre = tracks.filter(pl.col(C.genres).list.len() == 0).height
    notes.append(
        f"{tracks.height} tracks ({catalog.height} in {TRACKS_FILE}); {n_no_artist} "
        f"with no artist, {n_no_genre} with no genre; no albums in this format"
    )

    track_names = track_map.join(
        catalog.select(
            "id", pl.col(C.name) if C.name in catalog.columns else pl.lit(None, pl.Utf8).alias(C.name)
        ),
        left_on="source_id",
        right_on="id",
        how="left",
    ).with_columns(pl.col(C.name).cast(pl.Utf8).fill_null(pl.col("source_id")))
    artist_names = artist_map.join(
        artists.select("id", C.name), left_on="source_id", right_on="id", how="left"
    ).with_columns(pl.col(C.name).fill_null(pl.col("source_id")))
    names = pl.concat(
        [
            names_frame(track_names[C.track_id], track_names[C.name], "track"),
            names_frame(artist_names["artist_id"], artist_names[C.name], "artist"),
            names_frame(genre_map["genre_id"], genre_map["source_id"], "genre"),
        ]
    )
    return tracks, names, _features(catalog, track_map)


def _features(catalog: pl.DataFrame, track_map: pl.DataFrame) -> pl.DataFrame | None:
    """Audio features present in ``tracks.jsonl`` as Float32, plus ``release_year``."""
    present = [c for c in AUDIO_FEATURES if c in catalog.columns]
    if not catalog.height or not (present or "release_date" in catalog.columns):
        return None
    frame = catalog.join(track_map, left_on="id", right_on="source_id")
    for column in present:
        frame = check_dtype(frame, column, pl.Float32(), TRACKS_FILE)
    columns = [pl.col(c) for c in present]
    if "release_date" in frame.columns:
        # '2011-01-01', '1968-12' and '1993' all occur: the year is the common part
        columns.append(
            pl.col("release_date")
            .cast(pl.Utf8)
            .str.slice(0, 4)
            .cast(pl.Float32, strict=False)
            .alias("release_year")
        )
    return frame.select(pl.col(C.track_id), *columns).sort(C.track_id)
