"""The Last.fm 1K adapter on small logs written in the published layout.

The expected values of the hand-made log (:data:`KNOWN`) are worked out by hand in the
comments, not taken from the adapter's output.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import polars as pl
import pytest
from test_adapters import check_canonical

from musicrec.config import LastfmOneKConfig, ProfileError, load_profile
from musicrec.schema import C, DataContractError
from musicrec.sources import lastfm1k
from musicrec.sources.base import SourceError

LOG = "userid-timestamp-artid-artname-traid-traname.tsv"
A1 = "0a1b2c3d-0000-4000-8000-00000000a001"
T1 = "0a1b2c3d-0000-4000-8000-00000000f001"

#: userid, timestamp, artist MBID, artist name, track MBID, track name (one line each).
KNOWN = [
    ("user_000001", "2009-01-01T10:00:00Z", A1, "Artist A", T1, "Song One"),
    ("user_000001", "2009-01-03T10:00:00Z", A1, "Artist A", T1, "Song One"),  # repeat
    ("user_000001", "2009-01-02T10:00:00Z", A1.upper(), "Artist A", T1.upper(), "Song One"),  # repeat
    ("user_000001", "2009-01-04T10:00:00Z", "", "Artist B", "", "Intro"),  # no MBIDs
    ("user_000002", "2009-01-05T10:00:00Z", "", "Artist C", "", "Intro"),  # same title, other artist
    ("user_000002", "2009-01-06T10:00:00Z", "", "Artist B", "", "Intro"),
    ("user_000002", "2009-01-07T10:00:00Z", "", "Artist B", "", "Intro"),  # repeat
    ("user_000002", "2009-01-08T10:00:00Z", "x", "Artist B"),  # malformed: 4 fields
    ("user_000003", "2009-01-09T10:00:00Z", "", "Artist B", "", ""),  # no track name
    ("user_000003", "2009-01-10T10:00:00Z", A1, "Artist A", T1, "Song One"),
    ("user_000003", "2009-01-11T10:00:00Z", "", "", "", "Lonely"),  # no artist at all
    ("", "2009-01-12T10:00:00Z", "", "Artist B", "", "Intro"),  # no user
    ("user_000003", "1970-01-01T00:00:00Z", "", "Artist B", "", "Intro"),  # a clock error
]
#: Track keys in sorted order: the MBID one first, then (artist, name): ("", Lonely),
#: (Artist B, Intro), (Artist C, Intro). Artists: A1, then by name Artist B, Artist C.
SONG, LONELY, INTRO_B, INTRO_C = 1, 2, 3, 4
ART_A, ART_B, ART_C = 1, 2, 3
#: (user, track) -> (first listen, plays, track_seq).
EXPECTED = {
    (1, SONG): (dt.datetime(2009, 1, 1, 10), 3, 1),
    (1, INTRO_B): (dt.datetime(2009, 1, 4, 10), 1, 2),
    (2, INTRO_C): (dt.datetime(2009, 1, 5, 10), 1, 1),
    (2, INTRO_B): (dt.datetime(2009, 1, 6, 10), 2, 2),
    (3, SONG): (dt.datetime(2009, 1, 10, 10), 1, 1),
    (3, LONELY): (dt.datetime(2009, 1, 11, 10), 1, 2),
}
#: 13 lines = 6 interactions + 1 malformed + 1 no user + 1 no track name + 1 early + 3 merged.
KNOWN_DROPPED = {"malformed": 1, "no userid": 1, "no track name": 1, "before": 1, "merged": 3}
#: one malformed line in 13 is more than the default 1%
TOLERANT = {"max_malformed_share": 0.2}


def write_log(folder: Path, rows, name: str = LOG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def reasons(data) -> dict[str, int]:
    out = {}
    for reason, n in data.dropped.counts.items():
        key = next((k for k in KNOWN_DROPPED if k in reason), reason)
        out[key] = out.get(key, 0) + n
    return out


def load_known(tmp_path: Path, **options):
    write_log(tmp_path, KNOWN)
    return lastfm1k.load(tmp_path, LastfmOneKConfig(**{**TOLERANT, **options}))


def test_known_log_aggregated_exactly(tmp_path: Path) -> None:
    data = load_known(tmp_path)
    inter = check_canonical(data)
    rows = {(r[C.user_id], r[C.track_id]): r for r in inter.iter_rows(named=True)}
    assert set(rows) == set(EXPECTED)
    for pair, (first, plays, seq) in EXPECTED.items():
        assert rows[pair][C.started_at] == first, pair
        assert rows[pair][C.track_seq] == seq, pair
        assert rows[pair][C.weight] == pytest.approx(math.log2(1 + plays)), pair
    assert rows[(1, SONG)][C.weight] == pytest.approx(2.0)  # three plays weigh 2


def test_every_line_accounted_for(tmp_path: Path) -> None:
    data = load_known(tmp_path)
    assert reasons(data) == KNOWN_DROPPED
    n_rows = data.interactions.collect().height
    assert n_rows + sum(data.dropped.counts.values()) == len(KNOWN)
    assert all(reason.startswith(f"{LOG}: ") for reason in data.dropped.counts)
    assert any("before data.lastfm1k.first_year (2002)" in r for r in data.dropped.counts)


def test_track_and_artist_keys(tmp_path: Path) -> None:
    data = load_known(tmp_path)
    tracks = {r[C.track_id]: r[C.artists] for r in data.tracks.iter_rows(named=True)}
    # the MBID track (upper- and lower-case spellings alike) is one track; "Intro" under two
    # artists is two tracks; a track with no artist has an empty list
    assert tracks == {SONG: [ART_A], LONELY: [], INTRO_B: [ART_B], INTRO_C: [ART_C]}
    assert data.tracks.select(pl.col(C.albums).list.len().sum(), pl.col(C.genres).list.len().sum()).row(
        0
    ) == (
        0,
        0,
    )
    names = {(r[C.type], r[C.id]): r[C.name] for r in data.catalog_names.iter_rows(named=True)}
    assert names == {
        ("track", SONG): "Song One",
        ("track", LONELY): "Lonely",
        ("track", INTRO_B): "Intro",
        ("track", INTRO_C): "Intro",
        ("artist", ART_A): "Artist A",
        ("artist", ART_B): "Artist B",
        ("artist", ART_C): "Artist C",
    }
    track_map = data.extra["track_id_map"].sort(C.track_id)
    assert track_map["mbid"].to_list() == [T1, None, None, None]
    assert track_map["artist_id"].to_list() == [ART_A, None, ART_B, ART_C]
    assert data.extra["artist_id_map"].sort("artist_id")["mbid"].to_list() == [A1, None, None]


def test_ids_do_not_depend_on_the_line_order(tmp_path: Path) -> None:
    first = load_known(tmp_path / "a")
    write_log(tmp_path / "b", list(reversed(KNOWN)))
    second = lastfm1k.load(tmp_path / "b", LastfmOneKConfig(**TOLERANT))
    for frame in ("tracks", "catalog_names"):
        assert getattr(first, frame).sort(pl.all()).equals(getattr(second, frame).sort(pl.all()))
    keys = [C.user_id, C.track_id]
    assert first.interactions.collect().sort(keys).equals(second.interactions.collect().sort(keys))


def test_a_track_takes_its_most_frequent_artist_and_name(tmp_path: Path) -> None:
    rows = [
        ("user_000001", "2009-01-01T10:00:00Z", A1, "Artist A", T1, "Song One"),
        ("user_000002", "2009-01-01T11:00:00Z", A1, "Artist A", T1, "Song One"),
        ("user_000003", "2009-01-01T12:00:00Z", "", "Feat. Artist A", T1, "Song One (live)"),
    ]
    write_log(tmp_path, rows)
    data = lastfm1k.load(tmp_path, LastfmOneKConfig())
    check_canonical(data)
    assert data.tracks[C.artists].to_list() == [[1]]
    names = data.catalog_names
    assert names.filter(pl.col(C.type) == "track")[C.name].to_list() == ["Song One"]
    assert names.filter(pl.col(C.type) == "artist")[C.name].to_list() == ["Artist A"]
    assert data.dropped.counts == {}


def test_per_user_cap_keeps_the_most_recent(tmp_path: Path) -> None:
    data = load_known(tmp_path, max_tracks_per_user=1)
    inter = check_canonical(data)
    assert sorted(inter.select(C.user_id, C.track_id).iter_rows()) == [
        (1, INTRO_B),
        (2, INTRO_B),
        (3, LONELY),
    ]
    assert (inter[C.track_seq] == 1).all()
    capped = {r: n for r, n in data.dropped.counts.items() if "max_tracks_per_user" in r}
    assert list(capped.values()) == [3]
    assert inter.height + sum(data.dropped.counts.values()) == len(KNOWN)


def test_crlf_line_ends_and_a_blank_line(tmp_path: Path) -> None:
    path = tmp_path / LOG
    lines = ["\t".join(r) for r in KNOWN[:4]]
    path.write_bytes(("\r\n".join([*lines[:2], "", *lines[2:]]) + "\r\n").encode())
    data = lastfm1k.load(tmp_path, LastfmOneKConfig(max_malformed_share=0.5))
    inter = check_canonical(data)
    assert inter.height == 2  # Song One (3 listens) and Intro by Artist B
    names = data.catalog_names.filter(pl.col(C.type) == "track")[C.name].to_list()
    assert sorted(names) == ["Intro", "Song One"]  # no "\r" left on the last field
    assert reasons(data) == {"malformed": 1, "merged": 2}


# --------------------------------------------------------------------------- errors


def test_too_many_malformed_lines_name_the_file_and_the_line(tmp_path: Path) -> None:
    write_log(tmp_path, KNOWN)
    with pytest.raises(DataContractError, match=rf"{LOG}: 1 of 13 lines .* First on line 8") as err:
        lastfm1k.load(tmp_path, LastfmOneKConfig())
    assert "max_malformed_share" in str(err.value)


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOG).write_text("user_000001,2009-01-01T10:00:00Z,,A,,B\nuser_000002,2009-01-01,,A,,B\n")
    with pytest.raises(DataContractError, match=r"2 of 2 lines \(100.0%\) do not have 6 tab-separated"):
        lastfm1k.load(tmp_path, LastfmOneKConfig(max_malformed_share=1.0))


def test_unparsable_timestamps_name_the_line(tmp_path: Path) -> None:
    rows = [KNOWN[0], ("user_000001", "04 May 2009 23:08", "", "A", "", "B"), KNOWN[3]]
    write_log(tmp_path, rows)
    with pytest.raises(DataContractError, match=r"timestamp .* 1 lines .* not ISO-8601 .* first on line 2"):
        lastfm1k.load(tmp_path, LastfmOneKConfig())


def test_no_usable_line_and_an_empty_file(tmp_path: Path) -> None:
    write_log(tmp_path, [("user_000001", "2009-01-01T10:00:00Z", "", "A", "", "")])
    with pytest.raises(DataContractError, match=r"none of its 1 lines is a usable listen .*no track name: 1"):
        lastfm1k.load(tmp_path, LastfmOneKConfig())
    (tmp_path / LOG).write_text("")
    with pytest.raises(DataContractError, match="empty"):
        lastfm1k.load(tmp_path, LastfmOneKConfig())


def test_missing_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        lastfm1k.load(tmp_path / "nowhere", LastfmOneKConfig())
    (tmp_path / "userid-profile.tsv").write_text("#id\tgender\tage\tcountry\tregistered\n")
    with pytest.raises(SourceError, match=rf"lacks {LOG}"):
        lastfm1k.load(tmp_path, LastfmOneKConfig())


# --------------------------------------------------------------------------- profile and data stage


def test_profile(tmp_path: Path) -> None:
    profile = load_profile("params/lastfm1k.yaml")
    assert profile.run == "lastfm1k" and profile.data.source == "lastfm1k"
    assert profile.data.lastfm1k.file == LOG and profile.split.uses_shares
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: lastfm1k\n  lastfm1k: {max_tracks_per_user: 40000}\n")
    with pytest.raises(ProfileError, match="data.lastfm1k.max_tracks_per_user"):
        load_profile(bad)


def synthetic_log(n_users: int = 40, n_listens: int = 60) -> list[tuple[str, ...]]:
    """Listens spread over 120 days of 2008, with repeats and tracks with and without MBIDs."""
    start = dt.datetime(2008, 1, 1)
    rows = []
    for user in range(1, n_users + 1):
        for i in range(n_listens):
            track = (user * 7 + i * 3) % 50
            when = start + dt.timedelta(days=(user + i * 2) % 120, minutes=i)
            mbid = f"00000000-0000-4000-8000-{track:012d}" if track % 2 else ""
            rows.append(
                (
                    f"user_{user:06d}",
                    f"{when:%Y-%m-%dT%H:%M:%SZ}",
                    "",
                    f"Artist {track % 9}",
                    mbid,
                    f"Track {track}",
                )
            )
    return rows


def test_build_dataset_end_to_end(tmp_path: Path) -> None:
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths

    raw = tmp_path / "lastfm-dataset-1K"
    rows = synthetic_log()
    write_log(raw, rows)
    profile = load_profile("params/lastfm1k.yaml", data_path=raw)
    paths = RunPaths.for_profile(profile, tmp_path / "project")
    summary = build_dataset(profile, paths, progress=False)

    assert sorted(p.name for p in paths.data.iterdir()) == [
        "artist_id_map.parquet",
        "catalog_names.parquet",
        "interactions.parquet",
        "split.json",
        "summary.json",
        "track_id_map.parquet",
        "tracks.parquet",
    ]
    inter = pl.read_parquet(paths.interactions)
    assert inter.schema[C.track_seq] == pl.Int16 and inter.schema[C.weight] == pl.Float32
    assert summary["source"] == "lastfm1k" and summary["users"] == 40
    assert summary["rows"] + sum(summary["dropped"].values()) == len(rows)
    split = json.loads(paths.split.read_text())
    assert split["data_start"] == "2008-01-01"
    assert all(split["windows"][w]["rows"] > 0 for w in ("history", "labels", "test"))
