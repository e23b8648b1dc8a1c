"""Files in Yambda's published flat layout, written for the tests (the data set cannot be
downloaded here).

:func:`write_yambda` writes ``<root>/flat/<size>/`` (``multi_event.parquet``, the per-type
files, or both) and the shared ``embeddings.parquet``, ``artist_item_mapping.parquet`` and
``album_item_mapping.parquet`` at ``<root>``, with the published column names and dtypes.
Events are random (seeded, vectorised: any size) plus, optionally, the hand-made block
:data:`KNOWN`, whose users and tracks are outside the random id range, so a test can check
their aggregation exactly whatever else the files hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

FEEDBACK_FILES = {
    "like": "likes.parquet",
    "dislike": "dislikes.parquet",
    "unlike": "unlikes.parquet",
    "undislike": "undislikes.parquet",
}
LISTEN_SCHEMA = {
    "uid": pl.UInt32,
    "timestamp": pl.UInt32,
    "item_id": pl.UInt32,
    "is_organic": pl.UInt8,
    "played_ratio_pct": pl.UInt16,
    "track_length_seconds": pl.UInt32,
}
FEEDBACK_SCHEMA = {c: LISTEN_SCHEMA[c] for c in ("uid", "timestamp", "item_id", "is_organic")}
DAY = 86_400

# ----------------------------------------------------------------------------- the known block

#: Known users and tracks T1 .. T10, far above the random ids (1 .. n_users, 1 .. 20 * n_items).
U1, U2 = 2_000_000_001, 2_000_000_002
T = {i: 2_000_000_000 + i for i in range(1, 11)}

#: (uid, timestamp, item, is_organic, played_ratio_pct) of the known listens.
KNOWN_LISTENS = [
    (U1, 1000, T[1], 0, 100),
    (U1, 2000, T[1], 1, 30),  # below 50: not Listen+
    (U1, 3000, T[1], 1, 250),  # a replay: 2.5 plays
    (U1, 4000, T[1], 1, 50),  # exactly the threshold
    (U1, 1500, T[2], 0, 49),  # not Listen+; T2 is liked later
    (U1, 2000, T[3], 1, 100),  # disliked later
    (U1, 2000, T[4], 0, 100),  # disliked, then undisliked
    (U1, 3000, T[5], 1, 100),  # liked, then unliked
    (U1, 100, T[7], 1, 100),  # liked
    (U1, 900, T[10], 0, 100),  # disliked, then liked
    (U2, 500, T[1], 1, 100),
    (U2, 600, T[2], 0, 100),  # two Listen+ in the same 5-second step, one organic
    (U2, 600, T[2], 1, 80),
]
#: (event_type, uid, timestamp, item, is_organic) of the known feedback events.
KNOWN_FEEDBACK = [
    ("like", U1, 1600, T[2], 1),
    ("dislike", U1, 2500, T[3], 0),
    ("dislike", U1, 2500, T[4], 0),
    ("undislike", U1, 2600, T[4], 0),
    ("like", U1, 3100, T[5], 0),
    ("unlike", U1, 3200, T[5], 0),
    ("like", U1, 3300, T[6], 1),
    ("unlike", U1, 3400, T[6], 1),
    ("like", U1, 3500, T[6], 0),  # liked again: the like in force dates the pair
    ("like", U1, 200, T[7], 0),
    ("dislike", U1, 700, T[8], 1),  # a dislike only
    ("like", U1, 800, T[9], 1),  # a like and a dislike in the same step: cancel
    ("dislike", U1, 800, T[9], 1),
    ("dislike", U1, 1000, T[10], 0),
    ("like", U1, 1100, T[10], 0),  # clears the dislike
]
#: item -> artists / albums of the known tracks (mapping rows, deliberately unsorted).
KNOWN_ARTISTS = [(11, T[1]), (10, T[1]), (10, T[2]), (12, T[5]), (12, T[6]), (13, T[7]), (13, T[10])]
KNOWN_ALBUMS = [(20, T[1]), (21, T[4]), (22, T[5]), (22, T[7])]
#: Known tracks with an embedding (the others have none).
KNOWN_EMBEDDED = (T[1], T[2], T[4])


def known_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    """The known block as (listens, feedback) frames in the published dtypes."""
    uid, ts, item, organic, ratio = zip(*KNOWN_LISTENS, strict=True)
    listens = pl.DataFrame(
        {
            "uid": uid,
            "timestamp": ts,
            "item_id": item,
            "is_organic": organic,
            "played_ratio_pct": ratio,
            "track_length_seconds": [200] * len(uid),
        },
        schema=LISTEN_SCHEMA,
    )
    kind, uid, ts, item, organic = zip(*KNOWN_FEEDBACK, strict=True)
    feedback = pl.DataFrame(
        {"event_type": kind, "uid": uid, "timestamp": ts, "item_id": item, "is_organic": organic},
        schema={"event_type": pl.Utf8, **FEEDBACK_SCHEMA},
    )
    return listens, feedback


# ----------------------------------------------------------------------------- random events


def random_events(
    n_users: int, n_items: int, n_events: int, seed: int = 0, days: int = 300
) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    """Listens and feedback events (about 4% feedback), and the item ids used.

    Users have log-normal activity, tracks a power-law popularity (so pairs repeat), times
    are 5-second steps over ``days``; a tenth of the listens are replays above 100%.
    """
    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(np.arange(1, 20 * n_items + 1), n_items, replace=False)).astype(np.uint32)
    n_feedback = max(4, n_events // 25)
    activity = rng.lognormal(0, 1, n_users)
    listens, feedback = _events(rng, items, activity, n_events - n_feedback, n_feedback, days)
    return listens, feedback, items


def _events(
    rng: np.random.Generator,
    items: np.ndarray,
    activity: np.ndarray,
    n_listens: int,
    n_feedback: int,
    days: int,
    lengths: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n_listens`` listens and ``n_feedback`` feedback events of users ``1 .. len(activity)``
    (drawn by ``activity``) on ``items`` (by a power law of their position)."""
    n_users, n_items = len(activity), len(items)
    uid = rng.choice(np.arange(1, n_users + 1), n_listens, p=activity / activity.sum()).astype(np.uint32)
    popularity = 1.0 / (np.arange(n_items) + 5.0)
    item_pos = rng.choice(n_items, n_listens, p=popularity / popularity.sum())
    ts = (rng.integers(0, days * DAY // 5, n_listens) * 5).astype(np.uint32)
    kind = rng.random(n_listens)
    ratio = np.where(
        kind < 0.35,
        rng.integers(0, 50, n_listens),
        np.where(kind < 0.9, rng.integers(50, 101, n_listens), rng.integers(101, 400, n_listens)),
    ).astype(np.uint16)
    if lengths is None:
        lengths = rng.integers(90, 400, n_items).astype(np.uint32)
    listens = pl.DataFrame(
        {
            "uid": uid,
            "timestamp": ts,
            "item_id": items[item_pos],
            "is_organic": (rng.random(n_listens) < 0.3).astype(np.uint8),
            "played_ratio_pct": ratio,
            "track_length_seconds": lengths[item_pos],
        },
        schema=LISTEN_SCHEMA,
    )
    # feedback on listened pairs, a little after the listen: likes, dislikes, and some undone
    pick = rng.choice(n_listens, n_feedback, replace=False)
    kinds = rng.choice(["like", "dislike", "unlike", "undislike"], n_feedback, p=[0.6, 0.2, 0.12, 0.08])
    later = (rng.integers(1, 2_000, n_feedback) * 5).astype(np.int64)
    feedback = pl.DataFrame(
        {
            "event_type": kinds,
            "uid": uid[pick],
            "timestamp": np.minimum(ts[pick].astype(np.int64) + later, days * DAY - 5).astype(np.uint32),
            "item_id": items[item_pos[pick]],
            "is_organic": (rng.random(n_feedback) < 0.5).astype(np.uint8),
        },
        schema={"event_type": pl.Utf8, **FEEDBACK_SCHEMA},
    )
    return listens, feedback


#: Yambda's sizes as the issue gives them (users, tracks, events), for :func:`write_yambda_sized`:
#: 50m about 48M events of 10,000 users over 934,000 tracks; 500m about 480M events of 100,000
#: users (its track count is not in our notes: 3M is our assumption, between 50m's and 5b's 9.39M).
PUBLISHED = {"50m": (10_000, 934_000, 48_000_000), "500m": (100_000, 3_000_000, 480_000_000)}


def write_yambda_sized(
    root: Path, size: str = "50m", seed: int = 0, chunk_events: int = 10_000_000, days: int = 300
) -> Path:
    """Random files of one of Yambda's published sizes (:data:`PUBLISHED`) in the separate-files
    layout, written chunk by chunk (one row group each), so that even the 500m size is made in
    a few GB; the size folder. For the scale benchmarks (``make bench-yambda``)."""
    import pyarrow.parquet as pq

    n_users, n_items, n_events = PUBLISHED[size]
    rng = np.random.default_rng(seed)
    items = np.sort(rng.choice(np.arange(1, 20 * n_items + 1), n_items, replace=False)).astype(np.uint32)
    activity = rng.lognormal(0, 1, n_users)
    lengths = rng.integers(90, 400, n_items).astype(np.uint32)
    folder = root / "flat" / size
    folder.mkdir(parents=True, exist_ok=True)
    feedback_parts = []
    writer = None
    for start in range(0, n_events, chunk_events):
        events = min(chunk_events, n_events - start)
        n_feedback = max(4, events // 25)
        listens, feedback = _events(rng, items, activity, events - n_feedback, n_feedback, days, lengths)
        table = listens.to_arrow()
        writer = writer or pq.ParquetWriter(folder / "listens.parquet", table.schema, compression="zstd")
        writer.write_table(table)
        feedback_parts.append(feedback)
        print(f"{size}: {start + events:,} of {n_events:,} events", flush=True)
    writer.close()
    feedback = pl.concat(feedback_parts)
    for kind, name in FEEDBACK_FILES.items():
        feedback.filter(pl.col("event_type") == kind).drop("event_type").cast(FEEDBACK_SCHEMA).write_parquet(
            folder / name
        )
    embeddings, artists, albums = random_catalogue(items, seed)
    embeddings.write_parquet(root / "embeddings.parquet")
    artists.select("artist_id", "item_id").write_parquet(root / "artist_item_mapping.parquet")
    albums.select("album_id", "item_id").write_parquet(root / "album_item_mapping.parquet")
    return folder


def random_catalogue(
    items: np.ndarray, seed: int = 0, embedded_share: float = 0.8, dim: int = 128
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Embeddings for ``embedded_share`` of the items, artist and album mappings (a few items
    with two artists, a few with none)."""
    rng = np.random.default_rng(seed + 1)
    n = len(items)
    embedded = np.sort(rng.choice(items, int(round(embedded_share * n)), replace=False))
    raw = rng.normal(size=(len(embedded), dim)).astype(np.float32)
    normed = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    embeddings = pl.DataFrame(
        {
            "item_id": pl.Series(embedded, dtype=pl.UInt32),
            "embed": pl.Series(raw).cast(pl.List(pl.Float32)),
            "normalized_embed": pl.Series(normed).cast(pl.List(pl.Float32)),
        }
    )
    has_artist = rng.random(n) < 0.97
    artists = pl.DataFrame(
        {
            "artist_id": rng.integers(1, max(2, n // 5), n).astype(np.uint32)[has_artist],
            "item_id": items[has_artist],
        }
    )
    second = rng.random(n) < 0.05
    artists = pl.concat(
        [
            artists,
            pl.DataFrame(
                {
                    "artist_id": rng.integers(1, max(2, n // 5), n).astype(np.uint32)[second],
                    "item_id": items[second],
                }
            ),
        ]
    ).unique()
    albums = pl.DataFrame(
        {"album_id": rng.integers(1, max(2, n // 2), n).astype(np.uint32), "item_id": items}
    )
    return embeddings, artists.cast(pl.UInt32), albums.cast(pl.UInt32)


# ----------------------------------------------------------------------------- writing


def write_layout(
    root: Path,
    listens: pl.DataFrame,
    feedback: pl.DataFrame,
    embeddings: pl.DataFrame | None,
    artists: pl.DataFrame | None,
    albums: pl.DataFrame | None,
    size: str = "50m",
    layout: str = "multi",
    event_type_dtype: pl.DataType = pl.Utf8,
) -> Path:
    """Write the flat layout under ``root``; ``layout`` is ``multi``, ``separate`` or ``both``.

    Returns the size folder (``root/flat/<size>``).
    """
    folder = root / "flat" / size
    folder.mkdir(parents=True, exist_ok=True)
    listens = listens.cast(LISTEN_SCHEMA).sort("uid", "timestamp", "item_id")
    feedback = feedback.sort("uid", "timestamp", "item_id")
    if layout in ("separate", "both"):
        listens.write_parquet(folder / "listens.parquet")
        for kind, name in FEEDBACK_FILES.items():
            feedback.filter(pl.col("event_type") == kind).drop("event_type").cast(
                FEEDBACK_SCHEMA
            ).write_parquet(folder / name)
    if layout in ("multi", "both"):
        multi = pl.concat(
            [listens.with_columns(pl.lit("listen").alias("event_type")), feedback.cast(FEEDBACK_SCHEMA)],
            how="diagonal",
        ).sort("uid", "timestamp", "item_id", maintain_order=True)
        multi.select(*LISTEN_SCHEMA, pl.col("event_type").cast(event_type_dtype)).write_parquet(
            folder / "multi_event.parquet"
        )
    if embeddings is not None:
        embeddings.write_parquet(root / "embeddings.parquet")
    if artists is not None:
        artists.select("artist_id", "item_id").cast(pl.UInt32).write_parquet(
            root / "artist_item_mapping.parquet"
        )
    if albums is not None:
        albums.select("album_id", "item_id").cast(pl.UInt32).write_parquet(
            root / "album_item_mapping.parquet"
        )
    return folder


def known_catalogue(dim: int = 128) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Embeddings (vector i of known track Ti is [i, i + 1, ...] / 1000) and mappings."""
    ids = list(KNOWN_EMBEDDED)
    raw = [[(i - 2_000_000_000 + d) / 1000 for d in range(dim)] for i in ids]
    embeddings = pl.DataFrame(
        {
            "item_id": pl.Series(ids, dtype=pl.UInt32),
            "embed": pl.Series(raw, dtype=pl.List(pl.Float32)),
            "normalized_embed": pl.Series([[v / 2 for v in row] for row in raw], dtype=pl.List(pl.Float32)),
        }
    )
    artists = pl.DataFrame(KNOWN_ARTISTS, schema=["artist_id", "item_id"], orient="row").cast(pl.UInt32)
    albums = pl.DataFrame(KNOWN_ALBUMS, schema=["album_id", "item_id"], orient="row").cast(pl.UInt32)
    return embeddings, artists, albums


def write_yambda(
    root: Path,
    n_users: int = 50,
    n_items: int = 300,
    n_events: int = 5_000,
    seed: int = 0,
    layout: str = "multi",
    size: str = "50m",
    known: bool = True,
    embedded_share: float = 0.8,
    dim: int = 128,
) -> Path:
    """Random Yambda-layout files of any size, plus the :data:`KNOWN` block; the size folder.

    ``n_events`` counts the random events (listens and feedback); ``n_events=0`` writes the
    known block alone.
    """
    parts_l, parts_f, parts_e, parts_ar, parts_al = [], [], [], [], []
    if n_events:
        listens, feedback, items = random_events(n_users, n_items, n_events, seed)
        embeddings, artists, albums = random_catalogue(items, seed, embedded_share, dim)
        parts_l.append(listens)
        parts_f.append(feedback)
        parts_e.append(embeddings)
        parts_ar.append(artists)
        parts_al.append(albums)
    if known:
        listens, feedback = known_frames()
        embeddings, artists, albums = known_catalogue(dim)
        parts_l.append(listens)
        parts_f.append(feedback)
        parts_e.append(embeddings)
        parts_ar.append(artists)
        parts_al.append(albums)
    return write_layout(
        root,
        pl.concat(parts_l),
        pl.concat(parts_f),
        pl.concat(parts_e),
        pl.concat(parts_ar),
        pl.concat(parts_al),
        size=size,
        layout=layout,
    )


if __name__ == "__main__":  # make bench-yambda: python tests/yambda_files.py <root> <size>
    import sys

    print(write_yambda_sized(Path(sys.argv[1]), sys.argv[2]))
