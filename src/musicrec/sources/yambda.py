"""Adapter for Yambda, Yandex's public Yandex Music data set (Hugging Face ``yandex/yambda``).

The flat layout has one folder per size (``flat/50m/``, ``flat/500m/``, ``flat/5b/``) and a
few files shared by every size at the top:

- events, in the size folder: ``multi_event.parquet`` (every event, with ``event_type``
  listen, like, unlike, dislike or undislike), or one file per type: ``listens.parquet``
  (``uid``, ``timestamp``, ``item_id``, ``is_organic``, ``played_ratio_pct``,
  ``track_length_seconds``) and ``likes``, ``dislikes``, ``unlikes``, ``undislikes``
  (``uid``, ``timestamp``, ``item_id``, ``is_organic``). ``multi_event.parquet`` is read when
  present (the per-type files beside it are then ignored); otherwise ``listens.parquet`` is
  required and a missing feedback file means no events of that type (said in the notes);
- shared: ``embeddings.parquet`` (``item_id``, ``embed``, ``normalized_embed``: 128 floats),
  ``artist_item_mapping.parquet`` (``artist_id``, ``item_id``) and
  ``album_item_mapping.parquet`` (``album_id``, ``item_id``); each is optional (a missing one
  is noted), looked for in the size folder, then the two folders above it.

The raw folder (``DATA_PATH``, else ``data/raw/yambda``) is the data set's root (holding
``flat/<size>/``), its ``flat/`` folder, or a size folder itself. ``data.yambda.size: 5b``
(4.79B events) is refused before any event is read: it needs the distributed engine.

Mapping to the canonical form (ids stay Yambda's: ``user_id`` = ``uid``, ``track_id`` =
``item_id``, artists and albums by their ids; every id must fit int32):

- **Time.** ``timestamp`` counts seconds (in 5-second steps) from the data set's own
  origin; there are no calendar dates, so timestamp 0 is mapped to midnight of
  ``data.yambda.origin`` (2024-01-01 unless set). Only the weekday pattern depends on that
  choice; the windows are counted in days.
- **Listen+.** A listen counts when ``played_ratio_pct >= data.yambda.listen_threshold``
  (50); values above 100 are replays within one event (250 = the track played two and a
  half times), not noise. Shorter listens are dropped and counted.
- **One interaction per (user, track).** Users replay tracks, so a pair's Listen+ events are
  merged into one row: ``started_at`` = its first Listen+, and ::

      plays  = sum(played_ratio_pct) / 100 over the pair's Listen+ events
      weight = log2(1 + plays) + like_weight * liked

  so one full listen weighs 1, three full listens 2, seven 3 (log-damped replays), a 250%
  replay 1.81, and a like adds ``data.yambda.like_weight`` (1.0).
- **Likes and dislikes** are applied per (user, track) in time order: like sets liked (and
  clears a dislike), dislike sets disliked (and clears a like), unlike clears liked,
  undislike clears disliked; events in the same 5-second step cancel each other (the pair
  is then neither liked nor disliked). A pair liked at the end with no Listen+ becomes an
  interaction of weight ``like_weight``, dated by that like. A pair disliked at the end is
  kept in ``extra["disliked_pairs"]`` (``user_id``, ``track_id``, ``disliked_at``); its
  Listen+ row stays in the interactions, and each window leaves it out only from the
  dislike on: the fitting and target windows drop the pairs disliked before the window's
  end (:class:`musicrec.split.Windows`), so a dislike in the test window never reaches back
  into the history the models are fitted on; the final list leaves out those disliked
  before the test window (:func:`musicrec.ranking.stage.disliked_before`). The state is the
  one at the end of the data: a dislike later undisliked counts nowhere.
- **Organic flag.** ``is_organic = 0`` marks recommendation-driven events.
  ``extra["organic_pairs"]`` has one row per interaction: ``user_id``, ``track_id``,
  ``is_organic`` (the event that dates the interaction was organic: its first Listen+, or
  the like of a liked-only pair; an organic event wins a tie), ``listens`` and
  ``organic_listens`` (Listen+ events) and ``liked``; the evaluation's segment ``organic``
  judges the models on those test listens (:func:`musicrec.evaluation.organic_listens`).
- **Catalogue.** The tracks are the interactions' tracks; their ``artists`` and ``albums``
  lists come from the mappings; Yambda has no genres. ``embeddings`` become
  ``track_features`` (``data.yambda.embedding``, ``normalized_embed`` by default, one Float32
  column ``emb_000`` .. per dimension) for the tracks that have one (not all do). There are
  no names: ``catalog_names`` calls them "track 123", "artist 45", "album 67".
- **track_seq** is an int16: a user's most recent ``data.yambda.max_tracks_per_user``
  (32,767) pairs are kept; earlier ones are dropped and counted.

Every event row is accounted for: raw events = interactions + the ``dropped`` total.
Events are read lazily with polars' streaming engine: one pass checks and counts them, then
the per-pair aggregation runs over ranges of users of about :data:`CHUNK_LISTENS` Listen+
events each (one range below that), so the data stage holds the pairs, never the events, and
the group-by's hash table only a range's pairs (the 500m size within 16 GB).
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import weakref
from collections import Counter
from pathlib import Path

import polars as pl

from musicrec.config import ProfileError, YambdaConfig
from musicrec.schema import (
    INTERACTIONS_SCHEMA,
    N_EXAMPLES,
    C,
    DataContractError,
    DropReport,
    check_columns,
    latest_plausible,
    reject_by_stats,
)
from musicrec.sources.base import EMPTY_IDS, INT32_MAX, SourceData, SourceError, require_files

SOURCE = "yambda"
MULTI_FILE = "multi_event.parquet"
LISTENS_FILE = "listens.parquet"
#: Feedback event type -> its file in the per-type layout.
FEEDBACK_FILES = {
    "like": "likes.parquet",
    "dislike": "dislikes.parquet",
    "unlike": "unlikes.parquet",
    "undislike": "undislikes.parquet",
}
EMBEDDINGS_FILE = "embeddings.parquet"
ARTISTS_FILE = "artist_item_mapping.parquet"
ALBUMS_FILE = "album_item_mapping.parquet"
SIZES = ("50m", "500m", "5b")
#: Yambda's timestamps come in steps of this many seconds
TIMESTAMP_STEP = 5
#: The 5b size as published (arXiv 2505.22238): events, users, tracks.
FIVE_B = (4_790_000_000, 1_000_000, 9_390_000)
#: Bytes per event of the listens columns read (uid, timestamp, item_id: 4; is_organic 1,
#: played_ratio_pct 2).
EVENT_BYTES = 15
#: Listen+ events aggregated per streaming pass (a range of users): bounds the group-by's memory.
CHUNK_LISTENS = 25_000_000

_UID, _TS, _ITEM, _ORGANIC, _RATIO, _TYPE = (
    "uid",
    "timestamp",
    "item_id",
    "is_organic",
    "played_ratio_pct",
    "event_type",
)
_FEEDBACK_COLUMNS = (_UID, _TS, _ITEM, _ORGANIC)
_UINT32_MAX = 2**32 - 1


def load(folder: Path, options: YambdaConfig) -> SourceData:
    """Read a Yambda flat folder into canonical frames (see the module docstring).

    Parameters
    ----------
    folder
        The data set's root (holding ``flat/<size>/``), its ``flat/`` folder, or a size
        folder (``flat/50m/``) itself.
    options
        Size, origin date, Listen+ threshold, like weight, embedding column and the
        per-user cap.

    Returns
    -------
    SourceData
        Interactions as a lazy frame over the aggregated pairs (with ``track_seq``), tracks,
        names, the embeddings as ``track_features`` (when present), and ``extra``:
        ``organic_pairs`` and ``disliked_pairs``. Above :data:`CHUNK_LISTENS` Listen+ events the
        pairs are made one range of users at a time (:func:`_user_ranges`), each range's rows
        written to parquet parts in a scratch folder (removed with the returned data), and the
        interactions and ``organic_pairs`` are lazy scans of the parts: memory holds one range's
        pairs and the feedback state, never every pair.
    """
    refuse_size(options.size)
    folder = Path(folder)
    events_dir = locate_events(folder, options.size)
    dropped = DropReport()
    notes: list[str] = []

    def label(path: Path) -> str:  # files are named relative to the raw folder in every message
        try:
            return str(path.relative_to(folder)) if path != folder else path.name
        except ValueError:
            return str(path)

    listens, listen_stats, feedback, raw_rows, files, last_event_ts = _read_events(
        events_dir, label, options, dropped, notes
    )
    listens_label = files["listen"]
    origin = dt.datetime.combine(options.origin, dt.time())
    if options.align_end:  # the last event's 5-second step ends at midnight
        origin += dt.timedelta(seconds=-(last_event_ts + TIMESTAMP_STEP) % 86_400)
    state = _feedback_state(feedback)
    ranges = _user_ranges(listens, listen_stats, options.listen_threshold)
    # above one range, each range's finished rows go to parquet parts in a scratch folder and are
    # read back lazily: memory holds one range's pairs, never all of them (the 500m size)
    scratch = Path(tempfile.mkdtemp(prefix="musicrec-yambda-")) if len(ranges) > 1 else None
    parts: dict[str, list] = {"interactions": [], "organic_pairs": [], "disliked": []}
    totals: Counter[str] = Counter()  # summed over the ranges (folded:<type>: feedback events)
    first_ts = last_ts = None
    try:
        for i, (lo, hi) in enumerate(ranges):
            frames, disliked, counts, span = _range_rows(listens, state, options, origin, lo, hi)
            totals.update(counts)
            parts["disliked"].append(disliked)
            if span is None:
                continue
            first_ts = span[0] if first_ts is None else min(first_ts, span[0])
            last_ts = span[1] if last_ts is None else max(last_ts, span[1])
            for name, frame in frames.items():
                if scratch is None:
                    parts[name].append(frame)
                else:
                    frame.write_parquet(scratch / f"{name}-{i:04d}.parquet")
                    parts[name].append(scratch / f"{name}-{i:04d}.parquet")
            del frames
        if totals["rows"] == 0:
            raise DataContractError(
                listens_label,
                _RATIO,
                f"no Listen+ (played_ratio_pct >= {options.listen_threshold}) and no likes",
            )
        first, last = origin + dt.timedelta(seconds=first_ts), origin + dt.timedelta(seconds=last_ts)
        if last > latest_plausible():
            raise ProfileError(
                f"data.yambda.origin: {options.origin} puts the last interaction (timestamp {last_ts:,} s) "
                f"on {last:%Y-%m-%d}, in the future; choose an origin at least "
                f"{last_ts // 86_400 + 1} days ago"
            )
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    del state
    dropped.add(
        f"{listens_label}: repeat Listen+ events of a (user, track) pair merged into its row",
        totals["listen_plus"] - totals["pairs"],
    )
    for event_type in FEEDBACK_FILES:
        dropped.add(
            f"{files.get(event_type)}: {event_type} events folded into their pair's like/dislike state",
            totals[f"folded:{event_type}"],
        )
    dropped.add(
        f"{listens_label}: a user's earliest pairs beyond data.yambda.max_tracks_per_user "
        f"({options.max_tracks_per_user}; track_seq is int16)",
        totals["capped"],
    )
    if scratch is None:
        canonical = pl.concat(parts["interactions"]).lazy()
        organic = pl.concat(parts["organic_pairs"])
    else:
        canonical = pl.scan_parquet(parts["interactions"])
        organic = pl.scan_parquet(parts["organic_pairs"])
    disliked = (
        pl.concat(parts["disliked"])
        .select(C.user_id, C.track_id, _at(origin, "disliked_ts").alias("disliked_at"))
        .sort(C.user_id, C.track_id)
    )
    n_rows, n_organic = totals["rows"], totals["organic"]

    track_ids = (
        canonical.select(pl.col(C.track_id).unique().sort())
        .collect(engine="streaming")
        .get_column(C.track_id)
    )
    shared = _shared_folders(events_dir, folder)
    catalogue_notes: list[str] = []
    tracks = _tracks(track_ids, shared, label, catalogue_notes)
    features = _features(track_ids, shared, label, options.embedding, catalogue_notes)
    names = _names(tracks)

    aligned = ", align_end: the last event's 5-second step ends at midnight" if options.align_end else ""
    notes += [
        f"timestamps are seconds from Yambda's own origin (5-second steps, no calendar dates): "
        f"timestamp 0 is mapped to {origin:%Y-%m-%d %H:%M:%S} (data.yambda.origin{aligned}), "
        f"so the interactions run from {first:%Y-%m-%d} to {last:%Y-%m-%d} "
        f"({(last.date() - first.date()).days + 1} days)",
        f"a listen counts (Listen+) when played_ratio_pct >= {options.listen_threshold}; values above "
        "100 are replays (250 = two and a half plays)",
        f"weight = log2(1 + plays) + {options.like_weight:g} * liked, plays = sum(played_ratio_pct) / 100 "
        "over the pair's Listen+ events; started_at = the first Listen+ (the like for a liked-only pair)",
        f"{n_rows:,} interactions from {raw_rows:,} events: {totals['pairs']:,} listened pairs "
        f"({totals['listen_plus']:,} Listen+ events), {totals['like_only']:,} liked-only pairs added, "
        f"{disliked.height:,} disliked pairs in disliked_pairs.parquet, {totals['listened_disliked']:,} "
        "of them listened: their rows stay, and each window leaves them out from the dislike on",
        f"{n_organic:,} interactions ({n_organic / n_rows:.1%}) are organic (is_organic of the "
        "event that dates them); organic_pairs.parquet flags each one",
        "no genres in Yambda: content features are the artists, albums and audio embeddings",
        *catalogue_notes,
    ]
    data = SourceData(
        interactions=canonical,
        tracks=tracks,
        catalog_names=names,
        track_features=features,
        dropped=dropped,
        extra={"organic_pairs": organic, "disliked_pairs": disliked},
        notes=notes,
    )
    if scratch is not None:  # the parts go when the data does (the data stage has written it by then)
        weakref.finalize(data, shutil.rmtree, scratch, True)
    return data


def _range_rows(
    listens: pl.LazyFrame,
    state: pl.DataFrame,
    options: YambdaConfig,
    origin: dt.datetime,
    lo: int | None,
    hi: int | None,
) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, Counter[str], tuple[int, int] | None]:
    """The finished rows of the users ``lo .. hi`` (:func:`_user_ranges`): their Listen+ pairs
    merged, combined with their feedback state and numbered, as the ``interactions`` and
    ``organic_pairs`` frames; their disliked pairs; the counts the notes and the drop report
    sum over the ranges; and the range's first and last ``first_ts`` (None: no rows)."""
    pairs = _listened_pairs(listens, options.listen_threshold, lo, hi)
    counts: Counter[str] = Counter(listen_plus=int(pairs.get_column("listens").sum()), pairs=pairs.height)
    interactions, disliked, combined = _combine(
        pairs, state.filter(_in_range(pl.col(C.user_id), lo, hi)), options
    )
    del pairs  # the pairs live on in ``interactions`` alone
    interactions, counts["capped"] = _numbered(interactions, options.max_tracks_per_user)
    counts.update({f"folded:{t}": n for t, n in combined["folded"].items()})
    counts.update(like_only=combined["like_only"], listened_disliked=combined["listened_disliked"])
    if interactions.height == 0:
        return {}, disliked, counts, None
    counts.update(rows=interactions.height, organic=int(interactions.get_column("is_organic").sum()))
    ts = interactions.get_column("first_ts")
    frames = {
        "interactions": interactions.select(
            pl.col(C.user_id),
            pl.col(C.track_id),
            _at(origin, "first_ts").alias(C.started_at),
            pl.col(C.track_seq),
            pl.col(C.weight),
        ),
        "organic_pairs": interactions.select(
            C.user_id,
            C.track_id,
            "is_organic",
            pl.col("listens").cast(pl.Int32),
            pl.col("organic_listens").cast(pl.Int32),
            "liked",
        ),
    }
    return frames, disliked, counts, (int(ts.min()), int(ts.max()))


