"""The per-user protocol: each user's last share of listens is their test, the share before it
their labels; every window and every caller of :class:`musicrec.split.Windows` cuts each user
at their own boundaries."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from musicrec.config import ProfileError, SplitConfig, load_profile
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.schema import DataContractError, validate_interactions
from musicrec.split import Windows, compute_split, per_user_split, user_boundaries

PER_USER = SplitConfig(protocol="per_user", label_start="20%", test_start="10%")
JAN = [dt.datetime(2022, 1, d) for d in range(1, 32)]


def listens() -> pl.DataFrame:
    """User 1: 10 listens on 10 days (track 100 + day). User 2: 20 listens, all at one instant
    (a month-resolution source). User 3: 5 listens. User 4: a single listen, on Jan 3."""
    rows = [(1, 100 + d, JAN[d]) for d in range(10)]
    rows += [(2, 200 + i, JAN[0]) for i in range(20)]
    rows += [(3, 300 + d, JAN[d + 5]) for d in range(5)]
    rows += [(4, 400, JAN[2])]
    frame = pl.DataFrame(rows, schema=["user_id", "track_id", "started_at"], orient="row")
    tracks = pl.Series("track_id", sorted({r[1] for r in rows}), dtype=pl.Int32)
    return validate_interactions(frame, track_ids=tracks, file="listens")


def run_of(tmp_path: Path, frame: pl.DataFrame, cfg: SplitConfig = PER_USER) -> RunPaths:
    """A data folder as the data stage leaves it: interactions, boundaries, split.json."""
    paths = RunPaths(tmp_path, "per_user")
    paths.data.mkdir(parents=True)
    write_parquet(frame, paths.interactions)
    boundaries = user_boundaries(frame.lazy(), cfg)
    write_parquet(boundaries, paths.user_boundaries)
    write_json(per_user_split(frame.lazy(), boundaries, cfg, "listens"), paths.split)
    return paths


def tracks_of(frame: pl.LazyFrame, user: int) -> list[int]:
    return frame.filter(pl.col("user_id") == user).collect().get_column("track_id").sort().to_list()


def test_each_user_is_cut_at_their_own_shares_even_at_one_instant(tmp_path):
    paths = run_of(tmp_path, listens())
    windows = paths.windows()
    lf = pl.scan_parquet(paths.interactions)
    assert windows.protocol == "per_user"
    history = windows.fit_listens(lf, "history")
    labels = windows.target_listens(lf, "labels")
    test = windows.target_listens(lf, "test")
    # user 1: ceil(10%) = 1 test listen (the last day), ceil(20%) = 2 for labels + test
    assert tracks_of(test, 1) == [109] and tracks_of(labels, 1) == [108]
    assert tracks_of(history, 1) == list(range(100, 108))
    # user 2's 20 listens share one instant: track_seq orders them, so the shares stay exact
    assert len(tracks_of(test, 2)) == 2 and len(tracks_of(labels, 2)) == 2
    assert len(tracks_of(history, 2)) == 16
    # user 3: ceil(0.5) = ceil(1.0) = 1, so no labels listen; user 4's only listen is a test one
    assert tracks_of(test, 3) == [304] and tracks_of(labels, 3) == []
    assert tracks_of(test, 4) == [400] and tracks_of(history, 4) == []
    # the windows partition every user's listens, and history + labels is what comes before test
    total = sum(f.select(pl.len()).collect().item() for f in (history, labels, test))
    assert total == listens().height
    before_test = windows.fit_listens(lf, "history+labels")
    assert before_test.select(pl.len()).collect().item() == total - test.select(pl.len()).collect().item()


def test_the_window_column_and_warm_users_agree_with_the_filters(tmp_path):
    paths = run_of(tmp_path, listens())
    windows = paths.windows()
    lf = pl.scan_parquet(paths.interactions)
    labelled = windows.with_window(lf).collect()
    for name, frame in (
        ("history", windows.fit_listens(lf, "history")),
        ("labels", windows.target_listens(lf, "labels")),
        ("test", windows.target_listens(lf, "test")),
    ):
        expected = frame.select("user_id", "track_id").collect().sort("user_id", "track_id")
        got = (
            labelled.filter(pl.col("window") == name)
            .select("user_id", "track_id")
            .sort("user_id", "track_id")
        )
        assert got.equals(expected), name
    assert sorted(windows.users_before(lf, "test").collect().get_column("user_id")) == [1, 2, 3]
    assert sorted(windows.users_before(lf, "labels").collect().get_column("user_id")) == [1, 2, 3]


def test_split_json_counts_each_window_and_the_cold_users(tmp_path):
    paths = run_of(tmp_path, listens())
    split = json.loads(paths.split.read_text())
    assert split["protocol"] == "per_user" and split["boundaries"] == "user_boundaries.parquet"
    w = split["windows"]
    assert [w[k]["rows"] for k in ("history", "labels", "test")] == [8 + 16 + 4, 1 + 2, 1 + 2 + 1 + 1]
    # user 4 has no listen before their test: the one cold user; the labels users all have history
    assert (w["test"]["users"], w["test"]["cold_users"], w["test"]["warm_users"]) == (4, 1, 3)
    assert (w["labels"]["users"], w["labels"]["cold_users"]) == (2, 0)
    # calendar days overlap: user 2's test is on Jan 1, before user 3's history ends on Jan 9
    assert w["test"]["start"] == "2022-01-01" and w["history"]["end"] == "2022-01-09"
    assert split["data_start"] == "2022-01-01" and split["data_end"] == "2022-01-10"
    # compute_split reaches the same result from the profile's section
    assert compute_split(paths.interactions, PER_USER) == split


def test_an_empty_per_user_window_names_the_keys_to_move(tmp_path):
    # three listens per user: ceil(3 * 20%) = ceil(3 * 10%) = 1, so no user has a labels listen
    frame = listens().filter(pl.col("track_seq") <= 3)
    with pytest.raises(DataContractError, match=r"per-user labels window holds no interactions; raise split"):
        compute_split(frame.lazy(), PER_USER, "listens")


def test_missing_boundaries_are_a_clear_error(tmp_path):
    paths = run_of(tmp_path, listens())
    paths.user_boundaries.unlink()
    with pytest.raises(
        FileNotFoundError, match=r"user_boundaries.parquet: the per-user boundaries .*\(make data\)"
    ):
        paths.windows()


def test_listens_without_track_seq_are_refused_with_the_reason(tmp_path):
    windows = run_of(tmp_path, listens()).windows()
    with pytest.raises(ValueError, match="no track_seq column"):
        windows.fit_listens(listens().drop("track_seq").lazy(), "history")
    with pytest.raises(ValueError, match="no common dates"):
        windows.bounds("test")


def test_the_global_protocol_is_unchanged():
    windows = Windows(dt.date(2022, 1, 5), dt.date(2022, 1, 8))
    lf = listens().lazy()
    test = windows.target_listens(lf, "test").collect()
    assert windows.protocol == "global" and test.get_column("started_at").min() == JAN[7]
    assert windows.with_window(lf).collect().filter(pl.col("window") == "test").height == test.height


def test_the_profile_keys(tmp_path):
    with pytest.raises(ValueError, match="per_user: label_start and test_start must be shares"):
        SplitConfig(protocol="per_user", label_start=30, test_start=10)
    profile = tmp_path / "p.yaml"
    profile.write_text("split: {protocol: per_user, label_start: 20%, test_start: 10%}\nengine: spark\n")
    with pytest.raises(ProfileError, match="per_user runs on the local engine only"):
        load_profile(profile)
