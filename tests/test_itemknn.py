"""Item-kNN candidates: hand-made matrices whose neighbours are known by construction, the time
decay, the config, and the candidates stage on the tiny profile."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest

from musicrec.candidates.base import FitData
from musicrec.candidates.itemknn import ItemKnnGenerator
from musicrec.config import ItemKnnConfig, ProfileError, load_profile

DAY = dt.datetime(2022, 3, 1)
KINDS = ("cosine", "bm25", "tfidf")


def fit_data(rows: list[tuple[int, int, float, int]], catalogue: list[int]) -> FitData:
    """``(user, track, weight, day)`` listens over a catalogue of bare track ids."""
    inter = pl.DataFrame(
        {
            "user_id": [u for u, _, _, _ in rows],
            "track_id": [t for _, t, _, _ in rows],
            "started_at": [DAY + dt.timedelta(days=d) for _, _, _, d in rows],
            "track_seq": list(range(1, len(rows) + 1)),
            "weight": [w for _, _, w, _ in rows],
        },
        schema_overrides={
            "user_id": pl.Int32,
            "track_id": pl.Int32,
            "track_seq": pl.Int16,
            "weight": pl.Float32,
            "started_at": pl.Datetime("ns"),
        },
    )
    return FitData.build(inter, pl.DataFrame({"track_id": catalogue}, schema={"track_id": pl.Int32}))


def lists(gen: ItemKnnGenerator, data: FitData, n: int) -> dict[int, list[tuple[int, float]]]:
    """Every user's list as ``[(track_id, score), ...]``, best first, padding dropped."""
    cols, scores = gen.recommend(np.arange(len(data.user_ids)), n)
    return {
        int(user): [(int(data.track_ids[c]), float(s)) for c, s in zip(row, best, strict=True) if c >= 0]
        for user, row, best in zip(data.user_ids, cols, scores, strict=True)
    }


def two_chains() -> FitData:
    """Two groups that share no listener: tracks 10-13 heard by users 1-3, tracks 20-23 by users
    4-6, each user two consecutive tracks of a chain (10-11, 11-12, 12-13); track 30 unheard."""
    pairs = [(1, 10), (1, 11), (2, 11), (2, 12), (3, 12), (3, 13)]
    pairs += [(u + 3, t + 10) for u, t in pairs]
    return fit_data([(u, t, 1.0, 0) for u, t in pairs], [10, 11, 12, 13, 20, 21, 22, 23, 30])


# Two tracks are neighbours exactly when a user heard both, so a user's candidates are the tracks
# one chain step away from theirs, never heard, never in the other group: user 1 (10, 11) reaches
# 12 only; user 2 (11, 12) reaches 10 and 13; user 3 (12, 13) reaches 11. Same for 4-6, shifted.
CHAIN_CANDIDATES = {1: {12}, 2: {10, 13}, 3: {11}, 4: {22}, 5: {20, 23}, 6: {21}}


@pytest.mark.parametrize("kind", KINDS)
def test_lists_stay_in_the_group_and_skip_heard_tracks(kind):
    data = two_chains()
    gen = ItemKnnGenerator(ItemKnnConfig(kind=kind), threads=1).fit(data)
    cols, scores = gen.recommend(np.arange(len(data.user_ids)), 5)
    assert cols.shape == scores.shape == (6, 5)
    got = lists(gen, data, 5)
    assert {user: {t for t, _ in picked} for user, picked in got.items()} == CHAIN_CANDIDATES
    for user, picked in got.items():
        assert all(s > 0 for _, s in picked), user
        assert [s for _, s in picked] == sorted((s for _, s in picked), reverse=True), user
    # the rest of each row is padding (implicit would have filled it with the heard tracks at 0)
    lengths = (cols >= 0).sum(1)
    assert lengths.tolist() == [len(CHAIN_CANDIDATES[int(u)]) for u in data.user_ids]
    assert all((cols[i, k:] == -1).all() and np.isneginf(scores[i, k:]).all() for i, k in enumerate(lengths))


def test_cosine_scores_are_the_summed_similarities():
    data = two_chains()
    got = lists(ItemKnnGenerator(ItemKnnConfig(kind="cosine"), threads=1).fit(data), data, 5)
    # track vectors over users 1-3: 10 = (1,0,0), 11 = (1,1,0), 12 = (0,1,1), 13 = (0,0,1)
    # user 1: 12 through 11, cos(11, 12) = 1 / (sqrt2 * sqrt2)
    assert got[1] == [(12, pytest.approx(0.5))]
    # user 2: 10 through 11 and 13 through 12, both cos = 1 / sqrt2 (a tie)
    assert sorted(t for t, _ in got[2]) == [10, 13]
    assert [s for _, s in got[2]] == pytest.approx([2**-0.5, 2**-0.5])