def _at(origin: dt.datetime, seconds: str) -> pl.Expr:
    """``origin`` plus the column ``seconds``, as ``started_at``'s type."""
    return (pl.lit(origin).cast(pl.Datetime("ns")) + pl.duration(seconds=pl.col(seconds))).cast(
        pl.Datetime("ns")
    )


def _in_range(column: pl.Expr, lo: int | None, hi: int | None) -> pl.Expr:
    """Whether ``column`` lies in the inclusive range ``lo .. hi`` (None: unbounded)."""
    keep = pl.lit(True)
    if lo is not None:
        keep &= column >= lo
    if hi is not None:
        keep &= column <= hi
    return keep


# --------------------------------------------------------------------------- layout


def refuse_size(size: str) -> None:
    """Stop at once for a size the local engine cannot hold (5b), before any file is read."""
    if size != "5b":
        return
    events, users, items = FIVE_B
    dense = users * items * 4
    sparse = events * (4 + 4) + (users + 1) * 8
    raw = events * EVENT_BYTES
    raise ProfileError(
        f"data.yambda.size: 5b has {events / 1e9:.2f}B events from {users:,} users over {items:,} tracks, "
        f"too many for the local engine: a users-by-tracks matrix would need {dense / 1e12:.1f} TB dense "
        f"(float32) and up to {sparse / 1e9:.0f} GB sparse (CSR: a float32 value and an int32 index per "
        f"event), on top of {raw / 1e9:.0f} GB for the events themselves. It needs the distributed engine "
        "(engine: spark, a later issue); use data.yambda.size: 50m or 500m"
    )


