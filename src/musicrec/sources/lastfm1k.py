"""Adapter for Last.fm 1K (Òscar Celma, "Last.fm Dataset - 1K users"): a listening log.

Files, in the raw folder (``DATA_PATH``, else ``data/raw/lastfm1k``):

- ``userid-timestamp-artid-artname-traid-traname.tsv`` (``data.lastfm1k.file``): one line per
  scrobble, tab separated, no header, six fields: user (``user_000001``), time (ISO-8601 UTC,
  ``2009-05-04T23:08:57Z``), artist MusicBrainz id, artist name, track MusicBrainz id, track
  name. Either id may be empty. About 19M lines from 992 users, 2005 to 2009.
- ``userid-profile.tsv`` (gender, age, country, registration date): optional and not read; the
  contract needs no user attributes.

Mapping to the canonical form:

- **Users** keep Last.fm's number: ``user_000001`` is ``user_id`` 1.
- **Tracks** are keyed by their MusicBrainz id where the line has one, else by (artist name,
  track name): the same title under two artists is two tracks. **Artists** are keyed by their
  MusicBrainz id, else by name. Both get int32 ids 1..n in the sorted order of their keys (keys
  with an id sort before keys by name), so the ids depend on the file alone; the maps are kept
  beside the data (``extra["track_id_map"]``, ``extra["artist_id_map"]``). A track's one artist
  is the artist it is most often listed under (ties by the smaller key); no albums, no genres.
  ``catalog_names`` names tracks and artists by their most frequent spelling (an artist known
  only by an id with no name is named by that id).
- **One interaction per (user, track).** Users replay tracks, so a pair's listens are merged
  into one row: ``started_at`` = its first listen, and ``weight = log2(1 + plays)`` (one play
  weighs 1, three plays 2, seven 3: replays add a damped confidence, the same idea as Yambda's
  weight in :mod:`musicrec.sources.yambda`).
- **track_seq** is an int16: a user's most recent ``data.lastfm1k.max_tracks_per_user``
  (32,767) tracks by first listen are kept; earlier ones are dropped and counted.

Every line is accounted for: lines = interactions + the ``dropped`` total. Dropped, one reason
per line, in this order: malformed lines (not six tab-separated fields, blank lines
included), lines with no user, a user not of the form ``user_<number>``, no time, no track
name, a time before ``data.lastfm1k.first_year``; then the repeat listens merged into their
pair and the pairs beyond the per-user cap. A file that is not this log stops the load with an error
naming the file and the first offending lines: a time that does not parse, more than
``data.lastfm1k.max_malformed_share`` (1%) malformed lines, or no usable line at all.

The log is read lazily with polars' streaming engine (each line whole, split on tabs, so that
lines with too few or too many fields can be told apart; invalid UTF-8 bytes become U+FFFD):
one pass counts the lines by reason, a second groups the usable ones by (user, track) and
(track, artist, names), so memory holds the pairs, never the 19M lines.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from musicrec.config import LastfmOneKConfig
from musicrec.schema import INTERACTIONS_SCHEMA, N_EXAMPLES, C, DataContractError, DropReport
from musicrec.sources.base import EMPTY_IDS, INT32_MAX, SourceData, names_frame, require_files

SOURCE = "lastfm1k"
PROFILE_FILE = "userid-profile.tsv"
FIELDS = ("userid", "timestamp", "artid", "artname", "traid", "traname")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

#: Why a line is not an interaction of its own, in the order the reasons are tested.
REASONS = {
    "malformed": "malformed lines (not 6 tab-separated fields)",
    "no_user": "lines with no userid",
    "bad_user": "lines whose userid is not user_<number>",
    "no_time": "lines with no timestamp",
    "no_track": "lines with no track name",
    "early": "listens dated before data.lastfm1k.first_year ({first_year})",
}
#: Never in the text: each line is read as one field.
_NO_SEPARATOR = "\x00"


def load(folder: Path, options: LastfmOneKConfig) -> SourceData:
    """Read the Last.fm 1K listening log into canonical frames (see the module docstring).

    Parameters
    ----------
    folder
        The folder holding the log (``data.lastfm1k.file``).
    options
        The file name, the earliest plausible year, the share of malformed lines tolerated and
        the per-user cap.

    Returns
    -------
    SourceData
        Interactions (a lazy frame over the aggregated pairs, with ``track_seq``), tracks,
        names, and ``extra``: ``track_id_map`` and ``artist_id_map``.
    """
    folder = Path(folder)
    require_files(folder, SOURCE, options.file)
    path = folder / options.file
    file = options.file
    dropped = DropReport()

    lines = _lines(path, options)
    counts = _count_reasons(lines, file, options)
    n_lines = sum(counts.values())
    for key, text in REASONS.items():
        dropped.add(f"{file}: {text.format(first_year=options.first_year)}", counts.get(key, 0))
    n_usable = counts.get("ok", 0)

    fine = (
        lines.filter(pl.col("reason") == "ok")
        .select(
            C.user_id,
            "ts",
            _track_key().alias("track_key"),
            _artist_key().alias("artist_key"),
            "artname",
            "traname",
        )
        .group_by(C.user_id, "track_key", "artist_key", "artname", "traname")
        .agg(pl.col("ts").min().alias("first"), pl.len().alias("plays"))
        .collect(engine="streaming")
    )
    tracks, names, track_map, artist_map, track_ids = _catalogue(fine)
    pairs = (
        fine.group_by(C.user_id, "track_key")
        .agg(pl.col("first").min(), pl.col("plays").sum())
        .join(track_ids, on="track_key", how="left")
        .drop("track_key")
    )
    del fine
    dropped.add(
        f"{file}: repeat listens of a (user, track) pair merged into its row", n_usable - pairs.height
    )
    n_pairs = pairs.height

    interactions, n_capped = _numbered(pairs, options.max_tracks_per_user)
    dropped.add(
        f"{file}: a user's earliest tracks beyond data.lastfm1k.max_tracks_per_user "
        f"({options.max_tracks_per_user}; track_seq is int16)",
        n_capped,
    )
    canonical = interactions.select(
        C.user_id,
        C.track_id,
        pl.col("first").cast(pl.Datetime("ns")).alias(C.started_at),
        C.track_seq,
        (1.0 + pl.col("plays").cast(pl.Float64)).log(2).cast(pl.Float32).alias(C.weight),
    )
    first, last = canonical.get_column(C.started_at).min(), canonical.get_column(C.started_at).max()
    by_mbid = track_map.get_column("mbid").is_not_null().sum()
    notes = [
        f"Last.fm 1K listening log {file}: {n_lines:,} lines, {n_usable:,} usable listens from "
        f"{canonical.get_column(C.user_id).n_unique():,} users, {first:%Y-%m-%d} to {last:%Y-%m-%d}",
        f"{n_pairs:,} (user, track) pairs from {n_usable:,} listens: started_at = a pair's first "
        "listen, weight = log2(1 + plays)",
        f"{tracks.height:,} tracks: {by_mbid:,} keyed by their MusicBrainz id, "
        f"{tracks.height - by_mbid:,} by (artist name, track name); {artist_map.height:,} artists "
        "(by MusicBrainz id, else by name); no albums and no genres",
        f"{PROFILE_FILE} (user attributes) is not read"
        + ("" if (folder / PROFILE_FILE).is_file() else f"; there is none in {folder}"),
    ]
    return SourceData(
        interactions=canonical.lazy(),
        tracks=tracks,
        catalog_names=names,
        dropped=dropped,
        extra={"track_id_map": track_map, "artist_id_map": artist_map},
        notes=notes,
    )


# --------------------------------------------------------------------------- reading


def _lines(path: Path, options: LastfmOneKConfig) -> pl.LazyFrame:
    """The log, one row per line (``line``: 1-based), split into its fields (empty is null), the
    user's number, the parsed time and the reason a line is dropped (``ok`` when it is not)."""
    raw = pl.scan_csv(
        path,
        has_header=False,
        separator=_NO_SEPARATOR,
        quote_char=None,
        schema={"text": pl.Utf8},
        encoding="utf8-lossy",
        truncate_ragged_lines=True,
    ).with_row_index("line", offset=1)
    text = pl.col("text").str.strip_suffix("\r")
    split = text.str.split_exact("\t", len(FIELDS) - 1).struct.rename_fields(list(FIELDS))
    fields = [
        _blank_is_null(pl.col("fields").struct.field(name).str.strip_chars()).alias(name) for name in FIELDS
    ]
    number = pl.col("userid").str.extract(r"^user_(\d{1,9})$").cast(pl.Int64)
    early = pl.datetime(options.first_year, 1, 1, time_unit="ns")
    reason = (
        pl.when(pl.col("tabs") != len(FIELDS) - 1)
        .then(pl.lit("malformed"))
        .when(pl.col("userid").is_null())
        .then(pl.lit("no_user"))
        .when(number.is_null() | (number > INT32_MAX))
        .then(pl.lit("bad_user"))
        .when(pl.col("timestamp").is_null())
        .then(pl.lit("no_time"))
        .when(pl.col("ts").is_null())
        .then(pl.lit("bad_time"))
        .when(pl.col("traname").is_null())
        .then(pl.lit("no_track"))
        .when(pl.col("ts") < early)
        .then(pl.lit("early"))
        .otherwise(pl.lit("ok"))
    )
    return (
        raw.with_columns(
            text.str.count_matches("\t", literal=True).fill_null(0).alias("tabs"),
            split.alias("fields"),
        )
        .with_columns(fields)
        .with_columns(
            pl.col("timestamp").str.to_datetime(TIME_FORMAT, time_unit="ns", strict=False).alias("ts"),
        )
        .with_columns(
            reason.alias("reason"), number.clip(upper_bound=INT32_MAX).cast(pl.Int32).alias(C.user_id)
        )
        .with_columns(
            pl.col("artid").str.to_lowercase(),
            pl.col("traid").str.to_lowercase(),
        )
    )


