"""Adapter for HetRec 2011 Last.fm 2k: artists play the role of tracks.

Files (tab separated, UTF-8 except ``tags.dat``, which is latin-1):
``user_taggedartists.dat`` (userID, artistID, tagID, day, month, year),
``user_artists.dat`` (userID, artistID, weight = play count, no time),
``artists.dat`` (id, name, url, pictureURL) and ``tags.dat`` (tagID, tagValue).

Ids stay in the source's id space: ``user_id`` = userID, ``track_id`` =
artistID, and each track's ``artists`` is ``[artistID]`` (the artist is its
own artist); genres are tagIDs, named from ``tags.dat``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from musicrec.config import LastfmConfig
from musicrec.schema import (
    C,
    DataContractError,
    DropReport,
    check_columns,
    check_dtype,
    check_not_null,
    check_unique,
)
from musicrec.sources.base import SourceData, names_frame, require_files
from musicrec.sources.movielens import read_table

SOURCE = "lastfm"
TAGGED_FILE = "user_taggedartists.dat"
PLAYS_FILE = "user_artists.dat"
ARTISTS_FILE = "artists.dat"
TAGS_FILE = "tags.dat"

_USER, _ARTIST, _TAG = "userID", "artistID", "tagID"


def load(folder: Path, options: LastfmConfig) -> SourceData:
    """Read a HetRec Last.fm folder into canonical frames.

    A (user, artist) pair is an interaction when the user tagged the artist:
    its time is the first tagging date (month resolution in practice: the day
    is almost always 1). Its weight is ``1 + log1p(plays)`` from
    ``user_artists.dat``, so a tagged artist never played counts 1 and play
    counts (heavy-tailed, up to 350k) add a log-damped confidence. Dropped and
    counted: tag events dated before ``options.first_year`` (bogus years such as
    1956), and play-count pairs with no dated tag event, which have no time and
    cannot be placed in the history, labels or test windows. Repeat tag events
    of a kept pair are counted as merged, so raw tag events = interactions +
    the ``dropped`` total of tag events.

    Genres are each artist's ``options.top_tags_per_artist`` most used tags
    over all users (ties by the smaller tagID), from every tag event: a tag's
    meaning does not depend on when it was given.

    Parameters
    ----------
    folder
        Folder holding the four HetRec files.
    options
        ``first_year`` and ``top_tags_per_artist``.
    """
    folder = Path(folder)
    require_files(folder, SOURCE, TAGGED_FILE, PLAYS_FILE, ARTISTS_FILE, TAGS_FILE)
    dropped = DropReport()
    notes: list[str] = []

    tagged = _read(
        folder / TAGGED_FILE,
        {
            _USER: pl.Int32(),
            _ARTIST: pl.Int32(),
            _TAG: pl.Int32(),
            "day": pl.Int32(),
            "month": pl.Int32(),
            "year": pl.Int32(),
        },
    )
    plays = _read(folder / PLAYS_FILE, {_USER: pl.Int32(), _ARTIST: pl.Int32(), "weight": pl.Float64()})
    check_unique(plays, [_USER, _ARTIST], PLAYS_FILE, "(user, artist) pair")
    artists = _read(folder / ARTISTS_FILE, {"id": pl.Int32(), C.name: pl.Utf8()}, ids=("id",))
    check_unique(artists, ["id"], ARTISTS_FILE, "artist id")
    tags = _read(folder / TAGS_FILE, {_TAG: pl.Int32(), "tagValue": pl.Utf8()}, ids=(_TAG,))
    check_unique(tags, [_TAG], TAGS_FILE, "tag id")

    bogus = pl.col("year") < options.first_year
    n_bogus = tagged.filter(bogus).height
    dropped.add(f"{TAGGED_FILE}: tag events dated before {options.first_year}", n_bogus)
    if n_bogus:
        years = tagged.filter(bogus).get_column("year").unique().sort().to_list()
        notes.append(f"{n_bogus} tag events with bogus years {years} dropped")
    dated = _with_date(tagged.filter(~bogus))

    pairs = dated.group_by(_USER, _ARTIST).agg(pl.col(C.started_at).min())
    dropped.add(
        f"{TAGGED_FILE}: repeat tag events of a (user, artist) pair merged into its row",
        dated.height - pairs.height,
    )
    untimed = plays.join(pairs, on=[_USER, _ARTIST], how="anti").height
    dropped.add(f"{PLAYS_FILE}: play-count pairs with no dated tag event (no time)", untimed)
    notes.append(
        f"{untimed} of {plays.height} play-count pairs have no dated tag event and "
        f"are dropped; {plays.height - untimed} give the weight of a tagged pair"
    )

    interactions = (
        pairs.join(plays, on=[_USER, _ARTIST], how="left")
        .select(
            pl.col(_USER).alias(C.user_id),
            pl.col(_ARTIST).alias(C.track_id),
            pl.col(C.started_at),
            (1.0 + pl.col("weight").fill_null(0.0).log1p()).cast(pl.Float32).alias(C.weight),
        )
        .sort(C.user_id, C.started_at, C.track_id)
    )
    notes.append(
        f"{interactions.filter(pl.col(C.weight) == 1).height} interactions are tagged "
        "artists with no play count (weight 1)"
    )

    tracks, names = _tracks_and_names(tagged, interactions, artists, tags, options, notes)
    return SourceData(
        interactions=interactions, tracks=tracks, catalog_names=names, dropped=dropped, notes=notes
    )


def _read(path: Path, expected: dict[str, pl.DataType], ids: tuple[str, ...] = ()) -> pl.DataFrame:
    """A tab-separated HetRec file with the expected columns cast; ids and numbers not null."""
    frame = read_table(path, "\t", infer_schema_length=None)
    check_columns(frame, expected, path.name)
    for column, dtype in expected.items():
        frame = check_dtype(frame, column, dtype, path.name)
    numeric = [c for c, dtype in expected.items() if dtype.is_numeric()]
    check_not_null(frame, list(ids) or numeric, path.name)
    return frame


def _with_date(tagged: pl.DataFrame) -> pl.DataFrame:
    """``started_at`` from day, month, year; impossible dates are a contract error."""
    text = pl.format("{}-{}-{}", "year", "month", "day")
    out = tagged.with_columns(
        text.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("ns")).alias(C.started_at)
    )
    bad = out.get_column(C.started_at).is_null()
    if bad.any():
        raise DataContractError(
            TAGGED_FILE,
            "day, month, year",
            f"{int(bad.sum())} rows are not valid dates",
            out.filter(bad).drop(C.started_at),
        )
    return out


def _tracks_and_names(
    tagged: pl.DataFrame,
    interactions: pl.DataFrame,
    artists: pl.DataFrame,
    tags: pl.DataFrame,
    options: LastfmConfig,
    notes: list[str],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every artist a track (its own artist, its top tags as genres), and the names."""
    top_tags = (
        tagged.group_by(_ARTIST, _TAG)
        .len()
        .group_by(_ARTIST)
        .agg(
            pl.col(_TAG)
            .sort_by(["len", _TAG], descending=[True, False])
            .head(options.top_tags_per_artist)
            .alias(C.genres)
        )
    )
    ids = pl.concat([artists.get_column("id"), interactions.get_column(C.track_id)]).unique()
    missing = ids.len() - artists.height
    if missing:
        notes.append(
            f"{missing} tagged artists are missing from {ARTISTS_FILE}: kept as tracks, named by their id"
        )
    empty = pl.lit([], dtype=pl.List(pl.Int32))
    tracks = (
        ids.sort()
        .to_frame(C.track_id)
        .join(top_tags, left_on=C.track_id, right_on=_ARTIST, how="left")
        .select(
            C.track_id,
            empty.alias(C.albums),
            pl.concat_list(pl.col(C.track_id)).alias(C.artists),
            pl.col(C.genres).cast(pl.List(pl.Int32)).fill_null(empty),
        )
    )
    no_genre = tracks.filter(pl.col(C.genres).list.len() == 0).height
    notes.append(f"{tracks.height} artists as tracks ({no_genre} never tagged: no genre)")
    named = (
        tracks.select(C.track_id)
        .join(artists.select("id", C.name), left_on=C.track_id, right_on="id", how="left")
        .with_columns(pl.col(C.name).fill_null(pl.col(C.track_id).cast(pl.Utf8)))
    )
    names = pl.concat(
        [
            names_frame(named[C.track_id], named[C.name], "track"),
            names_frame(named[C.track_id], named[C.name], "artist"),
            names_frame(tags[_TAG], tags["tagValue"], "genre"),
        ]
    )
    return tracks, names