def _has_events(folder: Path) -> bool:
    return (folder / MULTI_FILE).is_file() or (folder / LISTENS_FILE).is_file()


def locate_events(folder: Path, size: str) -> Path:
    """The folder with the events of ``size``: ``flat/<size>/``, ``<size>/`` or ``folder`` itself."""
    require_files(folder, SOURCE)
    if folder.name in SIZES and folder.name != size and _has_events(folder):
        raise SourceError(
            f"{SOURCE}: DATA_PATH={folder} is the {folder.name} folder, and data.yambda.size is {size}: "
            f"set data.yambda.size: {folder.name}, or point DATA_PATH at the data set's root"
        )
    for candidate in (folder / "flat" / size, folder / size, folder):
        if candidate.is_dir() and _has_events(candidate):
            return candidate
    present = sorted(
        p.name
        for base in (folder / "flat", folder)
        if base.is_dir()
        for p in base.iterdir()
        if p.name in SIZES
    )
    found = (
        f"sizes present: {', '.join(present)}"
        if present
        else f"found {sorted(p.name for p in folder.iterdir())}"
    )
    raise SourceError(
        f"{SOURCE}: no {size} events under {folder}: expected {folder / 'flat' / size}/ holding "
        f"{MULTI_FILE} or {LISTENS_FILE} (or DATA_PATH pointing at such a folder); {found}"
    )