def _blank_is_null(value: pl.Expr) -> pl.Expr:
    return pl.when(value.str.len_bytes() > 0).then(value)


def _count_reasons(lines: pl.LazyFrame, file: str, options: LastfmOneKConfig) -> dict[str, int]:
    """Lines per reason, from one streaming pass; a file that is not the log stops here."""
    counts = dict(
        lines.group_by("reason").len().collect(engine="streaming").select("reason", "len").iter_rows()
    )
    total = sum(counts.values())
    if total == 0:
        raise DataContractError(file, None, "the file is empty (no lines)")

    def examples(reason: str, *columns: str) -> pl.DataFrame:
        return (
            lines.filter(pl.col("reason") == reason)
            .select("line", *columns)
            .head(N_EXAMPLES)
            .collect(engine="streaming")
        )

    if counts.get("bad_time"):
        shown = examples("bad_time", "timestamp")
        raise DataContractError(
            file,
            "timestamp (field 2)",
            f"{counts['bad_time']:,} lines have a timestamp that is not ISO-8601 UTC "
            f"({TIME_FORMAT.replace('%', '')}, as 2009-05-04T23:08:57Z), first on line {shown['line'][0]}",
            shown,
        )
    malformed = counts.get("malformed", 0)
    if malformed and (malformed == total or malformed > options.max_malformed_share * total):
        shown = examples("malformed", "tabs", "text").with_columns(
            (pl.col("tabs") + 1).alias("fields"), pl.col("text").str.slice(0, 80)
        )
        raise DataContractError(
            file,
            None,
            f"{malformed:,} of {total:,} lines ({malformed / total:.1%}) do not have "
            f"{len(FIELDS)} tab-separated fields ({', '.join(FIELDS)}), more than "
            f"data.lastfm1k.max_malformed_share ({options.max_malformed_share:.1%}): is this the "
            f"Last.fm 1K listening log? First on line {shown['line'][0]}",
            shown.select("line", "fields", "text"),
        )
    if not counts.get("ok"):
        described = "; ".join(
            f"{REASONS[k].format(first_year=options.first_year)}: {n:,}"
            for k, n in counts.items()
            if k in REASONS
        )
        raise DataContractError(file, None, f"none of its {total:,} lines is a usable listen ({described})")
    return counts