def test_k_counts_the_track_itself():
    # cosine: a track is its own nearest neighbour (similarity 1), so K = 1 keeps no other track
    data = two_chains()
    got = lists(ItemKnnGenerator(ItemKnnConfig(kind="cosine", neighbours=1), threads=1).fit(data), data, 5)
    assert all(picked == [] for picked in got.values())
    # K = 2: itself and its most similar other track. cos(10, 11) = cos(12, 13) = 1 / sqrt2 beat
    # cos(11, 12) = 1 / 2, so 10 and 11 keep each other, 12 and 13 too: user 1 (10, 11) and user 3
    # (12, 13) reach only heard tracks; user 2 (11, 12) reaches 10 through 11 and 13 through 12
    got = lists(ItemKnnGenerator(ItemKnnConfig(kind="cosine", neighbours=2), threads=1).fit(data), data, 5)
    assert {user: {t for t, _ in picked} for user, picked in got.items()} == {
        1: set(),
        2: {10, 13},
        3: set(),
        4: set(),
        5: {20, 23},
        6: set(),
    }


def decay_case() -> FitData:
    """User 3 heard A = 10 twice as much as B = 20, but A ten days before the window's end and B
    on its last day. A's only other listener (user 1) also heard a = 11; B's (user 2) heard b = 21."""
    rows = [(1, 10, 1.0, 10), (1, 11, 1.0, 10), (2, 20, 1.0, 10), (2, 21, 1.0, 10)]
    rows += [(3, 10, 2.0, 0), (3, 20, 1.0, 10)]
    return fit_data(rows, [10, 11, 20, 21])


def test_time_decay_puts_the_recent_tracks_neighbours_first():
    data = decay_case()
    plain = lists(ItemKnnGenerator(ItemKnnConfig(kind="cosine"), threads=1).fit(data), data, 5)
    # no decay: over users (1, 2, 3) A = (1, 0, 2), a = (1, 0, 0), B = (0, 1, 1), b = (0, 1, 0);
    # score(a) = 2 * cos(A, a) = 2 / sqrt5 = 0.894 beats score(b) = 1 * cos(B, b) = 1 / sqrt2 = 0.707
    assert plain[3] == [(11, pytest.approx(2 / 5**0.5)), (21, pytest.approx(2**-0.5))]
    decayed = ItemKnnGenerator(ItemKnnConfig(kind="cosine", half_life_days=5.0), threads=1).fit(data)
    got = lists(decayed, data, 5)
    # half-life 5 days: A's 10-day-old listen counts 2 * 0.25 = 0.5, so A = (1, 0, 0.5);
    # score(a) = 0.5 * 1 / sqrt(1.25) = 0.447 falls below score(b), unchanged at 1 / sqrt2
    assert got[3] == [(21, pytest.approx(2**-0.5)), (11, pytest.approx(0.5 / 1.25**0.5))]


def test_scoring_in_threads_gives_the_serial_lists():
    rng = np.random.default_rng(5)
    rows = [(int(u), int(t), 1.0, 0) for u in range(80) for t in rng.choice(60, 6, replace=False)]
    data = fit_data(rows, list(range(60)))
    gen = ItemKnnGenerator(ItemKnnConfig(neighbours=10), threads=2).fit(data)
    parts = np.array_split(np.arange(len(data.user_ids)), 8)
    serial = [gen.recommend(part, 20) for part in parts]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(lambda part: gen.recommend(part, 20), parts * 3))
    for (cols, scores), (again, again_scores) in zip(serial * 3, threaded, strict=True):
        assert np.array_equal(cols, again) and np.array_equal(scores, again_scores)


def test_config_defaults_and_errors(tmp_path):
    from implicit.nearest_neighbours import BM25Recommender

    cfg = ItemKnnConfig()
    assert (cfg.enabled, cfg.kind, cfg.neighbours, cfg.half_life_days) == (True, "bm25", 100, None)
    assert (cfg.bm25_k1, cfg.bm25_b) == (BM25Recommender().K1, BM25Recommender().B)
    profile = tmp_path / "p.yaml"
    profile.write_text("candidates:\n  item_knn: {kind: lsh}\n")
    with pytest.raises(ProfileError, match=r"p.yaml: candidates.item_knn.kind: .*'cosine'.*'lsh'"):
        load_profile(profile)
    profile.write_text("candidates:\n  item_knn: {neighbors: 50}\n")
    with pytest.raises(ProfileError, match=r"candidates.item_knn.neighbors: unknown key.*'neighbours'"):
        load_profile(profile)
    profile.write_text("candidates:\n  item_knn: {half_life_days: 0}\n")
    with pytest.raises(ProfileError, match=r"candidates.item_knn.half_life_days: .*greater than 0"):
        load_profile(profile)
    profile.write_text("candidates:\n  item_knn: {bm25_b: 1.5}\n")
    with pytest.raises(ProfileError, match=r"candidates.item_knn.bm25_b: .*less than or equal to 1"):
        load_profile(profile)