def _shared_folders(events_dir: Path, folder: Path) -> list[Path]:
    """Where the shared files may be: the size folder, then up to two folders above it."""
    out: list[Path] = []
    for candidate in (events_dir, events_dir.parent, events_dir.parent.parent, folder):
        if candidate not in out:
            out.append(candidate)
    return out


def _find(shared: list[Path], name: str) -> Path | None:
    return next((d / name for d in shared if (d / name).is_file()), None)


# --------------------------------------------------------------------------- reading


def _scan(path: Path, file: str, integers: tuple[str, ...], numeric: tuple[str, ...] = ()) -> pl.LazyFrame:
    """Scan a parquet file; its columns and their kinds are checked from the footer alone."""
    try:
        frame = pl.scan_parquet(path)
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataContractError(file, None, f"not a readable parquet file ({exc})") from None
    check_columns(pl.DataFrame(schema=schema), dict.fromkeys((*integers, *numeric), pl.Int64()), file)
    for column in (*integers, *numeric):
        dtype = schema[column]
        ok = dtype.is_integer() or dtype == pl.Boolean or (column in numeric and dtype.is_numeric())
        if not ok and dtype != pl.Null:
            raise DataContractError(
                file,
                column,
                f"wrong type {dtype}, expected {'numbers' if column in numeric else 'integers'}",
                frame.select(column).head(N_EXAMPLES).collect(),
            )
    return frame


def _check_stats(frame: pl.LazyFrame, stats: dict, file: str, limits: dict[str, tuple[int, int]]) -> None:
    """Null or out-of-range ids and timestamps (from a streaming pass) stop the load with examples
    (the canonical form holds int32 ids)."""
    reject_by_stats(frame, stats, file, nulls=limits, limits=limits, shown=limits)


_LIMITS = {_UID: (0, INT32_MAX), _ITEM: (0, INT32_MAX), _TS: (0, _UINT32_MAX)}


