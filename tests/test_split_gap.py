"""``split.gap_minutes``: the listens just before a boundary are neither fitted on for the
window after it nor its targets (Yambda's official protocol has a 30-minute gap before its
test day); every caller of :class:`musicrec.split.Windows` leaves them out, and ``split.json``
counts them."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from musicrec.config import ProfileError, SplitConfig, load_profile
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.schema import validate_interactions
from musicrec.split import Windows, compute_split, protocol_note

LABELS, TEST = dt.date(2022, 1, 10), dt.date(2022, 1, 11)
GAPPED = SplitConfig(label_start=LABELS, test_start=TEST, gap_minutes=30)


def at(day: dt.date, minutes: int) -> dt.datetime:
    """``minutes`` after midnight of ``day`` (negative: before it)."""
    return dt.datetime.combine(day, dt.time()) + dt.timedelta(minutes=minutes)


def listens() -> pl.DataFrame:
    """User 1 listens on both sides of each boundary: track 1 an hour before labels, 2 ten
    minutes before them (in the gap), 3 at labels' midnight, 4 twenty minutes before test (gap),
    5 at test's midnight, 6 31 minutes before test (labels). User 2 first listens in the gap
    before test (track 7) and then in test (8): no fitting data, so cold."""
    rows = [
        (1, 1, at(LABELS, -60)),
        (1, 2, at(LABELS, -10)),
        (1, 3, at(LABELS, 0)),
        (1, 6, at(TEST, -31)),
        (1, 4, at(TEST, -20)),
        (1, 5, at(TEST, 0)),
        (2, 7, at(TEST, -5)),
        (2, 8, at(TEST, 60)),
    ]
    frame = pl.DataFrame(rows, schema=["user_id", "track_id", "started_at"], orient="row")
    tracks = pl.Series("track_id", sorted({r[1] for r in rows}), dtype=pl.Int32)
    return validate_interactions(frame, track_ids=tracks, file="listens")


def windows_of(tmp_path, cfg: SplitConfig = GAPPED) -> tuple[Windows, pl.LazyFrame, dict]:
    paths = RunPaths(tmp_path, "gap")
    paths.data.mkdir(parents=True)
    frame = listens()
    write_parquet(frame, paths.interactions)
    split = compute_split(frame.lazy(), cfg, "listens")
    write_json(split, paths.split)
    return paths.windows(), pl.scan_parquet(paths.interactions), split


def tracks(frame: pl.LazyFrame) -> list[int]:
    return sorted(frame.collect().get_column("track_id").to_list())


def test_the_gap_before_a_boundary_is_neither_fitted_on_for_its_window_nor_a_target(tmp_path):
    windows, lf, split = windows_of(tmp_path)
    assert tracks(windows.fit_listens(lf, "history")) == [1]
    assert tracks(windows.target_listens(lf, "labels")) == [3, 6]
    # the gap before labels is in the past of test: the models for test fit on it
    assert tracks(windows.fit_listens(lf, "history+labels")) == [1, 2, 3, 6]
    assert tracks(windows.target_listens(lf, "test")) == [5, 8]
    labelled = windows.with_window(listens()).sort("track_id").get_column("window").to_list()
    assert labelled == ["history", "gap", "labels", "gap", "test", "labels", "gap", "test"]
    # counted, not lost: every interaction is in a window or in the gap
    assert split["gap_minutes"] == 30 and split["gap_rows"] == 3
    assert sum(w["rows"] for w in split["windows"].values()) + split["gap_rows"] == listens().height
    assert "30 minutes before each boundary" in protocol_note(split)


def test_a_user_first_seen_in_the_gap_is_cold(tmp_path):
    windows, lf, split = windows_of(tmp_path)
    assert split["windows"]["test"]["cold_users"] == 1 and split["windows"]["test"]["warm_users"] == 1
    assert windows.users_before(lf, "test").collect().get_column("user_id").to_list() == [1]


def test_without_a_gap_every_listen_is_in_a_window(tmp_path):
    windows, lf, split = windows_of(tmp_path, SplitConfig(label_start=LABELS, test_start=TEST))
    assert "gap_rows" not in split and windows.gap == dt.timedelta(0)
    assert tracks(windows.fit_listens(lf, "history")) == [1, 2]
    assert tracks(windows.target_listens(lf, "test")) == [5, 8]
    assert "no window" not in protocol_note(split)


def test_the_gap_is_refused_where_it_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="gap_minutes must be 0"):
        SplitConfig(protocol="per_user", label_start="20%", test_start="10%", gap_minutes=30)
    profile = tmp_path / "spark.yaml"
    profile.write_text("engine: spark\nsplit: {gap_minutes: 30}\n")
    with pytest.raises(ProfileError, match="gap_minutes .30. runs on the local engine only"):
        load_profile(profile)