def _track_key() -> pl.Expr:
    """``m<TAB>mbid`` for a track with a MusicBrainz id, else ``n<TAB>artist name<TAB>track name``
    (names hold no tabs: the tab separates the fields)."""
    by_name = pl.concat_str(pl.lit("n\t"), pl.col("artname").fill_null(""), pl.lit("\t"), pl.col("traname"))
    return pl.when(pl.col("traid").is_not_null()).then(pl.lit("m\t") + pl.col("traid")).otherwise(by_name)


def _artist_key() -> pl.Expr:
    """``m<TAB>mbid`` for an artist with a MusicBrainz id, else ``n<TAB>name``; null for neither."""
    return (
        pl.when(pl.col("artid").is_not_null())
        .then(pl.lit("m\t") + pl.col("artid"))
        .otherwise(pl.lit("n\t") + pl.col("artname"))
    )


# --------------------------------------------------------------------------- catalogue


def _most_frequent(frame: pl.DataFrame, key: str, value: str) -> pl.DataFrame:
    """Per ``key``, the ``value`` with the most plays (ties by the smaller value; nulls last)."""
    return (
        frame.group_by(key, value)
        .agg(pl.col("plays").sum())
        .sort([key, "plays", value], descending=[False, True, False], nulls_last=True)
        .unique(key, keep="first", maintain_order=True)
        .select(key, value)
    )