def _stat_exprs(threshold: int | None) -> list[pl.Expr]:
    exprs = [pl.len().alias("rows")]
    for column in _LIMITS:
        exprs += [
            pl.col(column).null_count().alias(f"{column}_nulls"),
            pl.col(column).cast(pl.Int64).min().alias(f"{column}_min"),
            pl.col(column).cast(pl.Int64).max().alias(f"{column}_max"),
        ]
    exprs.append(pl.col(_ORGANIC).null_count().alias(f"{_ORGANIC}_nulls"))
    if threshold is not None:
        exprs += [
            (pl.col(_RATIO) >= threshold).sum().alias("plus"),
            pl.col(_RATIO).is_null().sum().alias("no_ratio"),
        ]
    return exprs


def _normalised(frame: pl.LazyFrame, with_ratio: bool, with_type: bool = False) -> pl.LazyFrame:
    """Ids as Int32 (their range is checked), timestamps Int64, organic as a boolean."""
    columns = [
        pl.col(_UID).cast(pl.Int32).alias(C.user_id),
        pl.col(_ITEM).cast(pl.Int32).alias(C.track_id),
        pl.col(_TS).cast(pl.Int64).alias("ts"),
        (pl.col(_ORGANIC).cast(pl.Int64) != 0).alias("organic"),
    ]
    if with_ratio:
        columns.append(pl.col(_RATIO).cast(pl.Int64).alias("ratio"))
    if with_type:
        columns.append(pl.col(_TYPE))
    return frame.select(columns)


def _check_organic(frame: pl.LazyFrame, stats: dict, file: str) -> None:
    if stats[f"{_ORGANIC}_nulls"]:
        raise DataContractError(
            file,
            _ORGANIC,
            f"{stats[f'{_ORGANIC}_nulls']:,} rows with a null value",
            frame.with_row_index("row").filter(pl.col(_ORGANIC).is_null()).head(N_EXAMPLES).collect(),
        )


def _read_events(
    events_dir: Path, label, options: YambdaConfig, dropped: DropReport, notes: list[str]
) -> tuple[pl.LazyFrame, dict, pl.LazyFrame, int, dict[str, str]]:
    """The listens (as published, lazily) and their statistics (``uid_min``, ``uid_max``,
    ``plus``: the Listen+ count), the feedback events (``user_id``, ``track_id``, ``ts``,
    ``organic``, ``event_type``, lazily), after one checking and counting pass; the raw row
    count and the file of each event type (for the drop reasons)."""
    threshold = options.listen_threshold
    files: dict[str, str] = {}
    multi = events_dir / MULTI_FILE
    if multi.is_file():
        file = label(multi)
        frame = _scan(multi, file, _FEEDBACK_COLUMNS, (_RATIO,))
        check_columns(pl.DataFrame(schema=frame.collect_schema()), {_TYPE: pl.Utf8()}, file)
        dtype = frame.collect_schema()[_TYPE]
        if not (dtype == pl.Utf8 or isinstance(dtype, pl.Categorical | pl.Enum)):
            raise DataContractError(
                file, _TYPE, f"wrong type {dtype}, expected event names", frame.select(_TYPE).head().collect()
            )
        frame = frame.with_columns(pl.col(_TYPE).cast(pl.Utf8).str.strip_chars().str.to_lowercase())
        per_type = frame.group_by(_TYPE).agg(_stat_exprs(threshold)).collect(engine="streaming")
        total = per_type.select(
            pl.col("rows").sum(),
            *[pl.col(f"{c}_nulls").sum() for c in (*_LIMITS, _ORGANIC)],
            *[pl.col(f"{c}_min").min() for c in _LIMITS],
            *[pl.col(f"{c}_max").max() for c in _LIMITS],
        ).row(0, named=True)
        _check_stats(frame, total, file, _LIMITS)
        _check_organic(frame, total, file)
        known = {"listen", *FEEDBACK_FILES}
        for row in per_type.iter_rows(named=True):
            if row[_TYPE] not in known:
                dropped.add(f"{file}: events of an unknown event_type ({row[_TYPE]!r})", row["rows"])
        listen = per_type.filter(pl.col(_TYPE) == "listen")
        listen_stats = listen.row(0, named=True) if listen.height else {"plus": 0}
        if listen.height:
            _drop_short(dropped, file, listen_stats, threshold)
        listens = frame.filter(pl.col(_TYPE) == "listen")
        feedback = _normalised(
            frame.filter(pl.col(_TYPE).is_in(list(FEEDBACK_FILES))), with_ratio=False, with_type=True
        )
        files.update(dict.fromkeys(FEEDBACK_FILES, file))
        ignored = [n for n in (LISTENS_FILE, *FEEDBACK_FILES.values()) if (events_dir / n).is_file()]
        notes.append(
            f"Yambda {options.size}, flat layout: events from {file}"
            + (f" ({', '.join(ignored)} beside it not read)" if ignored else "")
        )
        files["listen"] = file
        return listens, listen_stats, feedback, int(total["rows"]), files, int(total[f"{_TS}_max"] or 0)

    listens_path = events_dir / LISTENS_FILE
    file = label(listens_path)
    frame = _scan(listens_path, file, _FEEDBACK_COLUMNS, (_RATIO,))
    stats = frame.select(_stat_exprs(threshold)).collect(engine="streaming").row(0, named=True)
    _check_stats(frame, stats, file, _LIMITS)
    _check_organic(frame, stats, file)
    _drop_short(dropped, file, stats, threshold)
    raw_rows = int(stats["rows"])
    last_event_ts = int(stats[f"{_TS}_max"] or 0)
    files["listen"] = file

    parts, read, missing = [], [LISTENS_FILE], []
    for event_type, name in FEEDBACK_FILES.items():
        path = events_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        fb_file = label(path)
        fb = _scan(path, fb_file, _FEEDBACK_COLUMNS)
        fb_stats = fb.select(_stat_exprs(None)).collect(engine="streaming").row(0, named=True)
        _check_stats(fb, fb_stats, fb_file, _LIMITS)
        _check_organic(fb, fb_stats, fb_file)
        raw_rows += int(fb_stats["rows"])
        last_event_ts = max(last_event_ts, int(fb_stats[f"{_TS}_max"] or 0))
        files[event_type] = fb_file
        parts.append(_normalised(fb, with_ratio=False).with_columns(pl.lit(event_type).alias(_TYPE)))
        read.append(name)
    if not parts:
        parts.append(
            pl.LazyFrame(
                schema={
                    C.user_id: pl.Int32,
                    C.track_id: pl.Int32,
                    "ts": pl.Int64,
                    "organic": pl.Boolean,
                    _TYPE: pl.Utf8,
                }
            )
        )
    notes.append(
        f"Yambda {options.size}, flat layout: events from {', '.join(read)} in {label(events_dir)}"
        + (f"; no {', '.join(missing)}: no such events applied" if missing else "")
    )
    return frame, stats, pl.concat(parts), raw_rows, files, last_event_ts


