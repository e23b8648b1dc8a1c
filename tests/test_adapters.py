"""The source adapters: canonical output, counted drops, clear errors on bad input.

Small hand-made files cover each format's variants; the real datasets in
``../shared/data`` are used when ``MUSICREC_SHARED_DATA`` points at them.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
from pathlib import Path

import polars as pl
import pytest

from musicrec.config import IumConfig, LastfmConfig, MovieLensConfig, YandexConfig
from musicrec.schema import (
    C,
    DataContractError,
    validate_catalog_names,
    validate_interactions,
    validate_tracks,
)
from musicrec.sources import ium, lastfm, movielens, yandex
from musicrec.sources.base import SourceData, SourceError

CANONICAL = {C.user_id: pl.Int32, C.track_id: pl.Int32, C.started_at: pl.Datetime("ns"), C.weight: pl.Float32}
LIST_IDS = pl.List(pl.Int32)


def check_canonical(data: SourceData) -> pl.DataFrame:
    """Dtypes, one row per pair, known track ids, and the contract validators all pass."""
    inter, tracks, names = data.interactions, data.tracks, data.catalog_names
    if isinstance(inter, pl.LazyFrame):
        inter = inter.collect()
    assert {c: inter.schema[c] for c in CANONICAL} == CANONICAL
    assert C.track_seq not in inter.columns or inter.schema[C.track_seq] == pl.Int16
    assert tracks.schema == pl.Schema(
        {C.track_id: pl.Int32, C.albums: LIST_IDS, C.artists: LIST_IDS, C.genres: LIST_IDS}
    )
    assert names.schema == pl.Schema({C.id: pl.Int32, C.type: pl.Utf8, C.name: pl.Utf8})
    assert inter.select(C.user_id, C.track_id).is_duplicated().sum() == 0
    assert inter.get_column(C.track_id).is_in(tracks[C.track_id].implode()).all()
    assert inter.null_count().sum_horizontal().item() == 0
    assert (inter.get_column(C.weight) > 0).all()
    if data.track_features is not None:
        features = data.track_features
        assert features.schema[C.track_id] == pl.Int32
        assert all(dtype == pl.Float32 for c, dtype in features.schema.items() if c != C.track_id)
        assert features.get_column(C.track_id).is_in(tracks[C.track_id].implode()).all()
    validate_tracks(tracks)
    validate_catalog_names(names)
    return validate_interactions(inter, track_ids=tracks[C.track_id])


def dropped_total(data: SourceData, prefix: str = "") -> int:
    return sum(n for reason, n in data.dropped.counts.items() if reason.startswith(prefix))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# --------------------------------------------------------------------------- yandex


def write_yandex(folder: Path, interactions: pl.DataFrame | None = None) -> None:
    folder.mkdir(exist_ok=True)
    if interactions is None:
        interactions = pl.DataFrame(
            {
                C.user_id: pl.Series([1, 1, 2, 3], dtype=pl.Int32),
                C.track_id: pl.Series([10, 11, 10, 12], dtype=pl.Int32),
                C.track_seq: pl.Series([1, 2, 1, 1], dtype=pl.Int16),
                C.started_at: pl.Series(
                    [dt.datetime(2022, 1, d) for d in (1, 2, 2, 3)], dtype=pl.Datetime("us")
                ),
            }
        )
    interactions.write_parquet(folder / "interactions.parquet")
    pl.DataFrame(
        {
            C.track_id: [10, 11, 12],
            C.albums: [[100], [100], [101]],
            C.artists: [[200], [], [201]],
            C.genres: [[7, 8], [7], None],
        },
        schema={
            C.track_id: pl.Int32,
            C.albums: pl.List(pl.Int64),
            C.artists: pl.List(pl.Int64),
            C.genres: pl.List(pl.Int64),
        },
    ).write_parquet(folder / "tracks.parquet")
    pl.DataFrame(
        {
            C.id: [10, 11, 12, 100, 101, 200, 201, 7, 8],
            C.type: ["track"] * 3 + ["album"] * 2 + ["artist"] * 2 + ["genre"] * 2,
            C.name: ["a", "b", "c", "A1", "A2", "X", "Y", "pop", "rap"],
        }
    ).write_parquet(folder / "catalog_names.parquet")


def test_yandex_small_files(tmp_path: Path) -> None:
    write_yandex(tmp_path)
    data = yandex.load(tmp_path, YandexConfig())
    inter = check_canonical(data)
    assert inter.height == 4
    published = data.interactions.collect()
    assert published[C.track_seq].to_list() == [1, 2, 1, 1]  # kept as published
    assert (published[C.weight] == 1.0).all()
    assert data.tracks.filter(pl.col(C.track_id) == 12)[C.genres].to_list() == [[]]
    assert data.tracks.filter(pl.col(C.track_id) == 11)[C.artists].to_list() == [[]]  # kept
    assert data.dropped.counts == {}


def test_yandex_merges_repeats_when_pairs_are_not_unique(tmp_path: Path) -> None:
    inter = pl.DataFrame(
        {
            C.user_id: [1, 1, 2],
            C.track_id: [10, 10, 11],
            C.started_at: [dt.datetime(2022, 1, 2), dt.datetime(2022, 1, 1), dt.datetime(2022, 1, 1)],
        },
        schema_overrides={C.user_id: pl.Int32, C.track_id: pl.Int32},
    )
    write_yandex(tmp_path, inter)
    data = yandex.load(tmp_path, YandexConfig(unique_pairs=False))
    check_canonical(data)
    first = data.interactions.filter(pl.col(C.user_id) == 1)
    assert first[C.started_at].to_list() == [dt.datetime(2022, 1, 1)]
    assert first[C.weight].to_list() == [2.0]
    assert dropped_total(data) == 1


def test_yandex_misspelled_column(tmp_path: Path) -> None:
    write_yandex(tmp_path)
    path = tmp_path / "interactions.parquet"
    pl.read_parquet(path).rename({C.track_id: "trackid"}).write_parquet(path)
    with pytest.raises(
        DataContractError,
        match=r"interactions\.parquet, column 'track_id'.*"
        r"trackid",
    ) as err:
        yandex.load(tmp_path, YandexConfig())
    assert err.value.file == "interactions.parquet" and err.value.column == C.track_id


def test_yandex_wrong_type_and_missing_folder(tmp_path: Path) -> None:
    write_yandex(tmp_path)
    path = tmp_path / "interactions.parquet"
    pl.read_parquet(path).with_columns(pl.col(C.user_id).cast(pl.Utf8) + "x").write_parquet(path)
    with pytest.raises(DataContractError, match="user_id"):
        yandex.load(tmp_path, YandexConfig())
    with pytest.raises(SourceError, match="does not exist"):
        yandex.load(tmp_path / "nowhere", YandexConfig())
    (tmp_path / "tracks.parquet").unlink()
    with pytest.raises(SourceError, match=r"lacks tracks\.parquet"):
        yandex.load(tmp_path, YandexConfig())


# --------------------------------------------------------------------------- ium


def ium_events() -> list[dict]:
    """Events of two users: plays, a like, skips, ads, a premium purchase."""
    rows = [
        ("2023-01-01T10:00:00", 1, "tA", "PLAY"),
        ("2023-01-01T10:03:00.250000", 1, "tA", "LIKE"),
        ("2023-01-01T10:04:00.5", 1, "tB", "PLAY"),
        ("2023-01-01T10:04:30", 1, "tB", "SKIP"),
        ("2023-01-01T10:05:00", 1, "", "ADVERTISEMENT"),
        ("2023-01-02T09:00:00", 1, "tA", "PLAY"),
        ("2023-01-02T11:00:00", 2, "tC", "SKIP"),  # only a skip: weight -0.5, dropped
        ("2023-01-02T11:01:00", 2, "tA", "PLAY"),
        ("2023-01-02T11:02:00", 2, None, "BUY_PREMIUM"),
        ("2023-01-03T08:00:00", 2, "tD", "PLAY"),  # not in tracks.jsonl
    ]
    return [
        {"timestamp": ts, "user_id": u, "track_id": t, "event_type": e, "session_id": 5}
        for ts, u, t, e in rows
    ]


def write_ium(folder: Path, events: list[dict] | None = None, with_tracks: bool = True) -> None:
    folder.mkdir(exist_ok=True)
    write_jsonl(folder / "sessions.jsonl", ium_events() if events is None else events)
    if with_tracks:
        write_jsonl(
            folder / "tracks.jsonl",
            [
                {
                    "id": tid,
                    "name": f"song {tid}",
                    "popularity": 10 + i,
                    "duration_ms": 200_000,
                    "explicit": 0,
                    "id_artist": artist,
                    "release_date": date,
                    "danceability": 0.5,
                    "energy": 0.7,
                    "key": 5,
                    "loudness": -6.0,
                    "speechiness": 0.05,
                    "acousticness": 0.1,
                    "instrumentalness": 0.0,
                    "liveness": 0.2,
                    "valence": 0.4,
                    "tempo": 120.0,
                }
                for i, (tid, artist, date) in enumerate(
                    [
                        ("tA", "ar1", "2011-01-01"),
                        ("tB", "ar2", "1968-12"),
                        ("tC", "ar1", "1993"),
                        ("tE", "ar3", "2000-05-05"),
                    ]
                )
            ],
        )
        write_jsonl(
            folder / "artists.jsonl",
            [
                {"id": "ar1", "name": "Artist One", "genres": ["rock", "pop"]},
                {"id": "ar2", "name": "Artist Two", "genres": []},
                {"id": "ar3", "name": "Artist Three", "genres": ["jazz"]},
            ],
        )


def pair(data: SourceData, user: int, source_track: str) -> dict:
    track = data.extra["track_id_map"].filter(pl.col("source_id") == source_track)[C.track_id]
    rows = data.interactions.filter((pl.col(C.user_id) == user) & (pl.col(C.track_id) == track))
    return rows.to_dicts()[0] if rows.height else {}


def test_ium_small_files(tmp_path: Path) -> None:
    write_ium(tmp_path)
    data = ium.load(tmp_path, IumConfig())
    check_canonical(data)
    assert data.interactions.height == 4  # (1,tA) (1,tB) (2,tA) (2,tD)
    assert pair(data, 1, "tA")[C.weight] == pytest.approx(4.0)  # play + like + play
    assert pair(data, 1, "tA")[C.started_at] == dt.datetime(2023, 1, 1, 10)
    assert pair(data, 1, "tB")[C.weight] == pytest.approx(0.5)
    assert pair(data, 1, "tB")[C.started_at] == dt.datetime(2023, 1, 1, 10, 4, 0, 500_000)
    assert pair(data, 2, "tC") == {}
    counts = data.dropped.counts
    assert counts["sessions.jsonl: events without a track (advertisement)"] == 1
    assert counts["sessions.jsonl: events without a track (buy_premium)"] == 1
    assert counts["sessions.jsonl: events of pairs whose summed weight is not positive"] == 1
    assert data.interactions.height + dropped_total(data) == len(ium_events())
    # catalogue: four tracks of tracks.jsonl and tD from the sessions
    assert data.tracks.height == 5
    assert set(data.extra["track_id_map"]["source_id"]) == {"tA", "tB", "tC", "tD", "tE"}
    by_source = data.tracks.join(data.extra["track_id_map"], on=C.track_id)
    genres = dict(
        zip(data.extra["genre_id_map"]["source_id"], data.extra["genre_id_map"]["genre_id"], strict=True)
    )
    row = by_source.filter(pl.col("source_id") == "tA").row(0, named=True)
    assert sorted(row[C.genres]) == sorted([genres["rock"], genres["pop"]])
    assert row[C.albums] == [] and len(row[C.artists]) == 1
    assert by_source.filter(pl.col("source_id") == "tD")[C.artists].to_list() == [[]]
    names = data.catalog_names
    assert set(names.filter(pl.col(C.type) == "track")[C.name]) == {
        "song tA",
        "song tB",
        "song tC",
        "song tE",
        "tD",
    }
    assert set(names.filter(pl.col(C.type) == "genre")[C.name]) == {"rock", "pop", "jazz"}
    features = data.track_features
    assert features is not None and features.height == 4
    assert sorted(features["release_year"].to_list()) == [1968.0, 1993.0, 2000.0, 2011.0]
    assert {"danceability", "tempo", "popularity"} <= set(features.columns)


def test_ium_lower_case_events_and_shuffled_fields(tmp_path: Path) -> None:
    events = [
        {
            "event_type": e["event_type"].lower(),
            "session_id": e["session_id"],
            "track_id": e["track_id"],
            "user_id": e["user_id"],
            "timestamp": e["timestamp"],
        }
        for e in ium_events()
    ]
    write_ium(tmp_path / "lower", events)
    write_ium(tmp_path / "upper")
    lower = ium.load(tmp_path / "lower", IumConfig())
    upper = ium.load(tmp_path / "upper", IumConfig())
    check_canonical(lower)
    assert lower.interactions.equals(upper.interactions)
    assert lower.dropped.counts == upper.dropped.counts


def test_ium_without_tracks_file(tmp_path: Path) -> None:
    write_ium(tmp_path, with_tracks=False)
    data = ium.load(tmp_path, IumConfig())
    check_canonical(data)
    assert data.track_features is None
    assert data.interactions.height == 4
    assert data.tracks.height == 4  # the tracks seen in the sessions: tA tB tC tD
    assert (data.tracks[C.artists].list.len() == 0).all()
    assert (data.tracks[C.genres].list.len() == 0).all()
    names = data.catalog_names.filter(pl.col(C.type) == "track")
    assert set(names[C.name]) == {"tA", "tB", "tC", "tD"}
    assert any("tracks.jsonl" in note for note in data.notes)


def test_ium_custom_weights_and_unknown_event_type(tmp_path: Path) -> None:
    events = [
        *ium_events(),
        {
            "timestamp": "2023-01-04T00:00:00",
            "user_id": 1,
            "track_id": "tA",
            "event_type": "Share",
            "session_id": 9,
        },
    ]
    write_ium(tmp_path, events)
    data = ium.load(tmp_path, IumConfig(event_weights={"PLAY": 1.0, "Like": 0.0, "skip": -1.0}))
    check_canonical(data)
    assert pair(data, 1, "tA")[C.weight] == pytest.approx(2.0)
    assert pair(data, 1, "tB") == {}  # play 1 + skip -1 = 0: not positive
    assert data.dropped.counts["sessions.jsonl: events of a type with no weight (share)"] == 1
    assert data.interactions.height + dropped_total(data) == len(events)


def test_ium_bad_input(tmp_path: Path) -> None:
    events = [{("trackid" if k == "track_id" else k): v for k, v in e.items()} for e in ium_events()]
    write_ium(tmp_path / "typo", events)
    with pytest.raises(DataContractError, match=r"sessions\.jsonl, column 'track_id'.*trackid"):
        ium.load(tmp_path / "typo", IumConfig())
    events = ium_events()
    events[3]["timestamp"] = "yesterday"
    write_ium(tmp_path / "when", events)
    with pytest.raises(DataContractError, match=r"sessions\.jsonl, column 'timestamp'.*yesterday"):
        ium.load(tmp_path / "when", IumConfig())
    write_ium(tmp_path / "dup")
    with (tmp_path / "dup" / "tracks.jsonl").open("a") as f:
        f.write(json.dumps({"id": "tA", "id_artist": "ar2"}) + "\n")
    with pytest.raises(DataContractError, match=r"tracks\.jsonl, column 'id'"):
        ium.load(tmp_path / "dup", IumConfig())
    with pytest.raises(SourceError, match=r"lacks sessions\.jsonl"):
        ium.load(tmp_path, IumConfig())


@pytest.mark.shared_data
def test_ium_shared(shared_data: Path) -> None:
    folder = shared_data / "ium23l-music-v2"
    data = ium.load(folder, IumConfig())
    check_canonical(data)
    raw = [json.loads(line) for line in (folder / "sessions.jsonl").read_text().splitlines()]
    no_track = sum(1 for r in raw if not r.get("track_id"))
    assert dropped_total(data, "sessions.jsonl: events without a track") == no_track
    assert data.interactions.height + dropped_total(data) == len(raw)
    weights = IumConfig().event_weights
    sums: dict[tuple, float] = {}
    for r in raw:
        if r.get("track_id"):
            key = (r["user_id"], r["track_id"])
            sums[key] = sums.get(key, 0.0) + weights[r["event_type"].lower()]
    assert data.interactions.height == sum(1 for total in sums.values() if total > 0)
    assert data.interactions[C.user_id].n_unique() == len({r["user_id"] for r in raw})
    n_catalogue = len((folder / "tracks.jsonl").read_text().splitlines())
    assert data.tracks.height >= n_catalogue
    assert data.track_features is not None and data.track_features.height == n_catalogue
    ts = data.interactions[C.started_at]
    assert ts.min() >= dt.datetime(2023, 1, 1) and ts.max() < dt.datetime(2023, 3, 29)
    assert (data.tracks[C.genres].list.len() > 0).mean() > 0.9


# --------------------------------------------------------------------------- movielens


def write_100k(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text(
        "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250960\n"
        "2\t30\t4.5\t881250970\n3\t20\t1\t881250980\n"
    )
    flags = ["0"] * 19
    drama, comedy, unknown = list(flags), list(flags), list(flags)
    drama[8], comedy[5], unknown[0] = "1", "1", "1"
    drama[5] = "1"
    lines = [
        ["10", "Amélie (2001)", "01-Jan-2001", "", "http://x", *drama],
        ["20", "Comedy Film (1995)", "01-Jan-1995", "", "http://y", *comedy],
        ["30", "Nobody knows (1990)", "", "", "", *unknown],
    ]
    (folder / "u.item").write_bytes("".join("|".join(line) + "\n" for line in lines).encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(movielens.GENRES_100K)) + "\n")


def write_1m(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "ratings.dat").write_text(
        "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
        "2::3408::4::978300275\n3::661::2::978301968\n"
    )
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "3408::Erin Brockovich: A True Story (2000)::Drama\n"
        "3409::Señorita (1999)::Comedy|Romance\n".encode("latin-1")
    )


def test_movielens_100k_layout(tmp_path: Path) -> None:
    write_100k(tmp_path)
    assert movielens.detect_layout(tmp_path) == "100k"
    data = movielens.load(tmp_path, MovieLensConfig())
    check_canonical(data)
    inter = data.interactions.sort(C.user_id, C.track_id)
    assert inter.select(C.user_id, C.track_id).rows() == [(1, 10), (2, 10), (2, 30)]
    assert inter[C.started_at][0] == dt.datetime(1997, 12, 4, 15, 55, 49)
    assert data.dropped.counts == {"u.data: ratings below 4.0": 2}
    assert data.interactions.height + dropped_total(data) == 5
    genre_names = dict(
        zip(data.extra["genre_id_map"]["genre_id"], data.extra["genre_id_map"]["source_id"], strict=True)
    )
    tracks = {
        r[C.track_id]: sorted(genre_names[g] for g in r[C.genres]) for r in data.tracks.iter_rows(named=True)
    }
    assert tracks == {10: ["Comedy", "Drama"], 20: ["Comedy"], 30: []}
    titles = data.catalog_names.filter(pl.col(C.type) == "track").sort(C.id)[C.name].to_list()
    assert titles[0] == "Amélie (2001)"


def test_movielens_1m_layout_and_threshold(tmp_path: Path) -> None:
    write_1m(tmp_path)
    assert movielens.detect_layout(tmp_path) == "1m"
    data = movielens.load(tmp_path, MovieLensConfig(rating_threshold=3.0))
    check_canonical(data)
    assert data.interactions.height == 4
    assert data.dropped.counts == {"ratings.dat: ratings below 3.0": 1}
    assert data.tracks.height == 4  # 3409 has no rating but is in the catalogue
    names = dict(data.catalog_names.filter(pl.col(C.type) == "track").select(C.id, C.name).iter_rows())
    assert names[3408] == "Erin Brockovich: A True Story (2000)"
    assert names[3409] == "Señorita (1999)"
    assert all(len(a) == 0 for a in data.tracks[C.artists].to_list())
    assert set(data.catalog_names.filter(pl.col(C.type) == "genre")[C.name]) == {
        "Drama",
        "Animation",
        "Children's",
        "Musical",
        "Comedy",
        "Romance",
    }


def write_latest(
    folder: Path, ratings: str, movies: str = "movieId,title,genres\n2,A (1999),Drama\n"
) -> Path:
    """An ml-latest-small layout with the given ``ratings.csv`` and ``movies.csv`` texts."""
    folder.mkdir(exist_ok=True)
    (folder / "ratings.csv").write_text(ratings)
    (folder / "movies.csv").write_text(movies)
    return folder


def test_movielens_bad_input(tmp_path: Path) -> None:
    folder = write_latest(tmp_path / "latest", "userId,movieID,rating,timestamp\n1,2,4.0,978300760\n")
    with pytest.raises(DataContractError, match=r"ratings\.csv, column 'movieId'.*movieID"):
        movielens.load(folder, MovieLensConfig())
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,x,4.0,978300760\n")
    with pytest.raises(DataContractError, match=r"ratings\.csv, column 'movieId'"):
        movielens.load(folder, MovieLensConfig())
    write_1m(tmp_path / "m1")
    (tmp_path / "m1" / "ratings.dat").write_text("1::1193::5\n")
    with pytest.raises(DataContractError, match=r"ratings\.dat"):
        movielens.load(tmp_path / "m1", MovieLensConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="none of the known MovieLens layouts"):
        movielens.load(tmp_path / "empty", MovieLensConfig())


@pytest.mark.shared_data
def test_movielens_latest_small_shared(shared_data: Path) -> None:
    folder = shared_data / "ml-latest-small"
    data = movielens.load(folder, MovieLensConfig())
    check_canonical(data)
    with (folder / "ratings.csv").open(newline="") as f:
        ratings = list(csv.DictReader(f))
    positives = [r for r in ratings if float(r["rating"]) >= 4.0]
    assert data.interactions.height == len(positives)
    assert data.interactions[C.user_id].n_unique() == len({r["userId"] for r in positives}) <= 610
    assert data.dropped.counts == {"ratings.csv: ratings below 4.0": len(ratings) - len(positives)}
    assert data.interactions.height + dropped_total(data) == len(ratings) == 100_836
    with (folder / "movies.csv").open(newline="", encoding="utf-8") as f:
        movies = list(csv.DictReader(f))
    assert data.tracks.height == len(movies)
    no_genre = sum(1 for m in movies if m["genres"] == "(no genres listed)")
    assert (data.tracks[C.genres].list.len() == 0).sum() == no_genre
    assert "(no genres listed)" not in data.catalog_names[C.name].to_list()
    ts = data.interactions[C.started_at]
    assert ts.min().year == 1996 and ts.max().year == 2018


# --------------------------------------------------------------------------- lastfm


def write_lastfm(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "user_taggedartists.dat").write_text(
        "userID\tartistID\ttagID\tday\tmonth\tyear\r\n"
        "2\t51\t1\t1\t4\t2009\r\n2\t51\t2\t1\t3\t2009\r\n2\t52\t1\t1\t5\t2010\r\n"
        "3\t51\t1\t1\t1\t1956\r\n3\t52\t2\t1\t6\t2010\r\n3\t99\t1\t1\t7\t2010\r\n"
        "4\t52\t3\t1\t1\t1956\r\n"
    )
    (folder / "user_artists.dat").write_text(
        "userID\tartistID\tweight\r\n2\t51\t100\r\n2\t53\t5\r\n3\t51\t7\r\n4\t52\t3\r\n"
    )
    (folder / "artists.dat").write_text(
        'id\tname\turl\tpictureURL\n51\t"Weird" Al\thttp://a\thttp://p\n52\tBjörk\thttp://b\t\n'
        "53\tQuiet\thttp://c\thttp://q\n"
    )
    (folder / "tags.dat").write_bytes(
        "tagID\ttagValue\r\n1\trock\r\n2\ttropicália\r\n3\tpop\r\n".encode("latin-1")
    )


def test_lastfm_small_files(tmp_path: Path) -> None:
    write_lastfm(tmp_path)
    data = lastfm.load(tmp_path, LastfmConfig(top_tags_per_artist=1))
    check_canonical(data)
    inter = {(r[C.user_id], r[C.track_id]): r for r in data.interactions.iter_rows(named=True)}
    assert set(inter) == {(2, 51), (2, 52), (3, 52), (3, 99)}
    assert inter[2, 51][C.started_at] == dt.datetime(2009, 3, 1)
    assert inter[2, 51][C.weight] == pytest.approx(1 + math.log1p(100))
    assert inter[2, 52][C.weight] == pytest.approx(1.0)
    assert data.dropped.counts == {
        "user_taggedartists.dat: tag events dated before 2005": 2,
        "user_taggedartists.dat: repeat tag events of a (user, artist) pair merged into its row": 1,
        "user_artists.dat: play-count pairs with no dated tag event (no time)": 3,
    }
    tag_drops = dropped_total(data, "user_taggedartists.dat")
    assert data.interactions.height + tag_drops == 7
    tracks = {r[C.track_id]: r for r in data.tracks.iter_rows(named=True)}
    assert set(tracks) == {51, 52, 53, 99}
    assert tracks[51][C.artists] == [51] and tracks[51][C.albums] == []
    assert tracks[51][C.genres] == [1]  # rock twice (once in a bogus year), tropicália once
    assert tracks[53][C.genres] == []
    names = {(r[C.type], r[C.id]): r[C.name] for r in data.catalog_names.iter_rows(named=True)}
    assert names["artist", 51] == '"Weird" Al' and names["track", 52] == "Björk"
    assert names["track", 99] == "99" and names["genre", 2] == "tropicália"


def test_lastfm_bad_input(tmp_path: Path) -> None:
    write_lastfm(tmp_path)
    path = tmp_path / "user_artists.dat"
    path.write_text(path.read_text().replace("artistID", "artistId"))
    with pytest.raises(DataContractError, match=r"user_artists\.dat, column 'artistID'"):
        lastfm.load(tmp_path, LastfmConfig())
    write_lastfm(tmp_path)
    path = tmp_path / "user_taggedartists.dat"
    path.write_text(path.read_text() + "5\t52\t1\t1\t13\t2010\r\n")
    with pytest.raises(DataContractError, match=r"user_taggedartists\.dat.*not valid dates"):
        lastfm.load(tmp_path, LastfmConfig())


@pytest.mark.shared_data
def test_lastfm_shared(shared_data: Path) -> None:
    folder = shared_data / "hetrec2011-lastfm-2k"
    options = LastfmConfig()
    data = lastfm.load(folder, options)
    check_canonical(data)
    tagged = (folder / "user_taggedartists.dat").read_text().splitlines()[1:]
    events = [line.split("\t") for line in tagged if line.strip()]
    years = [int(e[5]) for e in events]
    bogus = sum(1 for y in years if y < options.first_year)
    assert 0 < bogus < 10
    counts = data.dropped.counts
    assert counts[f"user_taggedartists.dat: tag events dated before {options.first_year}"] == bogus
    assert data.interactions.height + dropped_total(data, "user_taggedartists.dat") == len(events)
    dated_pairs = {(int(e[0]), int(e[1])) for e in events if int(e[5]) >= options.first_year}
    assert data.interactions.height == len(dated_pairs)
    plays = (folder / "user_artists.dat").read_text().splitlines()[1:]
    play_rows = [line for line in plays if line.strip()]
    with_plays = data.interactions.filter(pl.col(C.weight) > 1).height
    untimed = counts["user_artists.dat: play-count pairs with no dated tag event (no time)"]
    assert with_plays + untimed == len(play_rows)
    assert data.interactions[C.user_id].n_unique() <= 1892
    artists = (folder / "artists.dat").read_text().splitlines()[1:]
    assert data.tracks.height >= len([a for a in artists if a.strip()])
    ts = data.interactions[C.started_at]
    assert ts.min().year >= options.first_year and ts.max().year == 2011
    assert (data.tracks[C.genres].list.len() <= options.top_tags_per_artist).all()


def test_ium_a_few_string_user_ids_are_an_error_naming_the_lines(tmp_path: Path) -> None:
    """Issue 13: four lines with "abc" silently renumbered every user (source user 101 became 1)."""
    events = [dict(e, user_id=e["user_id"] + 100) for e in ium_events()]
    events[3]["user_id"] = "abc"
    write_ium(tmp_path, events)
    with pytest.raises(DataContractError, match=r"sessions\.jsonl.*user_id.*mixes integer.*line 4: 'abc'"):
        ium.load(tmp_path, IumConfig())


def test_ium_integer_ids_written_as_strings_keep_their_values(tmp_path: Path) -> None:
    events = [dict(e, user_id=str(e["user_id"] + 100)) for e in ium_events()]
    write_ium(tmp_path, events)
    data = ium.load(tmp_path, IumConfig())
    assert set(data.interactions[C.user_id].unique()) == {101, 102} and "user_id_map" not in data.extra


def test_ium_every_line_twice_changes_no_weight(tmp_path: Path) -> None:
    write_ium(tmp_path / "once")
    write_ium(tmp_path / "twice", [e for e in ium_events() for _ in range(2)])
    once, twice = ium.load(tmp_path / "once", IumConfig()), ium.load(tmp_path / "twice", IumConfig())
    assert once.interactions.equals(twice.interactions)
    merged = twice.dropped.counts["sessions.jsonl: exact duplicate events merged"]
    assert merged == sum(
        1 for e in ium_events() if e["track_id"] and e["event_type"] in ("PLAY", "LIKE", "SKIP")
    )
    assert twice.interactions.height + dropped_total(twice) == 2 * len(ium_events()), (
        "every line accounted for"
    )


@pytest.mark.parametrize("rating", ["7.5", "-3"])
def test_movielens_ratings_off_the_scale_are_errors(tmp_path: Path, rating: str) -> None:
    folder = write_latest(
        tmp_path / "latest",
        f"userId,movieId,rating,timestamp\n1,2,4.0,978300760\n1,3,{rating},978300761\n",
        "movieId,title,genres\n2,A (1999),Drama\n3,B (2000),Drama\n",
    )
    with pytest.raises(
        DataContractError, match=r"ratings\.csv, column 'rating'.*1 ratings outside .* 0\.5 \.\. 5"
    ):
        movielens.load(folder, MovieLensConfig())


@pytest.mark.parametrize("timestamp", ["99999999999999", "-5"])
def test_movielens_timestamps_off_the_clock_are_errors_naming_the_rows(
    tmp_path: Path, timestamp: str
) -> None:
    folder = write_latest(
        tmp_path / "latest",
        f"userId,movieId,rating,timestamp\n1,2,4.0,978300760\n1,3,4.5,{timestamp}\n",
        "movieId,title,genres\n2,A (1999),Drama\n3,B (2000),Drama\n",
    )
    with pytest.raises(
        DataContractError, match=r"ratings\.csv, column 'timestamp'.*1 timestamps outside"
    ) as caught:
        movielens.load(folder, MovieLensConfig())
    assert "row=1" in str(caught.value) and timestamp in str(caught.value)


@pytest.mark.parametrize("lazy", [False, True])
def test_listens_dated_in_the_future_are_errors_naming_the_rows(lazy: bool) -> None:
    from musicrec.schema import validate_interactions, validate_interactions_lazy

    frame = pl.DataFrame(
        {
            C.user_id: [1, 2],
            C.track_id: [10, 10],
            C.started_at: [dt.datetime(2022, 5, 1), dt.datetime(2099, 1, 1)],
            C.track_seq: [1, 1],
        }
    ).with_columns(pl.col(C.started_at).cast(pl.Datetime("ns")), pl.col(C.user_id, C.track_id).cast(pl.Int32))
    with pytest.raises(DataContractError, match=r"column 'started_at'.*dated in the future") as caught:
        if lazy:
            validate_interactions_lazy(frame.lazy(), pl.Series([10], dtype=pl.Int32))
        else:
            validate_interactions(frame, track_ids=pl.Series([10], dtype=pl.Int32))
    assert "2099" in str(caught.value), "the offending row is shown"


def test_movielens_header_only_says_no_rows(tmp_path: Path) -> None:
    folder = write_latest(tmp_path / "latest", "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataContractError, match=r"ratings\.csv.*has no rows"):
        movielens.load(folder, MovieLensConfig())


def test_a_data_path_that_is_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(SourceError, match=r"is a file; DATA_PATH names the folder"):
        movielens.load(tmp_path / "ratings.csv", MovieLensConfig())


def test_the_movielens_profile_runs_on_the_100k_layout_unchanged(tmp_path: Path) -> None:
    """ml-100k's ratings end in 1998: the profile's windows are shares of each user's ratings, so
    the profile written for latest-small (which ends in 2018) fits it as it is."""
    from musicrec.config import load_profile
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths, read_json

    folder = tmp_path / "ml-100k"
    write_100k(folder)
    # ten movies, each user rating all ten (ml-100k's users rate at least 20)
    flags = "|".join(["0"] * 18 + ["1"])
    items = "".join(f"{m}|Movie {m} (1990)|01-Jan-1990|||{flags}\n" for m in range(1, 11))
    (folder / "u.item").write_bytes(items.encode("latin-1"))
    start = 875_000_000  # 1997-09-23
    lines = [
        f"{user}\t{(user + i) % 10 + 1}\t5\t{start + (user + i * 45) * 86_400}"
        for user in range(1, 41)
        for i in range(10)
    ]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    profile = load_profile(
        Path(__file__).resolve().parents[1] / "params" / "movielens.yaml", data_path=folder
    )
    paths = RunPaths(tmp_path / "project", profile.run)
    build_dataset(profile, paths, progress=False)
    split = read_json(paths.split)
    assert split["data_end"].startswith("1998") and split["protocol"] == "per_user"
    windows = split["windows"]
    # each user's last rating is their test, the one before it their labels, 8 their history
    assert [windows[w]["rows"] for w in ("history", "labels", "test")] == [320, 40, 40]
    assert windows["test"]["warm_users"] == 40
