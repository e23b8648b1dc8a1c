"""The evaluation stage on hand-made runs whose answers are worked out in the comments."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from musicrec import evaluation as ev
from musicrec.config import EvaluationConfig, SyntheticConfig
from musicrec.evaluation import (
    compare_final,
    evaluate_models,
    history_terciles,
    model_lists,
    oracle_lists,
    paired_comparison,
    sample_negatives,
    sampled_protocol,
    user_segments,
    verdict,
    write_metrics,
)
from musicrec.io import RunPaths
from musicrec.schema import INTERACTIONS_SCHEMA
from musicrec.sources.synthetic import generate, true_preference

L3 = math.log2(3)  # 1.5849625: the discount of position 2 is 1 / L3 = 0.6309
IDCG2 = 1 + 1 / L3  # 1.6309: two hits at positions 1 and 2
TEST_START = dt.datetime(2022, 12, 16)
BEFORE, DURING = dt.datetime(2022, 12, 1), dt.datetime(2022, 12, 20)


def lists_frame(lists: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(u, t, r) for u, tracks in lists.items() for r, t in enumerate(tracks, 1)]
    return pl.DataFrame(
        rows, schema={"user_id": pl.Int32, "track_id": pl.Int32, "rank": pl.Int32}, orient="row"
    )


def pairs(rows: list[tuple[int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"user_id": pl.Int32, "track_id": pl.Int32}, orient="row")


def make_run(root: Path, listens: list[tuple[int, int, dt.datetime]], n_tracks: int) -> RunPaths:
    """A run on disk with just what the evaluation reads: interactions, tracks, split."""
    paths = RunPaths(root, "t")
    paths.data.mkdir(parents=True)
    frame = pl.DataFrame(
        listens,
        schema={"user_id": pl.Int32, "track_id": pl.Int32, "started_at": pl.Datetime("ns")},
        orient="row",
    )
    frame = frame.with_columns(
        pl.int_range(1, pl.len() + 1).over("user_id").cast(pl.Int16).alias("track_seq"),
        pl.lit(1.0, dtype=pl.Float32).alias("weight"),
    )
    frame.cast(INTERACTIONS_SCHEMA).write_parquet(paths.interactions)
    pl.DataFrame(
        {
            "track_id": list(range(1, n_tracks + 1)),
            "albums": [[1]] * n_tracks,
            "artists": [[1]] * n_tracks,
            "genres": [[1]] * n_tracks,
        },
        schema={
            "track_id": pl.Int32,
            "albums": pl.List(pl.Int32),
            "artists": pl.List(pl.Int32),
            "genres": pl.List(pl.Int32),
        },
    ).write_parquet(paths.tracks)
    paths.split.write_text(json.dumps({"label_start": "2022-12-01", "test_start": "2022-12-16"}))
    return paths


def row(table: pl.DataFrame, model: str, metric: str, k: int, segment: str) -> dict:
    found = table.filter(
        (pl.col("model") == model)
        & (pl.col("metric") == metric)
        & (pl.col("k") == k)
        & (pl.col("segment") == segment)
    )
    assert found.height == 1, (model, metric, k, segment)
    return found.row(0, named=True)


# --------------------------------------------------------------------------- evaluate_models

# users 1, 2, 3 are warm (light, medium, heavy), user 4 is cold
TEST = pairs([(1, 10), (1, 11), (2, 20), (3, 30), (3, 31), (3, 32), (4, 40)])
SEGMENTS = pl.DataFrame({"user_id": [1, 2, 3, 4], "segment": ["light", "medium", "heavy", "cold"]})
MODEL_A = lists_frame({1: [10, 99, 11], 2: [98, 20]})  # user 3 has no list
MODEL_B = lists_frame({1: [97, 96], 2: [20], 3: [30, 33, 31]})
COLD = lists_frame({4: [41, 40]})


@pytest.fixture(scope="module")
def table() -> pl.DataFrame:
    return evaluate_models(
        {"a": MODEL_A, "b": MODEL_B.lazy()},
        TEST,
        SEGMENTS,
        ks=(1, 2),
        beyond_k=2,
        n_items=100,
        cold=COLD,
        n_boot=200,
    )


def test_columns_and_segments(table):
    assert table.columns == ["model", "k", "metric", "segment", "value", "lower", "upper"]
    seg = {m: set(table.filter(pl.col("model") == m).get_column("segment")) for m in ("a", "b")}
    assert seg == {"a": {"all", "light", "medium", "heavy"}, "b": {"all", "light", "medium", "heavy"}}
    # the cold users' top-popular list appears under both names, on the cold segment only
    for model in ("top_popular", "final"):
        assert set(table.filter(pl.col("model") == model).get_column("segment")) == {"cold"}
    assert set(table.get_column("metric")) == {"precision", "recall", "ndcg", "map", "hitrate", "coverage"}


@pytest.mark.parametrize(
    ("model", "metric", "segment", "expected"),
    [
        # model a, top 2: user 1 [10, 99] one hit at 1 of 2 relevant; user 2 [98, 20] its one relevant at 2;
        # user 3 no list: zeros (counted, not left out)
        ("a", "precision", "all", (1 / 2 + 1 / 2 + 0) / 3),
        ("a", "recall", "all", (1 / 2 + 1 + 0) / 3),
        ("a", "ndcg", "all", (1 / IDCG2 + (1 / L3) / 1 + 0) / 3),  # 0.6131, 0.6309, 0 -> 0.4147
        ("a", "hitrate", "all", 2 / 3),
        ("a", "ndcg", "light", 1 / IDCG2),
        ("a", "ndcg", "medium", 1 / L3),
        ("a", "recall", "heavy", 0.0),
        ("a", "precision", "heavy", 0.0),
        # model b, top 2: user 1 [97, 96] nothing; user 2 [20] hit at 1 (precision 1/2: the denominator is k);
        # user 3 [30, 33] one hit at 1 of 3 relevant (ideal DCG over min(3, 2) = 2 positions)
        ("b", "precision", "all", (0 + 1 / 2 + 1 / 2) / 3),
        ("b", "recall", "all", (0 + 1 + 1 / 3) / 3),
        ("b", "ndcg", "all", (0 + 1 + 1 / IDCG2) / 3),  # 0.5377
        ("b", "map", "heavy", 1 / 2),  # precision@1 = 1, divided by min(3, 2)
        ("b", "ndcg", "light", 0.0),
        # the cold list [41, 40] of user 4: the relevant 40 at position 2
        ("final", "ndcg", "cold", 1 / L3),
        ("top_popular", "recall", "cold", 1.0),
    ],
)
def test_known_values_at_2(table, model, metric, segment, expected):
    got = row(table, model, metric, 2, segment)
    assert got["value"] == pytest.approx(expected)
    assert got["lower"] <= got["value"] + 1e-12 and got["value"] <= got["upper"] + 1e-12


def test_known_values_at_1_and_one_user_intervals(table):
    # at k = 1 model a hits only user 1 (track 10 first); model b hits users 2 and 3
    assert row(table, "a", "precision", 1, "all")["value"] == pytest.approx(1 / 3)
    assert row(table, "b", "hitrate", 1, "all")["value"] == pytest.approx(2 / 3)
    # one user in a segment: the bootstrap interval is that user's value
    light = row(table, "a", "recall", 1, "light")
    assert light["value"] == light["lower"] == light["upper"] == pytest.approx(1 / 2)


def test_coverage_per_segment(table):
    # model a's top 2 of the warm users: {10, 99} and {98, 20}: 4 of 100 tracks; light alone: 2
    assert row(table, "a", "coverage", 2, "all")["value"] == pytest.approx(0.04)
    assert row(table, "a", "coverage", 2, "light")["value"] == pytest.approx(0.02)
    # the user without a list adds nothing
    assert row(table, "a", "coverage", 2, "heavy")["value"] == 0.0
    assert row(table, "a", "coverage", 2, "all")["lower"] is None


def test_coverage_at_further_list_lengths():
    table = evaluate_models(
        {"a": MODEL_A}, TEST, SEGMENTS, ks=(1, 3), beyond_k=1, coverage_at=[2, 3], n_items=100
    )
    # model a's lists: user 1 [10, 99, 11], user 2 [98, 20]: top 1 {10, 98}, top 2 adds 99 and 20,
    # top 3 adds 11
    got = {k: row(table, "a", "coverage", k, "all")["value"] for k in (1, 2, 3)}
    assert got == pytest.approx({1: 0.02, 2: 0.04, 3: 0.05})
    # novelty and diversity stay at beyond_k alone
    assert set(table.filter(pl.col("metric") != "coverage").get_column("k")) == {1, 3}
    # the report's table: one column per list length of coverage
    beyond = ev.beyond_table(table)
    assert beyond.columns == ["model", "coverage@1", "coverage@2", "coverage@3"]
    model, *values = beyond.row(0)
    assert model == "a" and values == pytest.approx([0.02, 0.04, 0.05])


def test_coverage_beyond_the_evaluated_lists_is_refused():
    with pytest.raises(ValueError, match="coverage_at .200. is beyond the longest list"):
        EvaluationConfig(ks=[10, 100], coverage_at=[10, 200])


def test_users_without_lists_count_as_zero():
    # user 3 has test listens but no list anywhere: the mean is over both users, (1 + 0) / 2
    segments = pl.DataFrame({"user_id": [1, 3], "segment": ["light", "heavy"]})
    table = evaluate_models({"only_one": lists_frame({1: [10]})}, TEST, segments, ks=(1,), n_boot=50)
    assert row(table, "only_one", "hitrate", 1, "all")["value"] == pytest.approx(0.5)
    assert row(table, "only_one", "hitrate", 1, "heavy")["value"] == 0.0


def test_a_relevance_segment_is_judged_on_its_own_listens():
    # user 1 heard 10 (organic) and 11 (recommended) in the test window, user 2 only 12 (recommended)
    test = pairs([(1, 10), (1, 11), (2, 12)])
    organic = pairs([(1, 10)])
    segments = pl.DataFrame({"user_id": [1, 2], "segment": ["light", "heavy"]})
    table = evaluate_models(
        {"m": lists_frame({1: [11, 10], 2: [12]})},
        test,
        segments,
        ks=(1, 2),
        relevance={"organic": organic},
        n_boot=50,
    )
    # all warm users: both find every test listen in their top 2
    assert row(table, "m", "recall", 2, "all")["value"] == pytest.approx(1.0)
    assert row(table, "m", "precision", 1, "all")["value"] == pytest.approx(1.0)
    # organic: user 1 only (user 2 has no organic listen), whose organic track is second
    assert row(table, "m", "precision", 1, "organic")["value"] == 0.0
    assert row(table, "m", "recall", 2, "organic")["value"] == pytest.approx(1.0)
    assert row(table, "m", "ndcg", 2, "organic")["value"] == pytest.approx(1 / math.log2(3))
    assert "organic" in table.get_column("segment").to_list()


def test_organic_listens_from_the_sources_flags(tmp_path):
    paths = RunPaths(tmp_path, "r")
    paths.data.mkdir(parents=True)
    test = pairs([(1, 10), (1, 11), (2, 12)])
    assert ev.organic_listens(paths, test) is None  # a source without the flag
    pl.DataFrame(
        {"user_id": [1, 1, 2, 3], "track_id": [10, 11, 12, 13], "is_organic": [True, False, False, True]}
    ).write_parquet(paths.data / "organic_pairs.parquet")
    assert ev.organic_listens(paths, test).rows() == [(1, 10)]


def test_novelty_and_diversity_when_inputs_given():
    # train: tracks 1 and 2 heard by 4 and 1 of 4 users; top 2 of user 1 is [1, 2]:
    # novelty (-log2(4/4) - log2(1/4)) / 2 = 1; genres {1} and {1, 2}: 1 - 1/2 = 0.5
    train = pairs([(1, 1), (2, 1), (3, 1), (4, 1), (1, 2)])
    tracks = pl.DataFrame({"track_id": [1, 2], "genres": [[1], [1, 2]]})
    segments = pl.DataFrame({"user_id": [1], "segment": ["light"]})
    table = evaluate_models(
        {"m": lists_frame({1: [1, 2]})},
        pairs([(1, 2)]),
        segments,
        ks=(2,),
        beyond_k=2,
        train=train,
        tracks=tracks,
        n_boot=50,
    )
    assert row(table, "m", "novelty", 2, "all")["value"] == pytest.approx(1.0)
    assert row(table, "m", "diversity", 2, "light")["value"] == pytest.approx(0.5)
    assert row(table, "m", "coverage", 2, "all")["value"] == pytest.approx(1.0)  # 2 of the 2 tracks


# --------------------------------------------------------------------------- segments


def test_history_terciles_distinct_and_tied():
    distinct = pl.DataFrame({"user_id": list(range(1, 10)), "n_history": list(range(1, 10))})
    seg = dict(history_terciles(distinct).iter_rows())
    # 9 users with 1..9 listens: three of each
    assert [seg[u] for u in range(1, 10)] == ["light"] * 3 + ["medium"] * 3 + ["heavy"] * 3
    # lengths 1, 1, 1, 5, 5, 9: bounds are the sorted values at floor(5/3) = 1 and floor(10/3) = 3,
    # i.e. 1 and 5: light <= 1, medium <= 5, heavy above; equal lengths share a segment
    tied = pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "n_history": [1, 1, 1, 5, 5, 9]})
    assert history_terciles(tied).get_column("segment").to_list() == (
        ["light"] * 3 + ["medium"] * 2 + ["heavy"]
    )


def test_user_segments_on_a_run(tmp_path):
    # users 1..6 heard 1..6 tracks before the test window and listen once in it; user 7 is first seen
    # in the test window (cold); user 8 has history but no test listen (not a test user)
    listens = [(u, t, BEFORE) for u in range(1, 7) for t in range(1, u + 1)]
    listens += [(u, 50, DURING) for u in range(1, 8)] + [(8, 1, BEFORE)]
    paths = make_run(tmp_path, listens, n_tracks=60)
    seg = dict(user_segments(paths).iter_rows())
    # six lengths 1..6: bounds at floor(5/3) = 1 -> 2 and floor(10/3) = 3 -> 4
    assert seg == {1: "light", 2: "light", 3: "medium", 4: "medium", 5: "heavy", 6: "heavy", 7: "cold"}
    # the test window already read gives the same segments
    assert user_segments(paths, ev.held_out_listens(paths)).equals(user_segments(paths))


# --------------------------------------------------------------------------- model lists


def test_top_popular_lists_are_the_global_order_less_heard_tracks(tmp_path):
    # brute force on random histories, with users who heard most of the top (so the expanded span
    # reaches far down the order) and one who heard all but two tracks (a short list)
    rng = np.random.default_rng(11)
    n_tracks, k = 40, 5
    history = {u: rng.choice(n_tracks, rng.integers(1, 12), replace=False) + 1 for u in range(1, 31)}
    history |= {31: np.arange(1, 31), 32: np.arange(2, 38), 33: np.arange(1, n_tracks - 1)}
    listens = [(u, int(t), BEFORE) for u, tracks in history.items() for t in tracks]
    listens += [(u, 1, DURING) for u in history]
    paths = make_run(tmp_path, listens, n_tracks=n_tracks)
    paths.candidates.mkdir(parents=True)
    pl.DataFrame({"track_id": [7, 3], "score": [1.0, 1.0], "rank": [1, 2]}).write_parquet(
        paths.candidates / "top_popular.parquet"
    )
    order = ev.popular_order(paths).sort("position").get_column("track_id").to_list()
    got = ev.top_popular_lists(paths, list(history), k).collect()
    for user, tracks in history.items():
        mine = got.filter(pl.col("user_id") == user).sort("rank")
        expected = [t for t in order if t not in set(tracks.tolist())][:k]
        assert mine.get_column("track_id").to_list() == expected, user
        assert mine.get_column("rank").to_list() == list(range(1, len(expected) + 1))
    assert got.filter(pl.col("user_id") == 33).height == 2


def test_model_lists_top_popular_per_user(tmp_path):
    # history: user 1 heard 5, 1; user 2 heard 6, 7, 1, 2; user 3 heard 1. Listeners before the test
    # window: track 1 three, tracks 2, 5, 6, 7 one, tracks 3, 4, 8 none. The file's list [5, 6, 7]
    # comes first, then the rest by listeners, ties by id: 5, 6, 7, 1, 2, 3, 4, 8.
    history = [(1, 5), (1, 1), (2, 6), (2, 7), (2, 1), (2, 2), (3, 1)]
    listens = [(u, t, BEFORE) for u, t in history] + [
        (1, 8, DURING),
        (2, 3, DURING),
        (3, 4, DURING),
        (9, 5, DURING),
    ]  # user 9 is cold
    paths = make_run(tmp_path, listens, n_tracks=8)
    paths.candidates.mkdir(parents=True)
    pl.DataFrame({"track_id": [5, 6, 7], "score": [1.0, 1.0, 1.0], "rank": [1, 2, 3]}).write_parquet(
        paths.candidates / "top_popular.parquet"
    )
    als = lists_frame({1: [2, 3, 4, 6], 2: [8, 5], 4: [1, 2]}).with_columns(pl.lit(0.5).alias("score"))
    als.write_parquet(paths.candidates / "personal_als.parquet")
    recs = pl.concat(
        [
            lists_frame({1: [4, 3], 2: [5], 3: [6]}).with_columns(pl.lit("final").alias("source")),
            lists_frame({9: [5, 6]}).with_columns(pl.lit("top_popular").alias("source")),
        ]
    )
    recs.with_columns(pl.lit(1.0).alias("score")).write_parquet(paths.recommendations)

    lists = {name: frame.collect() for name, frame in model_lists(paths, k_max=3).items()}
    assert set(lists) == {"top_popular", "personal_als", "final"}  # no random/content/audio files
    got = {
        u: g.sort("rank").get_column("track_id").to_list()
        for (u,), g in lists["top_popular"].group_by("user_id")
    }
    # user 2 needs position 7 of the global order (four heard tracks among the first seven)
    assert got == {1: [6, 7, 2], 2: [5, 3, 4], 3: [5, 6, 7]}
    assert lists["top_popular"].get_column("rank").to_list() == [1, 2, 3] * 3
    # generator lists: cut to k_max, only the warm test users (user 4 has no test listen)
    als = lists["personal_als"].sort(["user_id", "rank"])
    assert als.rows() == [(1, 2, 1), (1, 3, 2), (1, 4, 3), (2, 8, 1), (2, 5, 2)]
    assert sorted(lists["final"].rows()) == [(1, 3, 2), (1, 4, 1), (2, 5, 1), (3, 6, 1)]  # the ranker's rows
    # the popularity table computed once and passed in gives the same lists
    given = model_lists(paths, k_max=3, listeners=ev.popularity(paths))
    assert all(given[name].collect().equals(frame) for name, frame in lists.items())


# --------------------------------------------------------------------------- paired comparison


def test_paired_comparison_better_for_every_user():
    rng = np.random.default_rng(0)
    users = np.arange(200)
    b = rng.uniform(0, 0.4, 200)
    a = b + rng.uniform(0.1, 0.3, 200)  # a is above b for every user, by 0.2 on average
    result = paired_comparison(
        pl.DataFrame({"user_id": users, "value": a}),
        # the order of the rows is irrelevant: users are joined
        pl.DataFrame({"user_id": users[::-1], "value": b[::-1]}),
        n_boot=500,
    )
    assert result["n_users"] == 200
    assert result["diff"] == pytest.approx(float((a - b).mean()))
    assert 0.1 < result["lower"] < result["diff"] < result["upper"] < 0.3
    line = verdict("final", "personal_als", "ndcg@10", result["diff"], result["lower"], result["upper"])
    assert line.startswith("final beats personal_als on ndcg@10 by +0.")
    assert "95% CI" in line


def test_paired_comparison_identical_and_worse():
    values = pl.DataFrame({"user_id": [1, 2, 3], "value": [0.1, 0.5, 0.9]})
    same = paired_comparison(values, values, n_boot=200)
    assert (same["diff"], same["lower"], same["upper"]) == (0.0, 0.0, 0.0)
    assert verdict("final", "x", "recall@10", same["diff"], same["lower"], same["upper"]).startswith(
        "no significant difference between final and x"
    )
    worse = paired_comparison(values.with_columns(pl.col("value") * 0), values, n_boot=200)
    assert worse["diff"] == pytest.approx(-0.5)
    assert verdict("final", "x", "m", worse["diff"], worse["lower"], worse["upper"]).startswith(
        "final is worse than x"
    )
    # a user missing on one side counts as 0 there: b has user 4 at 0.9, a does not
    extra = paired_comparison(values, pl.concat([values, pl.DataFrame({"user_id": [4], "value": [0.9]})]))
    assert extra["n_users"] == 4 and extra["diff"] == pytest.approx(-0.9 / 4)


def test_compare_final_against_the_best_generator(tmp_path):
    # four users, each with one test listen; final lists it first, ALS second, random never.
    # ndcg@10: final 1, ALS 1/log2(3) for every user -> difference 1 - 0.6309 = 0.3691 exactly;
    # recall@10: 1 for both -> no difference
    test = pairs([(u, 100 + u) for u in range(1, 5)])
    lists = {
        "final": lists_frame({u: [100 + u, 1] for u in range(1, 5)}),
        "personal_als": lists_frame({u: [1, 100 + u] for u in range(1, 5)}),
        "random": lists_frame({u: [2, 3] for u in range(1, 5)}),
        "oracle": lists_frame({u: [100 + u] for u in range(1, 5)}),
    }
    segments = pl.DataFrame({"user_id": [1, 2, 3, 4], "segment": ["light"] * 4})
    results = evaluate_models(lists, test, segments, ks=(10,), n_boot=100)
    table = compare_final(lists, test, results, k=10, n_boot=200)
    assert table.get_column("model_b").to_list() == ["personal_als", "personal_als"]  # oracle excluded
    ndcg, recall = table.row(0, named=True), table.row(1, named=True)
    assert ndcg["diff"] == pytest.approx(1 - 1 / L3)
    assert ndcg["lower"] == pytest.approx(1 - 1 / L3)
    assert ndcg["verdict"].startswith("final beats personal_als")
    assert recall["diff"] == 0.0 and recall["verdict"].startswith("no significant difference")
    # what the report's index page reads back: the rows and their verdicts
    paths = RunPaths(tmp_path, "t")
    written = json.loads(ev.write_comparison(table, paths).read_text())
    assert written["verdicts"] == table.get_column("verdict").to_list()
    assert [r["model_b"] for r in written["comparison"]] == ["personal_als", "personal_als"]


def test_metric_at_one_metric_on_one_segment_best_first():
    rows = [
        ("a", 10, "ndcg", "all", 0.1),
        ("b", 10, "ndcg", "all", 0.3),
        ("c", 10, "ndcg", "all", 0.2),
        ("b", 5, "ndcg", "all", 0.9),
        ("b", 10, "recall", "all", 0.9),
        ("b", 10, "ndcg", "heavy", 0.9),
    ]
    frame = pl.DataFrame(rows, schema=["model", "k", "metric", "segment", "value"], orient="row")
    assert ev.metric_at(frame, "ndcg", 10).get_column("model").to_list() == ["b", "c", "a"]
    assert ev.metric_at(frame, "ndcg", 10, segment="heavy").get_column("value").to_list() == [0.9]


# --------------------------------------------------------------------------- sampled protocol


def test_sample_negatives_never_heard_and_distinct():
    # user 1 heard 1..10 of a catalogue of 1..40 and listens to 11 in the test window
    heard = pairs([(1, t) for t in range(1, 12)])
    listens = pl.DataFrame({"listen": [0, 1], "user_id": [1, 1]})
    neg = sample_negatives(listens, heard, np.arange(1, 41), n_negatives=25, seed=3)
    assert neg.group_by("listen").len().sort("listen").get_column("len").to_list() == [25, 25]
    assert not neg.get_column("track_id").is_in(list(range(1, 12))).any()
    assert not neg.select("listen", "track_id").is_duplicated().any()
    # only 29 tracks are left: asking for 29 takes every one of them
    neg = sample_negatives(listens.head(1), heard, np.arange(1, 41), n_negatives=29, seed=3)
    assert sorted(neg.get_column("track_id").to_list()) == list(range(12, 41))
    # a user who heard all but two tracks keeps those two, however many are asked for
    almost = pairs([(2, t) for t in range(1, 39)])
    neg = sample_negatives(
        pl.DataFrame({"listen": [7], "user_id": [2]}), almost, np.arange(1, 41), n_negatives=5, seed=1
    )
    assert sorted(neg.get_column("track_id").to_list()) == [39, 40]


def test_sampled_protocol_known_positions():
    # catalogue 1..6. User 1 heard 1, 2 and holds out 3: its negatives can only be 4, 5, 6.
    # User 2 heard 4, 5 and holds out 6: negatives 1, 2, 3. So each listen ranks 4 tracks.
    heard = pairs([(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)])
    test = pairs([(1, 3), (2, 6)])
    lists = {
        "perfect": lists_frame({1: [3, 4], 2: [6]}),  # held-out first: position 1
        "behind": lists_frame({1: [4, 5, 6, 3], 2: [1, 2, 3, 6]}),  # position 4
        "outside": lists_frame({1: [4, 5], 2: [1, 2]}),  # not listed: tied with the other unlisted
    }
    # popularity: user 1 ranks 4 (20) > 3 (10) > 5 (5) > 6 (1): position 2;
    # user 2 ranks 3 (10) > 6 (1) > 1, 2 (absent: 0): position 2
    popular = pl.DataFrame({"track_id": [3, 4, 5, 6], "score": [10, 20, 5, 1]})

    def oracle(users, tracks):  # prefers the held-out track of each user
        return ((users == 1) & (tracks == 3)) | ((users == 2) & (tracks == 6))

    table = sampled_protocol(
        test,
        heard,
        np.arange(1, 7),
        lists=lists,
        global_scores={"top_popular": popular},
        pair_scorers={"oracle": oracle},
        n_negatives=3,
        ks=(1, 2, 3, 4),
        n_boot=50,
    )
    assert table.columns == ["model", "k", "metric", "segment", "value", "lower", "upper"]
    value = {(m, k): v for m, k, v in table.select("model", "k", "value").iter_rows()}
    assert [value[("perfect", k)] for k in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert [value[("oracle", k)] for k in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert [value[("behind", k)] for k in (1, 2, 3, 4)] == [0, 0, 0, 1]
    assert [value[("top_popular", k)] for k in (1, 2, 3, 4)] == [0, 1, 1, 1]
    # outside: behind the two listed negatives, then a coin flip with the third: position 3 or 4
    assert [value[("outside", k)] for k in (1, 2, 4)] == [0, 0, 1]
    assert value[("outside", 3)] in (0, 0.5, 1)
    assert set(table.get_column("metric")) == {"sampled_recall"}


def test_sampled_protocol_at_100_negatives():
    # 300 users, each with 3 heard tracks and one held-out track, catalogue of 2,000 tracks
    rng = np.random.default_rng(1)
    held = rng.choice(np.arange(1, 2001), size=300)
    heard = pairs(
        [(u, int(t)) for u in range(300) for t in rng.choice(np.arange(1, 2001), 3)]
        + [(u, int(held[u])) for u in range(300)]
    ).unique()
    test = pairs([(u, int(held[u])) for u in range(300)])
    first = lists_frame({u: [int(held[u])] for u in range(300)})
    empty = lists_frame({})
    table = sampled_protocol(
        test,
        heard,
        np.arange(1, 2001),
        lists={"first": first, "empty": empty},
        n_negatives=100,
        ks=(5, 10),
        max_listens=250,
        n_boot=100,
        seed=4,
    )
    value = {(m, k): v for m, k, v in table.select("model", "k", "value").iter_rows()}
    assert value[("first", 5)] == 1.0 and value[("first", 10)] == 1.0
    # an empty list orders the 101 tracks at random: recall@10 about 10/101 on 250 listens
    assert 0.03 < value[("empty", 10)] < 0.18
    empty_10 = table.filter((pl.col("model") == "empty") & (pl.col("k") == 10))
    low, high = empty_10.select("lower", "upper").row(0)
    assert low < value[("empty", 10)] < high


# --------------------------------------------------------------------------- oracle


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> RunPaths:
    root = tmp_path_factory.mktemp("oracle")
    paths = RunPaths(root, "syn")
    cfg = SyntheticConfig(
        n_users=120, n_tracks=400, max_tracks_per_user=150, n_genres=12, n_named_genres=10, chunk_users=120
    )
    generate(cfg, seed=3, out_dir=paths.data, progress=False)
    paths.split.write_text(json.dumps({"label_start": "2022-12-01", "test_start": "2022-12-16"}))
    return paths


def test_oracle_exact_is_the_best_unheard_tracks(synthetic_run):
    paths = synthetic_run
    users = np.array([0, 5, 17, 60])
    # blocks of 2 users: two blocks computed at once (musicrec.parallel), in user order
    result = oracle_lists(paths, users, k_max=10, max_exact_pairs=10**9, batch_pairs=1000, block_users=2)
    assert result.get_column("rank").to_list() == list(range(1, 11)) * 4
    assert result.get_column("user_id").to_list() == np.repeat(users, 10).tolist()
    inter = pl.read_parquet(paths.interactions).filter(pl.col("started_at") < TEST_START)
    catalogue = np.arange(400)
    for u in users:  # brute force: every track's preference, heard tracks removed, best ten
        heard = set(inter.filter(pl.col("user_id") == u).get_column("track_id").to_list())
        unheard = np.array([t for t in catalogue if t not in heard])
        pref = true_preference(paths.oracle, np.full(len(unheard), u), unheard)
        best = unheard[np.lexsort((unheard, -pref))][:10]
        assert result.filter(pl.col("user_id") == u).get_column("track_id").to_list() == best.tolist()


def test_oracle_pool_is_the_best_of_the_pool(synthetic_run):
    paths = synthetic_run
    users = np.array([1, 2, 3])
    pool = {"some": lists_frame({1: [5, 6, 7], 2: [8, 9], 3: [10]})}
    result = oracle_lists(
        paths, users, k_max=4, candidate_pool=pool, n_popular=3, max_exact_pairs=0, batch_pairs=4
    )
    inter = pl.read_parquet(paths.interactions).filter(pl.col("started_at") < TEST_START)
    top3 = (
        inter.group_by("track_id")
        .agg(pl.col("user_id").n_unique().alias("n"))
        .sort(["n", "track_id"], descending=[True, False])
        .head(3)
        .get_column("track_id")
        .to_list()
    )
    own = {1: [5, 6, 7], 2: [8, 9], 3: [10]}
    for u in users:
        heard = set(inter.filter(pl.col("user_id") == u).get_column("track_id").to_list())
        candidates = np.array(sorted({*own[u], *top3} - heard))
        pref = true_preference(paths.oracle, np.full(len(candidates), u), candidates)
        best = candidates[np.lexsort((candidates, -pref))][:4]
        got = result.filter(pl.col("user_id") == u).sort("rank").get_column("track_id").to_list()
        assert got == best.tolist()


def test_no_oracle_for_real_sources(tmp_path):
    paths = make_run(tmp_path, [(1, 1, BEFORE), (1, 2, DURING)], n_tracks=3)
    assert oracle_lists(paths, [1], k_max=5) is None


# --------------------------------------------------------------------------- writing


def test_write_metrics(tmp_path, table):
    paths = RunPaths(tmp_path, "w")
    nan_row = pl.DataFrame(
        {
            "model": ["x"],
            "k": [1],
            "metric": ["ndcg"],
            "segment": ["cold"],
            "value": [float("nan")],
            "lower": [None],
            "upper": [None],
        },
        schema=table.schema,
    )
    frame = pl.concat([table, nan_row])
    parquet, js = write_metrics(frame, paths)
    assert parquet == paths.outputs / "metrics.parquet" and js == paths.outputs / "metrics.json"
    assert pl.read_parquet(parquet).equals(frame)
    rows = json.loads(js.read_text())
    assert len(rows) == frame.height and set(rows[0]) == set(frame.columns)
    assert rows[-1]["value"] is None  # NaN is not JSON
    assert not list(paths.outputs.glob(".*tmp*"))


def test_expectation_checks_say_yes_and_no():
    ndcg = pl.DataFrame(
        {
            "model": ["random", "top_popular", "personal_als", "final", "oracle"],
            "value": [0.01, 0.05, 0.10, 0.20, 0.15],
        }
    )
    ordered, oracle = ev.expectation_checks(ndcg)
    assert "**yes**" in ordered  # 0.01 < 0.05 < 0.10
    assert "**no**" in oracle  # final 0.20 is above the oracle's 0.15
    swapped = ndcg.with_columns(pl.Series("value", [0.06, 0.05, 0.10, 0.20, 0.30]))
    ordered, oracle = ev.expectation_checks(swapped)
    assert "**no**" in ordered and "**yes**" in oracle
    assert ev.expectation_checks(pl.DataFrame({"model": ["final"], "value": [0.2]})) == []


# --------------------------------------------------------------------------- one pass over the models


def test_evaluate_each_model_is_every_function_at_once():
    # the same tables as evaluate_models and metric_curves called on all models together, and the
    # kept cuts: top 1 of every model, whole lists of user 3 only
    lists = {"a": MODEL_A, "b": MODEL_B.lazy()}
    each = ev.evaluate_each_model(
        lists,
        TEST,
        SEGMENTS,
        k_max=3,
        keep_k=1,
        keep_users=pl.Series([3]),
        curve_ks=(1, 2, 3),
        cold=COLD,
        ks=(1, 2),
        beyond_k=2,
        n_items=100,
        n_boot=200,
    )
    assert each.results.equals(
        evaluate_models(lists, TEST, SEGMENTS, ks=(1, 2), beyond_k=2, n_items=100, cold=COLD, n_boot=200)
    )
    warm = pl.Series("user_id", [1, 2, 3], dtype=pl.Int32)
    warm_test = TEST.filter(pl.col("user_id") != 4)
    assert each.curves.equals(ev.metric_curves(lists, warm_test, warm, ks=(1, 2, 3)))
    assert each.rows == {"a": 5, "b": 6}
    assert sorted(each.top["a"].rows()) == [(1, 10, 1), (2, 98, 1)]
    assert each.sampled["a"].height == 0  # model a has no list for user 3
    assert sorted(each.sampled["b"].rows()) == [(3, 30, 1), (3, 31, 3), (3, 33, 2)]


def test_oracle_users_are_every_warm_user_or_a_seeded_sample():
    warm = pl.Series("user_id", [9, 3, 5, 1, 7], dtype=pl.Int32)
    assert ev.oracle_users(warm, None, 0).to_list() == [1, 3, 5, 7, 9]
    picked = ev.oracle_users(warm, 3, 4)
    assert picked.len() == 3 and set(picked) <= set(warm) and picked.is_sorted()
    assert picked.equals(ev.oracle_users(warm, 3, 4))  # the same seed, the same sample


def test_a_model_listing_some_users_is_judged_on_them_alone():
    # model_users (the oracle on a sample): model a lists users 1 and 2 only; over those two its
    # metrics, curves and kept lists are those of the same lists on segments without user 3,
    # while user 3 still counts as zero for model b (judged on every warm user)
    lists = {"a": MODEL_A, "b": MODEL_B}
    each = ev.evaluate_each_model(
        lists,
        TEST,
        SEGMENTS,
        k_max=3,
        keep_k=1,
        model_users={"a": pl.Series([1, 2])},
        curve_ks=(1, 3),
        ks=(1, 3),
        n_items=100,
        n_boot=200,
    )
    alone = evaluate_models(
        {"a": MODEL_A}, TEST, SEGMENTS.filter(pl.col("user_id") != 3), ks=(1, 3), n_items=100, n_boot=200
    )
    got = each.results.filter(pl.col("model") == "a")
    assert got.equals(alone)
    assert set(got.get_column("segment")) == {"all", "light", "medium"}  # no "heavy": user 3 is out
    everyone = evaluate_models({"b": MODEL_B}, TEST, SEGMENTS, ks=(1, 3), n_items=100, n_boot=200)
    assert each.results.filter(pl.col("model") == "b").equals(everyone)
    recall_a = each.curves.filter(
        (pl.col("model") == "a") & (pl.col("metric") == "recall") & (pl.col("k") == 3)
    )
    assert recall_a.get_column("value").item() == pytest.approx((2 / 2 + 1 / 1) / 2)  # users 1 and 2 only


def test_novelty_from_popularity_counts_is_novelty_from_train():
    # train as in test_novelty_and_diversity_when_inputs_given; counts instead: the same table
    train = pairs([(1, 1), (2, 1), (3, 1), (4, 1), (1, 2)])
    segments = pl.DataFrame({"user_id": [1], "segment": ["light"]})
    args = ({"m": lists_frame({1: [1, 2]})}, pairs([(1, 2)]), segments)
    from_train = evaluate_models(*args, ks=(2,), beyond_k=2, train=train, n_boot=50)
    counts = pl.DataFrame({"track_id": [1, 2, 3], "listeners": [4, 1, 0]})  # a track nobody heard: 0
    from_counts = evaluate_models(*args, ks=(2,), beyond_k=2, listeners=counts, n_train_users=4, n_boot=50)
    assert from_counts.equals(from_train)
    assert row(from_counts, "m", "novelty", 2, "all")["value"] == pytest.approx(1.0)


def test_preference_estimate_is_true_preference_within_its_bound(synthetic_run):
    # the oracle discards pairs by an estimate of true preference: it must stay within RELATIVE of it
    bound = ev._PreferenceBound(synthetic_run.oracle)
    users, tracks = np.repeat(np.arange(120), 400), np.tile(np.arange(400), 120)
    _, track_rows = bound.rows(users[:0], tracks)
    block_rows, _ = bound.rows(np.arange(120), tracks[:0])
    estimate = bound.estimate(bound.genre_weights(block_rows), block_rows, users, track_rows)
    exact = true_preference(synthetic_run.oracle, users, tracks)
    assert np.all(np.abs(estimate - exact) <= 1e-6 * exact)
    assert len(np.unique(exact)) > 1000  # a real spread, not a constant


def test_oracle_pool_defaults_to_the_runs_candidate_files(synthetic_run, tmp_path):
    """Without an explicit pool the approximate oracle reads every per-user list of the run (the
    path scale10 and full take): the same lists as that pool given by hand."""
    paths = RunPaths(tmp_path, "syn")
    shutil.copytree(synthetic_run.data, paths.data)
    own = lists_frame({1: [5, 6, 7], 2: [8, 9], 3: [10]})
    paths.candidate_list("personal_als").parent.mkdir(parents=True, exist_ok=True)
    own.write_parquet(paths.candidate_list("personal_als"))
    users = np.array([1, 2, 3])
    by_default = oracle_lists(paths, users, k_max=4, n_popular=3, max_exact_pairs=0, batch_pairs=4)
    given = oracle_lists(
        paths, users, k_max=4, candidate_pool={"personal_als": own}, n_popular=3, max_exact_pairs=0
    )
    assert by_default.sort("user_id", "rank").equals(given.sort("user_id", "rank"))


def test_a_trailing_final_list_is_explained_by_what_the_ranker_learned_from():
    from musicrec.evaluation import why_final_trails

    def comparison(upper: float) -> pl.DataFrame:
        return pl.DataFrame([{"metric": "ndcg", "k": 10, "model_b": "top_popular", "upper": upper}])

    few = {"sampling": {"users": 50, "users_without_positive": 16, "sampled_positives": 300}}
    many = {"sampling": {"users": 30_000, "users_without_positive": 1_000, "sampled_positives": 90_000}}
    assert why_final_trails(comparison(0.01), few) is None, "not significantly worse: nothing to explain"
    reason = why_final_trails(comparison(-0.01), few)
    assert "34 users" in reason and "300 positive rows" in reason
    assert "top_popular is the list to prefer" in reason
    assert "too little" not in why_final_trails(comparison(-0.01), many)
    assert "no ranking summary" in why_final_trails(comparison(-0.01), None)