def _drop_short(dropped: DropReport, file: str, stats: dict, threshold: int) -> None:
    dropped.add(f"{file}: listens without played_ratio_pct", stats["no_ratio"])
    dropped.add(
        f"{file}: listens with played_ratio_pct below {threshold} (not Listen+)",
        stats["rows"] - stats["plus"] - stats["no_ratio"],
    )


# --------------------------------------------------------------------------- aggregation


def _listened_pairs(listens: pl.LazyFrame, threshold: int, lo: int | None, hi: int | None) -> pl.DataFrame:
    """One row per (user, track) with Listen+ of the users ``lo .. hi`` (:func:`_user_ranges`):
    first time (and whether that event was organic), summed played ratio, Listen+ and organic
    Listen+ counts, in one streaming pass (the files are sorted by user, so a range reads only
    its row groups).
    """
    # the earliest event wins, an organic one on a tie: min over (time, not organic)
    first_key = pl.col("ts") * 2 + (~pl.col("organic")).cast(pl.Int64)
    chunk = listens if lo is None and hi is None else listens.filter(_in_range(pl.col(_UID), lo, hi))
    return (
        _normalised(chunk, with_ratio=True)
        .filter(pl.col("ratio") >= threshold)
        .group_by(C.user_id, C.track_id)
        .agg(
            first_key.min().alias("first_key"),
            pl.col("ratio").sum().cast(pl.UInt32).alias("ratio_sum"),
            pl.len().cast(pl.UInt32).alias("listens"),
            pl.col("organic").sum().cast(pl.UInt32).alias("organic_listens"),
        )
        .collect(engine="streaming")
    )