def _catalogue(
    fine: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Tracks (each with its most frequent artist), names, the track and artist id maps (as
    kept beside the data), and ``track_key`` -> ``track_id``."""
    track_artist = _most_frequent(fine.filter(pl.col("artist_key").is_not_null()), "track_key", "artist_key")
    track_name = _most_frequent(fine, "track_key", "traname")
    track_keys = fine.get_column("track_key").unique().sort()
    if track_keys.len() > INT32_MAX:
        raise DataContractError("lastfm1k", "track_id", f"{track_keys.len():,} tracks do not fit int32 ids")
    track_map = (
        pl.DataFrame({"track_key": track_keys})
        .with_row_index(C.track_id, offset=1)
        .with_columns(pl.col(C.track_id).cast(pl.Int32))
        .join(track_name, on="track_key", how="left")
        .join(track_artist, on="track_key", how="left")
    )
    artist_keys = track_map.get_column("artist_key").drop_nulls().unique().sort()
    artist_name = _most_frequent(
        fine.filter(pl.col("artist_key").is_in(artist_keys.implode())), "artist_key", "artname"
    )
    artist_map = (
        pl.DataFrame({"artist_key": artist_keys})
        .with_row_index("artist_id", offset=1)
        .with_columns(pl.col("artist_id").cast(pl.Int32))
        .join(artist_name, on="artist_key", how="left")
        .with_columns(
            _mbid("artist_key").alias("mbid"),
            pl.col("artname").fill_null(_mbid("artist_key")).alias(C.name),
        )
    )
    track_map = track_map.join(artist_map.select("artist_key", "artist_id"), on="artist_key", how="left")
    tracks = track_map.select(
        C.track_id,
        EMPTY_IDS.alias(C.albums),
        pl.when(pl.col("artist_id").is_null())
        .then(EMPTY_IDS)
        .otherwise(pl.concat_list(pl.col("artist_id")))
        .alias(C.artists),
        EMPTY_IDS.alias(C.genres),
    )
    names = pl.concat(
        [
            names_frame(track_map[C.track_id], track_map["traname"], "track"),
            names_frame(artist_map["artist_id"], artist_map[C.name], "artist"),
        ]
    )
    track_ids = track_map.select("track_key", C.track_id)
    track_map = track_map.select(
        C.track_id,
        _mbid("track_key").alias("mbid"),
        pl.col("traname").alias(C.name),
        pl.col("artist_id"),
    )
    artist_map = artist_map.select("artist_id", "mbid", C.name)
    return tracks, names, track_map, artist_map, track_ids


def _mbid(key: str) -> pl.Expr:
    """The MusicBrainz id of a key made by :func:`_track_key` or :func:`_artist_key` (null when
    the key is by name)."""
    return pl.when(pl.col(key).str.starts_with("m\t")).then(pl.col(key).str.slice(2))


# --------------------------------------------------------------------------- track_seq


def _numbered(pairs: pl.DataFrame, max_per_user: int) -> tuple[pl.DataFrame, int]:
    """Each user's pairs in the order of their first listen (ties by track id), the most recent
    ``max_per_user`` numbered 1.. as ``track_seq`` (int16); the earlier ones dropped, their count
    returned."""
    out = pairs.sort(C.user_id, "first", C.track_id).with_columns(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(C.user_id).alias("seq"),
        pl.len().over(C.user_id).cast(pl.Int64).alias("n"),
    )
    excess = (pl.col("n") - max_per_user).clip(lower_bound=0)
    keep = pl.col("seq") > excess
    n_capped = out.height - out.filter(keep).height
    out = out.filter(keep).with_columns(
        (pl.col("seq") - excess).cast(INTERACTIONS_SCHEMA[C.track_seq]).alias(C.track_seq)
    )
    return out.drop("seq", "n"), n_capped
