"""The Yambda adapter on files written in the published flat layout (tests/yambda_files.py).

Expected values of the hand-made block (:data:`yambda_files.KNOWN_LISTENS` and
``KNOWN_FEEDBACK``) are worked out by hand below, not taken from the adapter's output.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import tempfile
from pathlib import Path

import polars as pl
import pytest
from test_adapters import check_canonical
from yambda_files import DAY, U1, U2, T, write_yambda

from musicrec.config import ProfileError, YambdaConfig, load_profile
from musicrec.schema import INTERACTIONS_SCHEMA, C, DataContractError, validate_catalog_names, validate_tracks
from musicrec.sources import yambda
from musicrec.sources.base import SourceError

ORIGIN = dt.datetime(2024, 1, 1)

#: (user, track) -> (seconds after the origin, track_seq, weight, is_organic, Listen+ events,
#: organic Listen+ events, liked), with the default threshold 50 and like_weight 1.
EXPECTED = {
    (U1, T[7]): (100, 1, 2.0, True, 1, 1, True),  # log2(1 + 1) + 1 for the like
    (U1, T[10]): (900, 2, 2.0, False, 1, 0, True),  # the like at 1100 clears the dislike at 1000
    (U1, T[1]): (1000, 3, math.log2(5), False, 3, 2, False),  # 1.0 + 2.5 + 0.5 plays; 30% is no Listen+
    (U1, T[2]): (1600, 4, 1.0, True, 0, 0, True),  # liked only: its 49% listen is no Listen+
    (U1, T[3]): (2000, 5, 1.0, True, 1, 1, False),  # disliked at 2500: the row stays, windows cut it
    (U1, T[4]): (2000, 6, 1.0, False, 1, 0, False),  # disliked, then undisliked
    (U1, T[5]): (3000, 7, 1.0, True, 1, 1, False),  # liked, then unliked
    (U1, T[6]): (3500, 8, 1.0, False, 0, 0, True),  # like, unlike, like: the like in force dates it
    (U2, T[1]): (500, 1, 1.0, True, 1, 1, False),
    (U2, T[2]): (600, 2, math.log2(2.8), True, 2, 1, False),  # 1.0 + 0.8 plays; the tie is organic
}
#: 13 listens + 7 likes + 5 dislikes + 2 unlikes + 1 undislike.
KNOWN_EVENTS = 28
#: By hand: 2 listens under 50%, 11 Listen+ in 8 pairs (3 merged), likes 7 - 2 that became
#: liked-only rows, every dislike, unlike and undislike folded.
KNOWN_DROPPED = {
    "below 50": 2,
    "merged": 3,
    "like": 5,
    "dislike": 5,
    "unlike": 2,
    "undislike": 1,
}


def reasons(data) -> dict[str, int]:
    """The drop counts keyed as in :data:`KNOWN_DROPPED`."""
    out = {}
    for reason, n in data.dropped.counts.items():
        if "below" in reason:
            key = f"below {reason.split('below ')[1].split(' ')[0]}"
        elif "merged" in reason:
            key = "merged"
        elif "folded" in reason:
            key = reason.split(": ")[1].split(" events")[0]
        else:
            key = reason
        out[key] = out.get(key, 0) + n
    return out


def load_known(tmp_path: Path, layout: str = "multi", **options):
    write_yambda(tmp_path, n_events=0, layout=layout, dim=8)
    return yambda.load(tmp_path, YambdaConfig(**options))


def rows_by_pair(data) -> dict[tuple[int, int], dict]:
    inter = data.interactions.collect() if isinstance(data.interactions, pl.LazyFrame) else data.interactions
    frame = inter.join(data.extra["organic_pairs"], on=[C.user_id, C.track_id], how="left")
    return {(r[C.user_id], r[C.track_id]): r for r in frame.iter_rows(named=True)}


# --------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("layout", ["multi", "separate"])
def test_known_block_aggregated_exactly(tmp_path: Path, layout: str) -> None:
    data = load_known(tmp_path, layout)
    check_canonical(data)
    rows = rows_by_pair(data)
    assert set(rows) == set(EXPECTED)
    for pair, (seconds, seq, weight, organic, listens, organic_listens, liked) in EXPECTED.items():
        row = rows[pair]
        assert row[C.started_at] == ORIGIN + dt.timedelta(seconds=seconds), pair
        assert row[C.track_seq] == seq, pair
        assert row[C.weight] == pytest.approx(weight, rel=1e-6), pair
        assert (row["is_organic"], row["listens"], row["organic_listens"], row["liked"]) == (
            organic,
            listens,
            organic_listens,
            liked,
        ), pair
    assert reasons(data) == KNOWN_DROPPED
    # every event accounted for: raw events = interactions + dropped
    assert len(EXPECTED) + sum(data.dropped.counts.values()) == KNOWN_EVENTS


def test_likes_and_dislikes_in_time_order(tmp_path: Path) -> None:
    data = load_known(tmp_path)
    pairs = set(rows_by_pair(data))
    disliked = data.extra["disliked_pairs"]
    assert disliked.columns == [C.user_id, C.track_id, "disliked_at"]
    # T3: listened, then disliked: its row stays (the windows leave it out from the dislike on,
    # test_windows_leave_out_pairs_disliked_before_their_end); T8: a dislike alone, no row
    assert disliked.rows() == [
        (U1, T[3], ORIGIN + dt.timedelta(seconds=2500)),
        (U1, T[8], ORIGIN + dt.timedelta(seconds=700)),
    ]
    assert (U1, T[3]) in pairs and (U1, T[8]) not in pairs
    # T9: a like and a dislike in the same 5-second step cancel: neither positive nor disliked
    assert (U1, T[9]) not in pairs
    # T4 (undisliked) and T10 (the like clears the dislike) stay
    assert {(U1, T[4]), (U1, T[10])} <= pairs
    assert any("2 disliked pairs in disliked_pairs.parquet, 1 of them listened" in n for n in data.notes)


def test_listen_threshold_and_replays(tmp_path: Path) -> None:
    low = rows_by_pair(load_known(tmp_path, listen_threshold=30))
    # T1 now counts its 30% listen too: 1.0 + 0.3 + 2.5 + 0.5 plays
    assert low[(U1, T[1])][C.weight] == pytest.approx(math.log2(1 + 4.3), rel=1e-6)
    assert low[(U1, T[1])]["listens"] == 4
    # T2's 49% listen is a Listen+ now: listened at 1500, and liked: log2(1.49) + 1
    t2 = low[(U1, T[2])]
    assert t2[C.started_at] == ORIGIN + dt.timedelta(seconds=1500)
    assert t2[C.weight] == pytest.approx(math.log2(1.49) + 1, rel=1e-6)
    assert (t2["listens"], t2["is_organic"]) == (1, False)

    strict = rows_by_pair(yambda.load(tmp_path, YambdaConfig(listen_threshold=100)))
    # only the 100% and the 250% replay count: 3.5 plays; the U2 80% tie-mate is gone too
    assert strict[(U1, T[1])][C.weight] == pytest.approx(math.log2(4.5), rel=1e-6)
    assert strict[(U1, T[1])]["listens"] == 2
    assert strict[(U2, T[2])][C.weight] == pytest.approx(1.0)
    assert strict[(U2, T[2])]["is_organic"] is False  # the organic event was the 80% one


def test_like_weight(tmp_path: Path) -> None:
    rows = rows_by_pair(load_known(tmp_path, like_weight=2.5))
    assert rows[(U1, T[7])][C.weight] == pytest.approx(1 + 2.5)  # one full listen and a like
    assert rows[(U1, T[2])][C.weight] == pytest.approx(2.5)  # liked only
    assert rows[(U1, T[5])][C.weight] == pytest.approx(1.0)  # unliked


def test_origin_date_and_the_future(tmp_path: Path) -> None:
    data = load_known(tmp_path, origin=dt.date(2023, 6, 1))
    started = rows_by_pair(data)[(U1, T[7])][C.started_at]
    assert started == dt.datetime(2023, 6, 1, 0, 1, 40)
    assert any("2023-06-01" in n and "data.yambda.origin" in n for n in data.notes)
    future = dt.date.today() + dt.timedelta(days=30)
    with pytest.raises(ProfileError, match="data.yambda.origin"):
        yambda.load(tmp_path, YambdaConfig(origin=future))


def test_align_end_puts_the_end_of_the_last_events_step_at_midnight(tmp_path: Path) -> None:
    rows = rows_by_pair(load_known(tmp_path, align_end=True))
    plain = rows_by_pair(load_known(tmp_path))
    # the known block's last event is U1's listen of T[1] at 4000 s (a repeat: it dates no pair);
    # its step ends at 4005 s, which must fall on midnight: every row moves by 86,400 - 4,005 s
    shifts = {rows[pair][C.started_at] - plain[pair][C.started_at] for pair in rows}
    assert shifts == {dt.timedelta(seconds=DAY - 4000 - yambda.TIMESTAMP_STEP)}


def test_per_user_cap_keeps_the_most_recent(tmp_path: Path) -> None:
    data = load_known(tmp_path, max_tracks_per_user=3)
    inter = data.interactions.collect()
    u1 = inter.filter(pl.col(C.user_id) == U1).sort(C.track_seq)
    assert u1[C.track_id].to_list() == [T[4], T[5], T[6]]  # the latest three of eight
    assert u1[C.track_seq].to_list() == [1, 2, 3]
    assert data.extra["organic_pairs"].height == inter.height == 3 + 2
    capped = [n for r, n in data.dropped.counts.items() if "max_tracks_per_user" in r]
    assert capped == [5]
    assert inter.height + sum(data.dropped.counts.values()) == KNOWN_EVENTS


def test_organic_flag_kept_beside_the_interactions(tmp_path: Path) -> None:
    data = load_known(tmp_path)
    organic = data.extra["organic_pairs"]
    assert organic.schema == pl.Schema(
        {
            C.user_id: pl.Int32,
            C.track_id: pl.Int32,
            "is_organic": pl.Boolean,
            "listens": pl.Int32,
            "organic_listens": pl.Int32,
            "liked": pl.Boolean,
        }
    )
    inter = data.interactions.collect()
    assert organic.select(C.user_id, C.track_id).equals(inter.select(C.user_id, C.track_id))
    assert inter.columns == [C.user_id, C.track_id, C.started_at, C.track_seq, C.weight]  # unchanged
    organic_pairs = set(organic.filter("is_organic").select(C.user_id, C.track_id).iter_rows())
    assert organic_pairs == {pair for pair, expected in EXPECTED.items() if expected[3]}


# --------------------------------------------------------------------------- windows


def dated_run(root: Path, disliked: list[tuple[int, int, dt.date]] | None):
    """A run folder: one user's listens around the windows (labels from Jan 10, test from Jan 20)
    and, when given, their ``disliked_pairs.parquet``."""
    from musicrec.io import RunPaths

    paths = RunPaths(root, "toy")
    paths.data.mkdir(parents=True)
    day = lambda d: dt.datetime(2024, 1, d)  # noqa: E731
    rows = [(1, 1, 2), (1, 2, 2), (1, 3, 3), (1, 4, 12), (1, 5, 12), (1, 6, 21), (1, 7, 21), (2, 1, 2)]
    pl.DataFrame(
        {
            C.user_id: [u for u, _, _ in rows],
            C.track_id: [t for _, t, _ in rows],
            C.started_at: [day(d) for _, _, d in rows],
            C.track_seq: list(range(1, 8)) + [1],
            C.weight: [1.0] * len(rows),
        },
        schema=INTERACTIONS_SCHEMA,
    ).write_parquet(paths.interactions)
    paths.split.write_text(json.dumps({"label_start": "2024-01-10", "test_start": "2024-01-20"}))
    if disliked is not None:
        pl.DataFrame(
            {
                C.user_id: [u for u, _, _ in disliked],
                C.track_id: [t for _, t, _ in disliked],
                "disliked_at": [day(d) for _, _, d in disliked],
            },
            schema={C.user_id: pl.UInt32, C.track_id: pl.UInt32, "disliked_at": pl.Datetime("ns")},
        ).write_parquet(paths.disliked_pairs)
    return paths


#: (user, track, day of January) of user 1's dislikes in :func:`dated_run`: track 1 in history,
#: 2 in the labels window, 3 in the test window (all three listened in history); 4 and 5 listened
#: in the labels window, disliked in it and in the test window; 6 listened and disliked in the test.
DISLIKES = [(1, 1, 5), (1, 2, 15), (1, 3, 25), (1, 4, 14), (1, 5, 22), (1, 6, 23)]


def test_windows_leave_out_pairs_disliked_before_their_end(tmp_path: Path) -> None:
    """A dislike removes a pair from the windows ending after it and only from those: a dislike
    in the test window must not reach back into the history the models are fitted on."""
    from musicrec.candidates.stage import window_interactions, window_targets

    def pairs(frame: pl.DataFrame) -> set[tuple[int, int]]:
        return set(frame.select(C.user_id, C.track_id).iter_rows())

    paths = dated_run(tmp_path / "disliked", DISLIKES)
    # by hand: history (before Jan 10) drops 1 (disliked Jan 5) and keeps 2 and 3, disliked later
    assert pairs(window_interactions(paths, "history")) == {(1, 2), (1, 3), (2, 1)}
    # history + labels (before Jan 20) drops 1, 2 and 4; keeps 3 and 5 (disliked on Jan 25 and 22)
    assert pairs(window_interactions(paths, "history+labels")) == {(1, 3), (1, 5), (2, 1)}
    # the labels window keeps 5 (its dislike came after the window); the test drops 6
    assert pairs(window_targets(paths, "labels", warm=None)) == {(1, 5)}
    assert pairs(window_targets(paths, "test", warm=None)) == {(1, 7)}
    # the windows keep their order (the in-time-order fast paths rely on it)
    history = window_interactions(paths, "history+labels")
    assert history.equals(history.sort(C.user_id, C.started_at, C.track_seq))
    # without dislikes every listen counts in its window
    plain = dated_run(tmp_path / "plain", None)
    assert pairs(window_interactions(plain, "history")) == {(1, 1), (1, 2), (1, 3), (2, 1)}
    assert pairs(window_targets(plain, "test", warm=None)) == {(1, 6), (1, 7)}


# --------------------------------------------------------------------------- catalogue


def test_tracks_names_and_embeddings(tmp_path: Path) -> None:
    write_yambda(tmp_path, n_events=0, layout="multi")  # 128 dimensions, as published
    data = yambda.load(tmp_path, YambdaConfig())
    tracks = validate_tracks(data.tracks)
    by_id = {r[C.track_id]: r for r in tracks.iter_rows(named=True)}
    assert sorted(by_id) == sorted({t for _, t in EXPECTED})
    assert by_id[T[1]][C.artists] == [10, 11] and by_id[T[1]][C.albums] == [20]  # sorted
    assert by_id[T[2]][C.artists] == [10] and by_id[T[2]][C.albums] == []
    assert by_id[T[4]][C.artists] == [] and by_id[T[4]][C.albums] == [21]
    assert all(r[C.genres] == [] for r in by_id.values())  # Yambda has no genres

    names = validate_catalog_names(data.catalog_names)
    named = {(r[C.type], r[C.id]): r[C.name] for r in names.iter_rows(named=True)}
    assert named[("track", T[1])] == f"track {T[1]}"
    assert named[("artist", 10)] == "artist 10" and named[("album", 22)] == "album 22"
    assert sorted(i for k, i in named if k == "artist") == [10, 11, 12, 13]
    assert sorted(i for k, i in named if k == "album") == [20, 21, 22]
    assert len(named) == len(by_id) + 4 + 3

    features = data.track_features
    # only the embedded tracks (the others have none)
    assert features[C.track_id].to_list() == [T[1], T[2], T[4]]
    assert features.columns == [C.track_id, *[f"emb_{i:03d}" for i in range(128)]]
    assert all(t == pl.Float32 for c, t in features.schema.items() if c != C.track_id)
    # normalized_embed (half of embed in the generated files) is preferred
    assert features.row(0)[1:4] == pytest.approx((0.0005, 0.001, 0.0015))
    raw = yambda.load(tmp_path, YambdaConfig(embedding="embed")).track_features
    assert raw.row(0)[1:4] == pytest.approx((0.001, 0.002, 0.003))
    assert any("3 of 8 tracks have an audio embedding" in n for n in data.notes)


def test_random_files_account_for_every_event(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_users=40, n_items=500, n_events=20_000, seed=3, layout="both")
    data = yambda.load(tmp_path, YambdaConfig())
    inter = check_canonical(data)
    raw_events = pl.scan_parquet(folder / "multi_event.parquet").select(pl.len()).collect().item()
    assert raw_events == 20_000 + KNOWN_EVENTS
    assert inter.height + sum(data.dropped.counts.values()) == raw_events
    # listens are the Listen+ pairs, independently counted from the raw file
    listens = pl.read_parquet(folder / "listens.parquet")
    plus = listens.filter(pl.col("played_ratio_pct") >= 50)
    assert reasons(data)["below 50"] == listens.height - plus.height
    assert reasons(data)["merged"] == plus.height - plus.select("uid", "item_id").unique().height
    assert inter.get_column(C.weight).min() >= math.log2(1.5) - 1e-6
    # the known block comes out the same whatever else the files hold
    rows = rows_by_pair(data)
    for pair, expected in EXPECTED.items():
        assert rows[pair][C.weight] == pytest.approx(expected[2], rel=1e-6)
    # part of the tracks have embeddings, not all
    n_features = data.track_features.height
    assert 0 < n_features < data.tracks.height
    assert data.track_features.width == 1 + 128


# --------------------------------------------------------------------------- layout


def test_multi_event_preferred_when_both(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, layout="both", dim=8)
    # a broken listens.parquet beside multi_event.parquet is never read
    (folder / "listens.parquet").write_text("not parquet")
    data = yambda.load(tmp_path, YambdaConfig())
    assert set(rows_by_pair(data)) == set(EXPECTED)
    assert any("multi_event.parquet" in n and "listens.parquet" in n and "not read" in n for n in data.notes)


def test_event_type_as_categorical_and_unknown_types(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, dim=8)
    path = folder / "multi_event.parquet"
    multi = pl.read_parquet(path)
    extra = multi.head(1).with_columns(pl.lit("share").alias("event_type"))
    pl.concat([multi, extra]).with_columns(pl.col("event_type").cast(pl.Categorical)).write_parquet(path)
    data = yambda.load(tmp_path, YambdaConfig())
    assert set(rows_by_pair(data)) == set(EXPECTED)
    assert data.dropped.counts["flat/50m/multi_event.parquet: events of an unknown event_type ('share')"] == 1


@pytest.mark.parametrize("where", ["root", "flat", "size"])
def test_data_path_at_root_flat_or_size_folder(tmp_path: Path, where: str) -> None:
    write_yambda(tmp_path, n_events=0, dim=8, size="500m")
    folder = {"root": tmp_path, "flat": tmp_path / "flat", "size": tmp_path / "flat" / "500m"}[where]
    data = yambda.load(folder, YambdaConfig(size="500m"))
    assert set(rows_by_pair(data)) == set(EXPECTED)
    # the shared files at the top are found from the size folder too
    assert data.track_features is not None and data.track_features.height == 3
    assert data.tracks.filter(pl.col(C.track_id) == T[1])[C.artists].to_list() == [[10, 11]]


def test_wrong_size_or_no_events(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, dim=8, size="500m")
    with pytest.raises(SourceError, match=r"no 50m events under .*flat/50m.*sizes present: 500m"):
        yambda.load(tmp_path, YambdaConfig(size="50m"))
    with pytest.raises(SourceError, match=r"the 500m folder, and data.yambda.size is 50m"):
        yambda.load(folder, YambdaConfig(size="50m"))
    with pytest.raises(SourceError, match="does not exist"):
        yambda.load(tmp_path / "nowhere", YambdaConfig())
    (folder / "multi_event.parquet").unlink()
    with pytest.raises(SourceError, match=r"multi_event\.parquet or listens\.parquet"):
        yambda.load(tmp_path, YambdaConfig(size="500m"))


def test_5b_refused_before_reading(tmp_path: Path) -> None:
    # no files at all: the refusal comes first, so nothing is read
    with pytest.raises(ProfileError) as err:
        yambda.load(tmp_path / "nowhere", YambdaConfig(size="5b"))
    message = str(err.value)
    assert "data.yambda.size: 5b" in message and "4.79B events" in message
    assert "37.6 TB" in message  # 1M users x 9.39M tracks x 4 bytes
    assert "distributed engine" in message and "later issue" in message


def test_missing_optional_files_are_noted(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    for name in ("unlikes.parquet", "undislikes.parquet"):
        (folder / name).unlink()
    for name in ("embeddings.parquet", "album_item_mapping.parquet"):
        (tmp_path / name).unlink()
    data = yambda.load(tmp_path, YambdaConfig())
    check_canonical(data)
    assert data.track_features is None
    assert (data.tracks[C.albums].list.len() == 0).all()
    assert any("no unlikes.parquet, undislikes.parquet" in n for n in data.notes)
    assert any("no embeddings.parquet" in n for n in data.notes)
    assert any("no album_item_mapping.parquet" in n for n in data.notes)
    rows = rows_by_pair(data)
    # without the unlike, T5 stays liked; without the undislike, T4 is disliked (its row stays)
    assert rows[(U1, T[5])]["liked"] and (U1, T[4]) in rows
    assert (U1, T[4]) in {(u, t) for u, t, _ in data.extra["disliked_pairs"].rows()}
    assert len(rows) + sum(data.dropped.counts.values()) == KNOWN_EVENTS - 3


# --------------------------------------------------------------------------- bad input


def test_missing_or_misspelled_column_names_the_file(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    likes = folder / "likes.parquet"
    pl.read_parquet(likes).drop("is_organic").write_parquet(likes)
    with pytest.raises(
        DataContractError, match=r"flat/50m/likes\.parquet, column 'is_organic': missing column"
    ):
        yambda.load(tmp_path, YambdaConfig())
    write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    listens = folder / "listens.parquet"
    pl.read_parquet(listens).rename({"played_ratio_pct": "played_ratio"}).write_parquet(listens)
    with pytest.raises(DataContractError, match=r"listens\.parquet, column 'played_ratio_pct'.*played_ratio"):
        yambda.load(tmp_path, YambdaConfig())
    write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    pl.read_parquet(listens).with_columns(pl.col("uid").cast(pl.Utf8)).write_parquet(listens)
    with pytest.raises(DataContractError, match=r"listens\.parquet, column 'uid': wrong type String"):
        yambda.load(tmp_path, YambdaConfig())
    write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    mapping = tmp_path / "artist_item_mapping.parquet"
    pl.read_parquet(mapping).rename({"artist_id": "artist"}).write_parquet(mapping)
    with pytest.raises(DataContractError, match=r"artist_item_mapping\.parquet, column 'artist_id'"):
        yambda.load(tmp_path, YambdaConfig())
    write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    embeddings = tmp_path / "embeddings.parquet"
    pl.read_parquet(embeddings).drop("normalized_embed").write_parquet(embeddings)
    with pytest.raises(DataContractError, match=r"embeddings\.parquet, column 'normalized_embed'"):
        yambda.load(tmp_path, YambdaConfig())
    assert yambda.load(tmp_path, YambdaConfig(embedding="embed")).track_features is not None


def test_ids_must_fit_int32(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, dim=8)
    path = folder / "multi_event.parquet"
    multi = pl.read_parquet(path)
    item = pl.when(pl.int_range(pl.len()) == 3).then(3_000_000_000).otherwise(pl.col("item_id"))
    big = multi.with_columns(item.cast(pl.UInt32).alias("item_id"))
    big.write_parquet(path)
    with pytest.raises(DataContractError) as err:
        yambda.load(tmp_path, YambdaConfig())
    assert err.value.file == "flat/50m/multi_event.parquet" and err.value.column == "item_id"
    assert "2,147,483,647" in str(err.value) and "row=3" in str(err.value) and "3000000000" in str(err.value)

    write_yambda(tmp_path, n_events=0, dim=8)
    mapping = tmp_path / "album_item_mapping.parquet"
    albums = pl.read_parquet(mapping)
    albums.with_columns(pl.col("album_id").cast(pl.UInt32) + 2_200_000_000).write_parquet(mapping)
    with pytest.raises(
        DataContractError, match=r"album_item_mapping\.parquet, column 'album_id': values outside"
    ):
        yambda.load(tmp_path, YambdaConfig())


def test_null_ratio_and_null_ids(tmp_path: Path) -> None:
    folder = write_yambda(tmp_path, n_events=0, layout="separate", dim=8)
    listens = folder / "listens.parquet"
    frame = pl.read_parquet(listens)
    # the U2 80% listen loses its ratio: dropped and counted, and the pair's tie is no longer organic
    ratio = pl.when(pl.col("played_ratio_pct") == 80).then(None).otherwise(pl.col("played_ratio_pct"))
    frame.with_columns(ratio.alias("played_ratio_pct")).write_parquet(listens)
    data = yambda.load(tmp_path, YambdaConfig())
    assert data.dropped.counts["flat/50m/listens.parquet: listens without played_ratio_pct"] == 1
    assert rows_by_pair(data)[(U2, T[2])]["is_organic"] is False
    assert len(rows_by_pair(data)) + sum(data.dropped.counts.values()) == KNOWN_EVENTS

    frame.with_columns(
        pl.when(pl.col("uid") == U2).then(None).otherwise(pl.col("uid")).alias("uid")
    ).write_parquet(listens)
    with pytest.raises(DataContractError, match=r"listens\.parquet, column 'uid': 3 rows with a null value"):
        yambda.load(tmp_path, YambdaConfig())


# --------------------------------------------------------------------------- profile and data stage


def test_profile(tmp_path: Path) -> None:
    profile = load_profile("params/yambda.yaml")
    assert profile.data.source == "yambda" and profile.data.yambda.size == "50m"
    assert profile.data.yambda.origin == dt.date(2024, 1, 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: yambda\n  yambda: {size: 5m}\n")
    with pytest.raises(ProfileError, match="data.yambda.size"):
        load_profile(bad)
    bad.write_text("data:\n  source: yambda\n  yambda: {sise: 50m}\n")
    with pytest.raises(ProfileError, match=r"data.yambda.sise: unknown key \(did you mean 'size'\?\)"):
        load_profile(bad)


def test_build_dataset_end_to_end(tmp_path: Path) -> None:
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths

    raw = tmp_path / "yambda"
    folder = write_yambda(raw, n_users=60, n_items=800, n_events=30_000, seed=5)
    profile = load_profile("params/yambda.yaml", data_path=raw)
    paths = RunPaths.for_profile(profile, tmp_path / "project")
    summary = build_dataset(profile, paths, progress=False)

    written = sorted(p.name for p in paths.data.iterdir())
    assert written == [
        "catalog_names.parquet",
        "disliked_pairs.parquet",
        "interactions.parquet",
        "organic_pairs.parquet",
        "split.json",
        "summary.json",
        "track_features.parquet",
        "tracks.parquet",
    ]
    inter = pl.read_parquet(paths.interactions)
    assert inter.schema == pl.Schema(
        {
            C.user_id: pl.Int32,
            C.track_id: pl.Int32,
            C.started_at: pl.Datetime("ns"),
            C.track_seq: pl.Int16,
            C.weight: pl.Float32,
        }
    )
    tracks = validate_tracks(pl.read_parquet(paths.tracks))
    validate_catalog_names(pl.read_parquet(paths.catalog_names))
    assert inter[C.track_id].is_in(tracks[C.track_id].implode()).all()
    assert inter.select(C.user_id, C.track_id).is_duplicated().sum() == 0
    assert pl.read_parquet(paths.data / "organic_pairs.parquet").height == inter.height
    raw_events = pl.scan_parquet(folder / "multi_event.parquet").select(pl.len()).collect().item()
    assert summary["source"] == "yambda" and summary["rows"] == inter.height
    assert summary["rows"] + sum(summary["dropped"].values()) == raw_events
    assert any("data.yambda.origin" in n for n in summary["notes"])

    split = json.loads(paths.split.read_text())
    assert split["data_start"] == "2024-01-01"
    end = dt.date.fromisoformat(split["data_end"])
    assert dt.date.fromisoformat(split["windows"]["test"]["start"]) == end - dt.timedelta(days=13)
    assert dt.date.fromisoformat(split["windows"]["labels"]["start"]) == end - dt.timedelta(days=27)
    assert all(split["windows"][w]["rows"] > 0 for w in ("history", "labels", "test"))


@pytest.mark.parametrize("layout", ["multi", "separate"])
def test_aggregation_in_user_ranges_gives_the_same_pairs(tmp_path: Path, monkeypatch, layout: str) -> None:
    write_yambda(tmp_path, n_users=30, n_items=400, n_events=10_000, seed=7, layout=layout)
    whole = yambda.load(tmp_path, YambdaConfig())
    monkeypatch.setattr(yambda, "CHUNK_LISTENS", 500)  # about a dozen passes over ranges of users
    events = tmp_path / "flat" / "50m" / ("multi_event.parquet" if layout == "multi" else "listens.parquet")
    ranges = yambda._user_ranges(pl.scan_parquet(events), {"plus": 10_000}, 50)
    # contiguous and covering every uid: a user with feedback alone falls in one range too
    assert len(ranges) > 5 and ranges[0][0] is None and ranges[-1][1] is None
    assert all(lo == prev_hi + 1 for (_, prev_hi), (lo, _) in zip(ranges, ranges[1:], strict=False))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    chunked = yambda.load(tmp_path, YambdaConfig())
    assert [p.name.startswith("musicrec-yambda-") for p in scratch.iterdir()] == [True]
    # the chunked rows are parquet parts read lazily, the same rows in the same order
    assert isinstance(chunked.extra["organic_pairs"], pl.LazyFrame)
    assert chunked.interactions.collect().equals(whole.interactions.collect())
    assert chunked.extra["organic_pairs"].collect().equals(whole.extra["organic_pairs"])
    assert chunked.extra["disliked_pairs"].equals(whole.extra["disliked_pairs"])
    assert chunked.dropped.counts == whole.dropped.counts
    assert chunked.notes == whole.notes
    del chunked
    gc.collect()
    assert list(scratch.iterdir()) == []  # the parts go with the data


def test_official_protocol_profile_tests_the_last_day_after_a_gap(tmp_path: Path) -> None:
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths

    raw = tmp_path / "yambda"
    folder = write_yambda(raw, n_users=60, n_items=800, n_events=30_000, seed=5)
    events = pl.read_parquet(folder / "multi_event.parquet")
    # one full listen of a new track 10 minutes before the test day: in the gap
    first = events.filter(pl.col("event_type") == "listen").head(1)
    in_gap = first.with_columns(
        pl.lit(events["timestamp"].max() + 5 - 86_400 - 600, dtype=events.schema["timestamp"]).alias(
            "timestamp"
        ),
        pl.lit(events["item_id"].max() + 1, dtype=events.schema["item_id"]).alias("item_id"),
        pl.lit(100, dtype=events.schema["played_ratio_pct"]).alias("played_ratio_pct"),
    )
    pl.concat([events, in_gap]).write_parquet(folder / "multi_event.parquet")
    profile = load_profile("params/yambda-official.yaml", data_path=raw)
    assert profile.evaluation.ks == [10, 50, 100] and profile.evaluation.coverage_at == [10, 50, 100]
    paths = RunPaths.for_profile(profile, tmp_path / "project")
    summary = build_dataset(profile, paths, progress=False)

    split = json.loads(paths.split.read_text())
    inter = pl.read_parquet(paths.interactions)
    test_start = dt.datetime.fromisoformat(split["test_start"])
    # the test is the last 86,400 s of Yambda's clock: the last event's step ends at test_start + 1 day
    origin = test_start + dt.timedelta(days=1, seconds=-(events["timestamp"].max() + yambda.TIMESTAMP_STEP))
    moved = inter.filter(pl.col(C.track_id) == in_gap["item_id"][0]).get_column(C.started_at)
    assert moved.to_list() == [origin + dt.timedelta(seconds=int(in_gap["timestamp"][0]))]
    gap = inter.filter(
        pl.col(C.started_at).is_between(test_start - dt.timedelta(minutes=30), test_start, closed="left")
    )
    assert split["gap_minutes"] == 30 and gap.height > 0
    windows = paths.windows()
    lf = pl.scan_parquet(paths.interactions)
    fitted = windows.fit_listens(lf, "history+labels").join(
        gap.lazy(), on=[C.user_id, C.track_id], how="semi"
    )
    assert fitted.collect().height == 0  # what the last 30 minutes before the test hold is not fitted on
    counted = sum(w["rows"] for w in split["windows"].values()) + split["gap_rows"]
    assert counted == summary["rows"]
    assert any("align_end" in n for n in summary["notes"])