def _user_ranges(listens: pl.LazyFrame, stats: dict, threshold: int) -> list[tuple[int | None, int | None]]:
    """Inclusive ``uid`` ranges holding about :data:`CHUNK_LISTENS` Listen+ events each, from
    a streaming count per user, that together cover every uid (the first open below, the last
    above: a user with feedback alone falls in one too); one open range when everything fits
    one pass."""
    if stats["plus"] <= CHUNK_LISTENS:
        return [(None, None)]
    per_user = (
        listens.filter(pl.col(_RATIO) >= threshold)
        .group_by(_UID)
        .len()
        .collect(engine="streaming")
        .sort(_UID)
        .with_columns((pl.col("len").cum_sum() // CHUNK_LISTENS).alias("chunk"))
    )
    ranges = per_user.group_by("chunk").agg(pl.col(_UID).min().alias("lo"), pl.col(_UID).max().alias("hi"))
    highs = [int(hi) for hi in ranges.sort("chunk").get_column("hi")]
    return [
        (None if i == 0 else highs[i - 1] + 1, None if i == len(highs) - 1 else hi)
        for i, hi in enumerate(highs)
    ]


def _feedback_state(feedback: pl.LazyFrame) -> pl.DataFrame:
    """Per (user, track) with feedback: the last time of each event type (null when none);
    for likes and dislikes as ``2 * time + organic``, so an organic event wins a tie."""
    key = pl.col("ts") * 2 + pl.col("organic").cast(pl.Int64)
    return (
        feedback.group_by(C.user_id, C.track_id)
        .agg(
            *[
                pl.when(pl.col(_TYPE) == t)
                .then(key if t in ("like", "dislike") else pl.col("ts"))
                .max()
                .alias(t)
                for t in FEEDBACK_FILES
            ],
            *[(pl.col(_TYPE) == t).sum().cast(pl.Int64).alias(f"n_{t}") for t in FEEDBACK_FILES],
        )
        .collect(engine="streaming")
    )


def _combine(
    pairs: pl.DataFrame, state: pl.DataFrame, options: YambdaConfig
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """Listened pairs with the like state applied, plus liked-only pairs; disliked pairs.

    The listened pairs (the big frame) are only probed against the small frame of pairs with
    a like or dislike in force, in streaming passes, so no copy of them is held beside the result.
    """
    never = pl.lit(-1, dtype=pl.Int64)
    like_ts = (pl.col("like") // 2).fill_null(never)
    dislike_ts = (pl.col("dislike") // 2).fill_null(never)
    unlike_ts, undislike_ts = pl.col("unlike").fill_null(never), pl.col("undislike").fill_null(never)
    flags = state.with_columns(
        (like_ts > pl.max_horizontal(unlike_ts, dislike_ts)).alias("liked"),
        (dislike_ts > pl.max_horizontal(undislike_ts, like_ts)).alias("disliked"),
    )
    decided = flags.filter(pl.col("liked") | pl.col("disliked")).select(
        C.user_id, C.track_id, "liked", "disliked", "like"
    )
    keys = [C.user_id, C.track_id]
    # the decided pairs that were listened (small): which are disliked, which liked-only pairs to add
    matched = pairs.lazy().select(keys).join(decided.lazy(), on=keys, how="inner").collect(engine="streaming")
    listened_disliked = int(matched.get_column("disliked").sum())
    plays = pl.col("ratio_sum").cast(pl.Float64) / 100
    weight = (1.0 + plays).log(2) + pl.col("liked").cast(pl.Float64) * options.like_weight
    listened = (
        pairs.lazy()
        .join(decided.lazy().select(*keys, "liked"), on=keys, how="left")
        .select(
            *keys,
            (pl.col("first_key") // 2).alias("first_ts"),
            (pl.col("first_key") % 2 == 0).alias("is_organic"),
            "listens",
            "organic_listens",
            pl.col("liked").fill_null(False),
            pl.col("ratio_sum"),
        )
        .with_columns(weight.cast(pl.Float32).alias(C.weight))
        .drop("ratio_sum")
        .collect(engine="streaming")
    )
    like_only = (
        decided.filter(pl.col("liked"))
        .join(matched.select(keys), on=keys, how="anti")
        .select(
            *keys,
            (pl.col("like") // 2).alias("first_ts"),
            (pl.col("like") % 2 == 1).alias("is_organic"),
            pl.lit(0, dtype=pl.UInt32).alias("listens"),
            pl.lit(0, dtype=pl.UInt32).alias("organic_listens"),
            pl.lit(True).alias("liked"),
            pl.lit(options.like_weight, dtype=pl.Float32).alias(C.weight),
        )
    )
    interactions = pl.concat([listened, like_only]) if like_only.height else listened
    disliked = flags.filter(pl.col("disliked")).select(*keys, (pl.col("dislike") // 2).alias("disliked_ts"))
    # feedback rows that are no row of their own: all but the one like of each liked-only pair
    totals = state.select(pl.col(f"n_{t}").sum() for t in FEEDBACK_FILES).row(0, named=True)
    folded = {t: int(totals[f"n_{t}"] or 0) for t in FEEDBACK_FILES}
    folded["like"] -= like_only.height
    return (
        interactions,
        disliked,
        {"folded": folded, "like_only": like_only.height, "listened_disliked": listened_disliked},
    )


def _numbered(interactions: pl.DataFrame, max_per_user: int) -> tuple[pl.DataFrame, int]:
    """Sorted by user and time, each user's most recent ``max_per_user`` pairs numbered 1.. as
    ``track_seq`` (int16); the earlier ones dropped, their count returned.

    The frame is sorted once; positions within a user come from binary searches on the
    sorted user column (no per-user groups are built).
    """
    out = interactions.sort(C.user_id, "first_ts", C.track_id)
    del interactions
    users = out.get_column(C.user_id)
    first = users.search_sorted(users, side="left").cast(pl.Int64)
    count = users.search_sorted(users, side="right").cast(pl.Int64) - first
    seq = pl.int_range(0, out.height, dtype=pl.Int64, eager=True) - first + 1
    excess = (count - max_per_user).clip(lower_bound=0)
    n_capped = int(excess.filter(seq == 1).sum())  # once per user
    if n_capped:
        keep = seq > excess
        out, seq, excess = out.filter(keep), seq.filter(keep), excess.filter(keep)
    track_seq = (seq - excess).cast(INTERACTIONS_SCHEMA[C.track_seq]).alias(C.track_seq)
    return out.with_columns(track_seq), n_capped


# --------------------------------------------------------------------------- catalogue


def _mapping(path: Path | None, file: str, id_column: str, track_ids: pl.Series) -> pl.DataFrame:
    """``track_id`` -> sorted list of ``id_column`` for the catalogue's tracks."""
    schema = {C.track_id: pl.Int32, "ids": pl.List(pl.Int32)}
    if path is None:
        return pl.DataFrame(schema=schema)
    frame = _scan(path, file, (id_column, _ITEM))
    limits = {id_column: (0, INT32_MAX), _ITEM: (0, INT32_MAX)}
    stats = (
        frame.select(
            *[pl.col(c).null_count().alias(f"{c}_nulls") for c in limits],
            *[pl.col(c).cast(pl.Int64).min().alias(f"{c}_min") for c in limits],
            *[pl.col(c).cast(pl.Int64).max().alias(f"{c}_max") for c in limits],
        )
        .collect(engine="streaming")
        .row(0, named=True)
    )
    _check_stats(frame, stats, file, limits)
    catalogue = pl.LazyFrame({C.track_id: track_ids})
    return (
        frame.select(pl.col(_ITEM).cast(pl.Int32).alias(C.track_id), pl.col(id_column).cast(pl.Int32))
        .join(catalogue, on=C.track_id, how="semi")
        .group_by(C.track_id)
        .agg(pl.col(id_column).unique().sort().alias("ids"))
        .collect(engine="streaming")
    )


def _tracks(track_ids: pl.Series, shared: list[Path], label, notes: list[str]) -> pl.DataFrame:
    tracks = pl.DataFrame({C.track_id: track_ids})
    for column, name, id_column in (
        (C.artists, ARTISTS_FILE, "artist_id"),
        (C.albums, ALBUMS_FILE, "album_id"),
    ):
        path = _find(shared, name)
        if path is None:
            notes.append(f"no {name} in {', '.join(label(d) for d in shared)}: tracks have no {column}")
        lists = _mapping(path, label(path) if path else name, id_column, track_ids)
        tracks = tracks.join(lists.rename({"ids": column}), on=C.track_id, how="left")
        tracks = tracks.with_columns(pl.col(column).fill_null(EMPTY_IDS))
    return tracks.select(C.track_id, C.albums, C.artists, EMPTY_IDS.alias(C.genres)).sort(C.track_id)


def _features(
    track_ids: pl.Series, shared: list[Path], label, column: str, notes: list[str]
) -> pl.DataFrame | None:
    """The embeddings of the catalogue's tracks, one Float32 column per dimension."""
    path = _find(shared, EMBEDDINGS_FILE)
    if path is None:
        notes.append(f"no {EMBEDDINGS_FILE} in {', '.join(label(d) for d in shared)}: no track_features")
        return None
    file = label(path)
    frame = _scan(path, file, (_ITEM,))
    schema = frame.collect_schema()
    check_columns(pl.DataFrame(schema=schema), {column: pl.List(pl.Float32())}, file)
    dtype = schema[column]
    if not (isinstance(dtype, pl.List | pl.Array) and dtype.inner.is_numeric()):
        raise DataContractError(
            file,
            column,
            f"wrong type {dtype}, expected lists of numbers",
            frame.select(_ITEM, column).head().collect(),
        )
    catalogue = pl.LazyFrame({C.track_id: track_ids})
    embedded = (
        frame.select(pl.col(_ITEM).cast(pl.Int64).alias("item"), pl.col(column))
        .filter(pl.col("item").is_between(0, INT32_MAX))  # ids outside int32 cannot be in the catalogue
        .with_columns(pl.col("item").cast(pl.Int32).alias(C.track_id))
        .drop("item")
        .join(catalogue, on=C.track_id, how="semi")
        .collect(engine="streaming")
    )
    repeated = embedded.group_by(C.track_id).len().filter(pl.col("len") > 1)
    if repeated.height:
        raise DataContractError(
            file,
            _ITEM,
            f"{repeated.height:,} item_ids have more than one embedding",
            repeated.select(pl.col(C.track_id).alias(_ITEM), pl.col("len").alias("rows")).sort(_ITEM),
        )
    if isinstance(dtype, pl.Array):
        embedded = embedded.with_columns(pl.col(column).arr.to_list())
    no_vector = embedded.get_column(column).is_null()
    if no_vector.any():
        notes.append(f"{int(no_vector.sum()):,} tracks in {file} have a null {column}: no features for them")
        embedded = embedded.filter(~no_vector)
    lengths = embedded.get_column(column).list.len().unique()
    if lengths.len() > 1:
        shown = embedded.with_columns(pl.col(column).list.len().alias("length")).unique("length")
        raise DataContractError(
            file,
            column,
            f"embeddings of different lengths ({', '.join(map(str, lengths.sort().to_list()))})",
            shown.select(C.track_id, "length"),
        )
    dim = int(lengths.item()) if lengths.len() else 0
    notes.append(
        f"{embedded.height:,} of {track_ids.len():,} tracks have an audio embedding ({column}, "
        f"{dim} dimensions) in {file}: the track_features; the others have none"
    )
    if embedded.height == 0 or dim == 0:
        return None
    width = len(str(dim - 1))
    return embedded.select(
        pl.col(C.track_id),
        *[
            pl.col(column).list.get(i).cast(pl.Float32).alias(f"emb_{i:0{max(width, 3)}d}")
            for i in range(dim)
        ],
    ).sort(C.track_id)


def _names(tracks: pl.DataFrame) -> pl.DataFrame:
    """ "track 123", "artist 45", "album 67": Yambda publishes no names."""
    parts = [tracks.select(pl.col(C.track_id).alias(C.id), pl.lit("track").alias(C.type))]
    for column, kind in ((C.artists, "artist"), (C.albums, "album")):
        ids = tracks.select(pl.col(column).explode().drop_nulls().unique().sort().alias(C.id))
        parts.append(ids.with_columns(pl.lit(kind).alias(C.type)))
    names = pl.concat(parts)
    return names.select(
        pl.col(C.id).cast(pl.Int32),
        pl.col(C.type),
        pl.concat_str(pl.col(C.type), pl.lit(" "), pl.col(C.id).cast(pl.Utf8)).alias(C.name),
    )
