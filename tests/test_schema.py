"""The data contract: each class of bad input gets a clear error naming file, column and rows."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from musicrec.config import SplitConfig
from musicrec.schema import (
    INTERACTIONS_SCHEMA,
    DataContractError,
    DropReport,
    validate_catalog_names,
    validate_interactions,
    validate_interactions_lazy,
    validate_tracks,
    with_track_seq,
)
from musicrec.split import compute_split

FILE = "events.parquet"


def interactions(**overrides) -> pl.DataFrame:
    data = {
        "user_id": [1, 1, 2, 2, 3],
        "track_id": [10, 11, 10, 12, 11],
        "started_at": [dt.datetime(2022, 1, d) for d in (1, 2, 1, 3, 5)],
    }
    data.update(overrides)
    return pl.DataFrame(data)


TRACK_IDS = pl.Series("track_id", [10, 11, 12], dtype=pl.Int32)


def contract_error(df: pl.DataFrame, **kwargs) -> DataContractError:
    with pytest.raises(DataContractError) as info:
        validate_interactions(df, track_ids=TRACK_IDS, file=FILE, **kwargs)
    message = str(info.value)
    assert message.startswith(FILE), message
    assert "\n" not in message, "one paragraph"
    return info.value


def test_valid_input_is_normalised_and_numbered():
    out = validate_interactions(interactions(), track_ids=TRACK_IDS, file=FILE)
    assert dict(out.schema) == INTERACTIONS_SCHEMA
    # user 1 listened to 10 then 11; user 2 to 10 (Jan 1) then 12 (Jan 3)
    seq = {(r["user_id"], r["track_id"]): r["track_seq"] for r in out.to_dicts()}
    assert seq == {(1, 10): 1, (1, 11): 2, (2, 10): 1, (2, 12): 2, (3, 11): 1}
    assert out.get_column("weight").to_list() == [1.0] * 5


def test_missing_column_names_the_close_misspelling():
    df = interactions().rename({"track_id": "trackid"})
    err = contract_error(df)
    assert err.column == "track_id"
    assert "'trackid'" in str(err) and "misspelled" in str(err)


def test_wrong_type_shows_examples():
    err = contract_error(interactions(user_id=["a", "b", "c", "d", "e"]))
    assert err.column == "user_id"
    assert "wrong type" in str(err) and "'a'" in str(err)


def test_float_ids_with_fractions_are_refused():
    err = contract_error(interactions(user_id=[1.0, 1.5, 2.0, 2.0, 3.0]))
    assert err.column == "user_id" and "1.5" in str(err)


def test_integer_dates_are_refused_not_read_as_1970():
    err = contract_error(interactions(started_at=[1640995200] * 5))
    assert err.column == "started_at" and "expected dates" in str(err)


def test_null_ids_name_the_rows():
    err = contract_error(interactions(track_id=[10, None, 10, 12, 11]))
    assert err.column == "track_id"
    assert "1 rows with a null id" in str(err) and "row=1" in str(err)


def test_duplicated_pairs():
    err = contract_error(interactions(track_id=[10, 10, 10, 12, 11]))
    assert err.column == "user_id, track_id"
    assert "2 rows repeat" in str(err)


def test_duplicates_allowed_when_the_source_does_not_promise_uniqueness():
    df = interactions(track_id=[10, 10, 10, 12, 11])
    out = validate_interactions(df, track_ids=TRACK_IDS, file=FILE, unique_pairs=False)
    assert out.height == 5


def test_unknown_track_ids():
    err = contract_error(interactions(track_id=[10, 11, 10, 99, 11]))
    assert err.column == "track_id"
    assert "missing from tracks" in str(err) and "track_id=99" in str(err)


def test_unparsable_dates():
    dates = ["2022-01-01", "2022-01-02", "yesterday", "2022-01-03", "2022-01-05"]
    err = contract_error(interactions(started_at=dates))
    assert err.column == "started_at"
    assert "do not parse" in str(err) and "'yesterday'" in str(err)


def test_iso_strings_and_dates_parse():
    dates = ["2022-01-01", "2022-01-02 10:00:00", "2022-01-01", "2022-01-03", "2022-01-05"]
    out = validate_interactions(interactions(started_at=dates), track_ids=TRACK_IDS, file=FILE)
    assert out.get_column("started_at").dt.hour().to_list().count(10) == 1


def test_dates_out_of_range():
    rng = (dt.datetime(2022, 1, 1), dt.datetime(2022, 1, 4))
    err = contract_error(interactions(), date_range=rng)
    assert err.column == "started_at"
    assert "outside the data's range" in str(err) and "2022-01-05" in str(err)


def test_tracks_checks():
    good = pl.DataFrame(
        {"track_id": [1, 2], "albums": [[1], []], "artists": [[3], None], "genres": [[5, 6], [5]]}
    )
    out = validate_tracks(good)
    assert out.get_column("artists").to_list() == [[3], []], "nulls become empty lists"
    with pytest.raises(DataContractError, match=r"tracks.parquet, column 'track_id'.*repeat"):
        validate_tracks(good.with_columns(pl.Series("track_id", [1, 1])))
    with pytest.raises(DataContractError, match=r"column 'genres': wrong type"):
        validate_tracks(good.with_columns(pl.Series("genres", ["pop", "rap"])))


def test_catalog_names_checks():
    names = pl.DataFrame({"id": [1, 1], "type": ["track", "artist"], "name": ["a", "b"]})
    assert validate_catalog_names(names).height == 2
    with pytest.raises(DataContractError, match=r"column 'type': unknown types.*'band'"):
        validate_catalog_names(names.with_columns(pl.Series("type", ["track", "band"])))
    with pytest.raises(DataContractError, match="repeat a \\(type, id\\) pair"):
        validate_catalog_names(names.with_columns(pl.Series("type", ["track", "track"])))


def test_track_seq_overflow_is_an_error():
    n = 32768
    df = pl.DataFrame(
        {"user_id": [1] * n, "track_id": list(range(n)), "started_at": [dt.datetime(2022, 1, 1)] * n}
    )
    with pytest.raises(DataContractError, match="more than track_seq"):
        with_track_seq(df)


def test_drop_report_counts_by_reason():
    report = DropReport()
    report.add("ratings below 4", 10)
    report.add("ratings below 4", 5)
    report.add("nothing", 0)
    assert report.counts == {"ratings below 4": 15}
    assert report.as_frame().get_column("rows").to_list() == [15]


def test_empty_window_is_an_error(tmp_path):
    path = tmp_path / "i.parquet"
    validate_interactions(interactions(), track_ids=TRACK_IDS, file=FILE).write_parquet(path)
    # data covers Jan 1 .. Jan 5; a labels window Jan 4 .. Jan 4 holds nothing
    with pytest.raises(DataContractError, match=r"labels window \(2022-01-04 .. 2022-01-04\)"):
        compute_split(path, SplitConfig(label_start=dt.date(2022, 1, 4), test_start=dt.date(2022, 1, 5)))


def test_split_counts_and_cold_users(tmp_path):
    path = tmp_path / "i.parquet"
    df = interactions(started_at=[dt.datetime(2022, 1, d) for d in (1, 2, 1, 4, 5)])
    validate_interactions(df, track_ids=TRACK_IDS, file=FILE).write_parquet(path)
    split = compute_split(path, SplitConfig(label_start=2, test_start=1))  # last 2 days / last day
    assert (split["label_start"], split["test_start"]) == ("2022-01-04", "2022-01-05")
    w = split["windows"]
    assert [w[k]["rows"] for k in ("history", "labels", "test")] == [3, 1, 1]
    assert w["labels"]["users"] == 1 and w["labels"]["cold_users"] == 0
    # user 3's only listen is on Jan 5: a cold user of the test window
    assert w["test"]["cold_users"] == 1 and w["test"]["warm_users"] == 0


def test_boundaries_as_a_share_of_the_events(tmp_path):
    path = tmp_path / "i.parquet"
    # 20 listens, one a day from Jan 1 to Jan 20, by 20 users (one track each)
    days = [dt.datetime(2022, 1, d) for d in range(1, 21)]
    df = pl.DataFrame({"user_id": list(range(1, 21)), "track_id": [10] * 20, "started_at": days})
    validate_interactions(df, track_ids=TRACK_IDS, file=FILE).write_parquet(path)
    # the last 10% of 20 events are the 2 of Jan 19 and 20; the last 25% the 5 from Jan 16
    split = compute_split(path, SplitConfig(label_start="25%", test_start="10%"))
    assert (split["label_start"], split["test_start"]) == ("2022-01-16", "2022-01-19")
    assert [split["windows"][w]["rows"] for w in ("history", "labels", "test")] == [15, 3, 2]
    with pytest.raises(ValueError, match="label_start .* must be larger than test_start"):
        SplitConfig(label_start="5%", test_start="10%")
    with pytest.raises(ValueError, match="between 0% and 100%"):
        SplitConfig(label_start="150%", test_start="10%")


# ------------------------------------------------------------- the streaming checks


def lazy(df: pl.DataFrame) -> pl.LazyFrame:
    return df.with_columns(
        pl.col("user_id").cum_count().over("user_id").cast(pl.Int16).alias("track_seq")
    ).lazy()


def test_lazy_checks_pass_valid_input_and_keep_it_lazy():
    out = validate_interactions_lazy(lazy(interactions()), TRACK_IDS, FILE)
    assert isinstance(out, pl.LazyFrame)
    frame = out.collect()
    assert dict(frame.schema) == INTERACTIONS_SCHEMA and frame.height == 5


@pytest.mark.parametrize(
    "bad, column, problem",
    [
        ({"track_id": [10, 11, 10, 10, 11]}, "user_id, track_id", "1 rows repeat"),
        ({"track_id": [10, 11, 10, 99, 11]}, "track_id", "1 track ids missing from tracks"),
        ({"user_id": [1, None, 2, 2, 3]}, "user_id", "1 rows with a null value"),
        ({"user_id": [1, 1, 2, 2, 2**40]}, "user_id", "values outside"),
        ({"user_id": ["a", "a", "b", "b", "c"]}, "user_id", "wrong type"),
        ({"started_at": ["2022-01-01"] * 5}, "started_at", "wrong type"),
    ],
)
def test_lazy_checks_name_the_problem(bad, column, problem):
    with pytest.raises(DataContractError) as info:
        validate_interactions_lazy(lazy(interactions(**bad)), TRACK_IDS, FILE)
    assert info.value.column == column and problem in str(info.value), str(info.value)
    assert str(info.value).startswith(FILE)


def test_a_text_column_shows_only_the_values_that_are_no_numbers():
    err = contract_error(interactions(user_id=["1", "2", "abc", "3", "4"]))
    assert err.column == "user_id" and "1 values are not numbers" in str(err)
    assert "'abc'" in str(err) and "'1'" not in str(err) and "row=2" in str(err)