@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory):
    """The tiny profile's data in a scratch root, and the candidates stage run on both windows."""
    from musicrec.candidates.stage import CandidateStage
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths

    profile = load_profile("params/tiny.yaml")
    paths = RunPaths.for_profile(profile, tmp_path_factory.mktemp("run"))
    build_dataset(profile, paths, progress=False)
    stage = CandidateStage(profile, paths, workers=2)
    runs = stage.fit("history") + stage.fit("history+labels")
    return profile, paths, {(r.generator, r.window): r for r in runs}


@pytest.mark.parametrize("window", ["history", "history+labels"])
def test_stage_writes_item_knn_lists_in_both_windows(tiny_stage, window):
    from musicrec.candidates.stage import window_interactions

    profile, paths, runs = tiny_stage
    lists = pl.read_parquet(paths.candidate_dir(window) / "item_knn.parquet")
    assert dict(lists.schema) == {
        "user_id": pl.Int32,
        "track_id": pl.Int32,
        "score": pl.Float32,
        "rank": pl.Int16,
    }
    heard = window_interactions(paths, window).select("user_id", "track_id")
    by_user = lists.group_by("user_id").agg(
        (pl.col("rank").sort() == pl.int_range(1, pl.len() + 1)).all().alias("gapless"),
        (pl.col("score").sort_by("rank").diff().drop_nulls() <= 0).all().alias("descending"),
        pl.len().alias("length"),
    )
    assert by_user.get_column("gapless").all() and by_user.get_column("descending").all()
    assert by_user.get_column("length").max() <= profile.candidates.item_knn.n == 200
    assert lists.join(heard, on=["user_id", "track_id"]).height == 0, "heard tracks"
    assert (lists.get_column("score") > 0).all()
    users = heard.get_column("user_id").unique()
    assert lists.get_column("user_id").is_in(users.implode()).all()
    if window == "history+labels":  # every user of the window gets a list
        assert by_user.height >= 0.95 * users.len()
    run = runs[("item_knn", window)]
    assert run.rows == lists.height and run.files == ["item_knn.parquet"] and "bm25" in run.note


def test_item_knn_feeds_the_recall_ranking_and_evaluation(tiny_stage):
    from musicrec.candidates.recall import candidate_recall
    from musicrec.candidates.stage import labels_targets
    from musicrec.config import RankingConfig
    from musicrec.evaluation import model_lists
    from musicrec.ranking.features import candidate_files

    _, paths, _ = tiny_stage
    history = paths.candidate_dir("history")
    recall = candidate_recall(history, labels_targets(paths), [50])
    assert recall.filter(pl.col("generator") == "item_knn").get_column("recall").item() > 0
    files = {name for name, _, _ in candidate_files(history, RankingConfig().candidates)}
    assert "item_knn" in files
    assert "item_knn" in model_lists(paths, 10)


def test_disabled_item_knn_removes_its_lists(tiny_stage):
    from musicrec.candidates.stage import CandidateStage

    profile, paths, _ = tiny_stage
    off = profile.candidates.item_knn.model_copy(update={"enabled": False})
    disabled = profile.model_copy(
        update={"candidates": profile.candidates.model_copy(update={"item_knn": off})}
    )
    runs = {r.generator: r for r in CandidateStage(disabled, paths).fit("history+labels")}
    assert runs["item_knn"].note == "disabled in the profile" and runs["item_knn"].rows == 0
    assert not (paths.candidate_dir("history+labels") / "item_knn.parquet").exists()
    CandidateStage(profile, paths).fit("history+labels")  # the other tests' lists back


def test_the_similarities_can_be_learnt_from_each_users_latest_tracks_only():
    # user 1 heard 10 long ago, then 11 and 12; user 2 heard 10 and 20; user 3 heard 11 only
    data = fit_data(
        [
            (1, 10, 1.0, 0),
            (1, 11, 1.0, 5),
            (1, 12, 1.0, 6),
            (2, 10, 1.0, 0),
            (2, 20, 1.0, 1),
            (3, 11, 1.0, 0),
        ],
        [10, 11, 12, 20],
    )
    every = lists(ItemKnnGenerator(ItemKnnConfig(kind="cosine"), threads=1).fit(data), data, 5)
    assert {t for t, _ in every[3]} == {10, 12} and {t for t, _ in every[2]} == {11, 12}
    capped = ItemKnnGenerator(ItemKnnConfig(kind="cosine", max_user_tracks=2), threads=1).fit(data)
    got = lists(capped, data, 5)
    # user 1's old 10 no longer links 10 with 11 and 12: user 3 reaches 12 alone, user 2 nothing
    assert {t for t, _ in got[3]} == {12} and got[2] == []
    # the lists still start from everything a user heard: user 1's 10 is not offered back
    assert all(t not in (10, 11, 12) for t, _ in got[1])
    assert capped.values.nnz == data.matrix.nnz
