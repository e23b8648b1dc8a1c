"""Candidate generators: top-popular, random, ALS, i2i from history, recall; on toys with known answers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from musicrec.candidates import i2i
from musicrec.candidates.als import AlsGenerator
from musicrec.candidates.base import FitData, to_similar_frame, to_user_frame, top_n
from musicrec.candidates.i2i import i2i_from_history, in_time_order, last_listens
from musicrec.candidates.popular import top_popular, top_popular_of_matrix
from musicrec.candidates.random import RandomGenerator
from musicrec.candidates.recall import candidate_recall
from musicrec.config import AlsConfig

DAY = dt.datetime(2022, 3, 1)


def frame(pairs: list[tuple[int, int]], days: list[int] | None = None) -> pl.DataFrame:
    days = days or [0] * len(pairs)
    return pl.DataFrame(
        {
            "user_id": [u for u, _ in pairs],
            "track_id": [t for _, t in pairs],
            "started_at": [DAY + dt.timedelta(days=d) for d in days],
            "track_seq": list(range(1, len(pairs) + 1)),
            "weight": [1.0] * len(pairs),
        },
        schema_overrides={
            "user_id": pl.Int32,
            "track_id": pl.Int32,
            "track_seq": pl.Int16,
            "weight": pl.Float32,
            "started_at": pl.Datetime("ns"),
        },
    )


def tracks(ids) -> pl.DataFrame:
    ids = list(ids)
    return pl.DataFrame(
        {"track_id": ids, "albums": [[]] * len(ids), "artists": [[]] * len(ids), "genres": [[]] * len(ids)},
        schema={
            "track_id": pl.Int32,
            "albums": pl.List(pl.Int32),
            "artists": pl.List(pl.Int32),
            "genres": pl.List(pl.Int32),
        },
    )


def block_data(n_users: int = 60, n_tracks: int = 40, seed: int = 0) -> FitData:
    """Two blocks: users 0..29 listen only to tracks 100..119, users 30..59 to 120..139."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(n_users):
        block = 0 if u < n_users // 2 else 1
        chosen = rng.choice(n_tracks // 2, 8, replace=False) + block * (n_tracks // 2)
        pairs += [(u, 100 + int(t)) for t in chosen]
    return FitData.build(frame(pairs), tracks(range(100, 100 + n_tracks)))


def test_top_popular_counts_distinct_listeners_over_the_last_days():
    # track 7: users 1, 2 (days 0, 9); track 8: users 1, 2, 3 but only user 3 in the last 2 days
    data = frame([(1, 7), (2, 7), (1, 8), (2, 8), (3, 8), (4, 9)], days=[0, 9, 0, 0, 9, 8])
    assert top_popular(data, n=3)["track_id"].to_list() == [8, 7, 9]
    assert top_popular(data, n=3)["score"].to_list() == [3.0, 2.0, 1.0]
    last_two = top_popular(data, n=3, days=2)  # days 8 and 9: track 7 (user 2), 8 (user 3), 9 (user 4)
    assert last_two["track_id"].to_list() == [7, 8, 9] and last_two["rank"].to_list() == [1, 2, 3]


def test_top_popular_from_the_matrix_equals_the_query_over_listens():
    rng = np.random.default_rng(3)
    n = 5_000
    listens = pl.DataFrame(
        {
            "user_id": rng.integers(0, 300, n).astype(np.int32),
            "track_id": (rng.zipf(1.6, n) % 400).astype(np.int32),  # repeats and ties in counts
            "weight": np.ones(n, dtype=np.float32),
        }
    )
    data = FitData.build(listens, tracks(range(0, 500)))  # tracks 400-499 never heard
    for n_top in (5, 50, 450):
        expected = top_popular(listens, n=n_top)
        assert top_popular_of_matrix(data.track_ids, data.listeners(), n_top).equals(expected)


def test_fit_data_matrix_is_the_same_in_or_out_of_user_order():
    rng = np.random.default_rng(4)
    n = 20_000
    listens = pl.DataFrame(
        {
            "user_id": np.sort(rng.integers(0, 2_000, n)).astype(np.int32) * 3,  # sparse user ids
            "track_id": rng.integers(0, 700, n).astype(np.int32) * 2 + 11,
            "weight": rng.random(n).astype(np.float32),
        }
    )
    catalogue = tracks(range(11, 11 + 2 * 800, 2))
    in_order = FitData.build(listens, catalogue).matrix
    shuffled = FitData.build(listens.sample(fraction=1.0, shuffle=True, seed=1), catalogue).matrix
    dense = np.zeros(in_order.shape)
    user_ids = np.unique(listens["user_id"].to_numpy())
    np.add.at(
        dense,
        (np.searchsorted(user_ids, listens["user_id"]), (listens["track_id"].to_numpy() - 11) // 2),
        listens["weight"].to_numpy(),
    )
    for matrix in (in_order, shuffled):
        assert matrix.has_canonical_format
        np.testing.assert_allclose(matrix.toarray(), dense, rtol=1e-6)
    with pytest.raises(ValueError, match="missing from the catalogue"):
        FitData.build(listens, tracks(range(11, 101, 2)))


def test_index_of_dense_table_equals_the_binary_search(monkeypatch):
    import musicrec.candidates.base as base

    rng = np.random.default_rng(5)
    for first in (0, 1_000_000, -2_000):  # from zero, a batch of consecutive users, negative ids
        ids = np.unique(rng.integers(first, first + 3_000, 1_000)).astype(np.int32)
        # absent ids, ids below and beyond the span
        wanted = rng.integers(first - 5, first + 3_100, 10_000).astype(np.int32)
        monkeypatch.setattr(base, "DENSE_LOOKUP", 1_000_000)
        expected = base.index_of(ids, wanted)  # below DENSE_LOOKUP: the binary search
        assert base.IdPositions(ids).table is not None  # the dense path is the one compared
        monkeypatch.setattr(base, "DENSE_LOOKUP", 1)
        got = base.index_of(ids, wanted)
        assert got.dtype == np.int64 and np.array_equal(got, expected)
        inside = (wanted >= ids[0]) & (wanted <= ids[-1])
        assert np.array_equal(base.index_of(ids, wanted[inside]), expected[inside])
        assert (expected >= 0).any() and (expected < 0).any()


def test_top_n_excludes_and_pads():
    scores = np.array([[0.1, 0.9, 0.5, 0.3], [0.2, 0.1, 0.4, 0.3]], dtype=np.float32)
    exclude = FitData.build(frame([(0, 1), (1, 2)]), tracks(range(4))).matrix
    cols, best = top_n(scores, 6, exclude)
    assert cols[0].tolist() == [2, 3, 0, -1, -1, -1]  # column 1 heard by row 0
    assert cols[1].tolist() == [3, 0, 1, -1, -1, -1]
    assert np.isneginf(best[0, 3:]).all()


def test_frames_map_back_to_source_ids():
    cols = np.array([[1, 0, -1]])
    out = to_user_frame(np.array([42]), cols, np.array([[0.9, 0.5, -np.inf]]), np.array([10, 20]))
    assert out.rows() == [(42, 20, pytest.approx(0.9), 1), (42, 10, 0.5, 2)]
    sim = to_similar_frame(np.array([0]), np.array([[1]]), np.array([[0.7]]), np.array([10, 20]))
    assert sim.columns == ["track_id", "similar_track_id", "score", "rank"]
    assert sim.rows()[0][:2] == (10, 20)


def test_random_is_unheard_unique_and_seeded():
    data = block_data()
    rows = np.arange(len(data.user_ids))
    cols, scores = RandomGenerator(seed=3).fit(data).recommend(rows, 25)
    again, _ = RandomGenerator(seed=3).fit(data).recommend(rows, 25)
    other, _ = RandomGenerator(seed=4).fit(data).recommend(rows, 25)
    assert (cols == again).all() and (cols != other).any()
    for r in rows:
        picked = cols[r][cols[r] >= 0]
        assert len(picked) == 25 and len(set(picked)) == 25
        assert not set(picked) & set(data.matrix[r].indices)
    # 40 tracks, 8 heard: only 32 exist, so asking for 35 pads the rest
    short, _ = RandomGenerator(seed=3).fit(data).recommend(rows[:2], 35)
    assert ((short >= 0).sum(1) == 32).all()


def test_als_recovers_the_blocks():
    data = block_data()
    als = AlsGenerator(AlsConfig(factors=2, iterations=30, regularization=0.01, alpha=10.0), seed=1)
    als.fit(data)
    rows = np.arange(len(data.user_ids))
    cols, _ = als.recommend(rows, 5)
    block_of_col = (data.track_ids - 100) // 20
    block_of_user = (data.user_ids >= 30).astype(int)
    assert (block_of_col[cols] == block_of_user[:, None]).mean() > 0.95
    for r in rows:
        assert not set(cols[r]) & set(data.matrix[r].indices), "heard tracks are filtered"
    track_cols = np.arange(len(data.track_ids))
    near, _ = als.similar(track_cols, 5)
    assert not (near == track_cols[:, None]).any(), "no track is similar to itself"
    assert (block_of_col[near] == block_of_col[track_cols][:, None]).mean() > 0.95


def test_als_is_deterministic_for_a_seed():
    data = block_data()
    cfg = AlsConfig(factors=8, iterations=5)
    a = AlsGenerator(cfg, seed=5).fit(data).recommend(np.arange(10), 5)[0]
    b = AlsGenerator(cfg, seed=5).fit(data).recommend(np.arange(10), 5)[0]
    assert (a == b).all()


def test_last_listens_of_a_frame_in_time_order_skip_the_sort(monkeypatch):
    # the cut without a sort (rows by user, day, track_seq) lists what the sort lists; a frame out
    # of order anywhere (here past the first block of the order check) takes the sort
    monkeypatch.setattr(i2i, "ORDER_CHECK_ROWS", 7)
    rng = np.random.default_rng(3)
    users = np.sort(rng.integers(0, 40, 400))
    days = rng.integers(0, 5, 400)
    listens = frame(
        [(int(u), int(t)) for u, t in zip(users, rng.integers(0, 99, 400), strict=True)], days=days.tolist()
    )
    in_order = listens.sort("user_id", "started_at", "track_seq")
    assert in_time_order(in_order, ["started_at", "track_seq"])
    shuffled = in_order.sample(fraction=1.0, shuffle=True, seed=1)
    assert not in_time_order(shuffled, ["started_at", "track_seq"])
    late_swap = pl.concat([in_order[:300], in_order[300:302].reverse(), in_order[302:]])
    assert not in_time_order(late_swap, ["started_at", "track_seq"])
    assert not in_time_order(
        in_order.with_columns(pl.col("track_seq").reverse()), ["started_at", "track_seq"]
    )
    for k in (1, 3, 50):
        by_sort = last_listens(in_order.lazy(), k).collect()  # lazy: always the sort
        assert last_listens(in_order, k).collect().equals(by_sort)
        assert (
            last_listens(shuffled, k)
            .collect()
            .sort("user_id")
            .equals(by_sort.sort("user_id", maintain_order=True))
        )


def test_i2i_from_history_sums_similarity_and_skips_heard():
    history = frame([(1, 10), (1, 11), (1, 12), (2, 10)], days=[0, 1, 2, 0])
    recent = last_listens(history, k=2).collect()
    assert recent.filter(pl.col("user_id") == 1)["track_id"].to_list() == [12, 11]
    similar = pl.DataFrame(
        {
            "track_id": [11, 11, 12, 12, 10],
            "similar_track_id": [13, 10, 13, 14, 15],
            "score": [0.5, 0.9, 0.25, 0.6, 0.8],
        }
    )
    out = i2i_from_history(recent, similar, n=5, heard=history)
    # user 1: 13 <- 0.5 + 0.25 = 0.75, 14 <- 0.6; 10 was heard. user 2: 15 <- 0.8
    assert out.filter(pl.col("user_id") == 1).select("track_id", "score", "rank").rows() == [
        (13, 0.75, 1),
        (14, pytest.approx(0.6), 2),
    ]
    assert out.filter(pl.col("user_id") == 2)["track_id"].to_list() == [15]


@pytest.mark.parametrize("seed", range(20))
def test_i2i_one_user_path_equals_the_polars_query(seed):
    """The service's single-user numpy path ranks exactly as the stage's polars query."""
    rng = np.random.default_rng(seed)
    n_tracks = 40
    pairs = {(int(a), int(b)) for a, b in rng.integers(0, n_tracks, (300, 2)) if a != b}
    source, neighbour = map(list, zip(*sorted(pairs), strict=True))
    # scores on a 1/8 grid: sums are exact in float32, and ties are frequent
    similar = pl.DataFrame(
        {"track_id": source, "similar_track_id": neighbour, "score": rng.integers(1, 9, len(source)) / 8}
    )
    recent = pl.DataFrame({"user_id": [7] * 8, "track_id": rng.integers(0, n_tracks, 8)})  # with repeats
    heard = pl.DataFrame({"user_id": [7] * 5 + [8] * 5, "track_id": rng.integers(0, n_tracks, 10)})
    for kwargs in ({}, {"heard": heard}):
        fast = i2i_from_history(recent, similar, n=15, **kwargs)
        query = i2i_from_history(recent.lazy(), similar, n=15, **kwargs)  # lazy input: the query path
        assert fast.schema == query.schema
        assert fast.rows() == query.rows()


def test_candidate_recall_known_answer(tmp_path):
    targets = pl.DataFrame({"user_id": [1, 1, 2, 2], "track_id": [10, 11, 10, 12]})
    pl.DataFrame({"track_id": [12, 99], "score": [5.0, 4.0], "rank": [1, 2]}).write_parquet(
        tmp_path / "top_popular.parquet"
    )
    pl.DataFrame(
        {"user_id": [1, 1, 2, 2], "track_id": [10, 50, 51, 10], "score": [1.0] * 4, "rank": [1, 2, 1, 2]}
    ).write_parquet(tmp_path / "personal_als.parquet")
    recall = candidate_recall(tmp_path, targets, [1, 2])
    got = {(r["generator"], r["n"]): r["found"] for r in recall.to_dicts()}
    # n=1: popular {12} finds (2,12); ALS finds (1,10); union 2 of 4
    # n=2: popular {12, 99}: 1; ALS adds (2,10): 2; union 3 of 4
    assert got == {
        ("top_popular", 1): 1,
        ("personal_als", 1): 1,
        ("union", 1): 2,
        ("top_popular", 2): 1,
        ("personal_als", 2): 2,
        ("union", 2): 3,
    }


def test_als_confidence_values_log_and_half_life():
    # user 1 heard track 100 on day 0 and 101 on day 10 (the window's last day)
    data = FitData.build(frame([(1, 100), (1, 101)], days=[0, 10]), tracks([100, 101]))
    data.matrix.data[:] = [3.0, 1.0]  # summed weights of the two pairs
    data.interactions = data.interactions.with_columns(pl.Series("weight", [3.0, 1.0]))
    linear = AlsGenerator(AlsConfig()).confidence_matrix(data).toarray()
    assert linear.tolist() == [[3.0, 1.0]]
    log = AlsGenerator(AlsConfig(confidence="log")).confidence_matrix(data).toarray()
    assert log[0] == pytest.approx(np.log1p([3.0, 1.0]))
    decayed = AlsGenerator(AlsConfig(half_life_days=5)).confidence_matrix(data).toarray()
    # 10 days old with a 5-day half-life: a quarter of its weight
    assert decayed[0] == pytest.approx([3.0 * 0.25, 1.0])


def grown(data: FitData, new_users: int = 6, seed: int = 9) -> FitData:
    """``data`` plus a later window: new listens of old users and a few new users (same blocks)."""
    rng = np.random.default_rng(seed)
    pairs = [
        (int(u), 100 + int(t))
        for u, t in zip(data.interactions["user_id"], data.interactions["track_id"] - 100, strict=True)
    ]
    for u in range(60 + new_users):
        block = 0 if u < 30 or 60 <= u < 63 else 1
        heard = {t for uu, t in pairs if uu == u}
        fresh = [100 + block * 20 + int(t) for t in rng.permutation(20)]
        pairs += [(u, t) for t in fresh if t not in heard][:3]
    return FitData.build(frame(pairs), data.tracks)


@pytest.mark.parametrize("refit", ["warm", "users"])
def test_als_refit_starts_from_the_history_model(refit):
    history = block_data()
    later = grown(history)
    cfg = AlsConfig(factors=2, iterations=30, regularization=0.01, alpha=10.0, refit=refit, warm_iterations=2)
    old = AlsGenerator(cfg, seed=1).fit(history)
    new = AlsGenerator(cfg, seed=1).fit(later, previous=old)
    assert new.model.user_factors.shape == (len(later.user_ids), 2)
    if refit == "users":
        # item factors kept; each user's factors solved once against them
        assert np.array_equal(new.model.item_factors, old.model.item_factors)
        expected = old.model.recalculate_user(np.arange(len(later.user_ids)), new.confidence_matrix(later))
        assert np.allclose(new.model.user_factors, expected, atol=1e-5)
    else:
        assert not np.array_equal(new.model.item_factors, old.model.item_factors)
    # the refitted model still finds the blocks, new users (60..65) included
    rows = np.arange(len(later.user_ids))
    cols, _ = new.recommend(rows, 5)
    block_of_col = (later.track_ids - 100) // 20
    block_of_user = np.array([0 if u < 30 or 60 <= u < 63 else 1 for u in later.user_ids])
    assert (block_of_col[cols] == block_of_user[:, None]).mean() > 0.9
    for r in rows:
        assert not set(cols[r]) & set(later.matrix[r].indices), "heard tracks are filtered"


def test_als_users_refit_solves_close_to_the_exact_least_squares():
    """The ``users`` refit's conjugate-gradient steps from the history factors land near the exact
    (Cholesky) solve of every user, new users included, and recommend the same tracks."""
    history = block_data()
    later = grown(history)
    cfg = AlsConfig(factors=4, iterations=3, refit="users")
    old = AlsGenerator(cfg, seed=1).fit(history)
    new = AlsGenerator(cfg, seed=1).fit(later, previous=old)
    exact = new._exact_user_factors(new.confidence_matrix(later))
    deviation = np.abs(new.model.user_factors - exact).mean() / np.abs(exact).mean()
    assert deviation < 0.01
    rows = np.arange(len(later.user_ids))
    cg_lists, _ = new.recommend(rows, 3)
    new.model.user_factors = exact
    exact_lists, _ = new.recommend(rows, 3)
    assert (cg_lists == exact_lists).mean() > 0.95


def test_als_refit_refuses_another_catalogue():
    history = block_data()
    other = FitData.build(history.interactions, tracks(range(100, 150)))
    old = AlsGenerator(AlsConfig(factors=2, iterations=2, refit="users"), seed=1).fit(history)
    with pytest.raises(ValueError, match="another catalogue"):
        AlsGenerator(AlsConfig(factors=2, iterations=2, refit="users"), seed=1).fit(other, previous=old)


def test_als_saved_model_loads_for_a_refit(tmp_path):
    data = block_data()
    cfg = AlsConfig(factors=4, iterations=3, item_pool=25, refit="users")
    als = AlsGenerator(cfg, seed=2).fit(data)
    als.save(tmp_path)
    loaded = AlsGenerator.load(cfg, tmp_path, seed=2)
    assert np.array_equal(loaded.model.item_factors, als.model.item_factors)
    assert np.array_equal(loaded.user_ids, data.user_ids) and np.array_equal(loaded.items, als.items)
    from_disk = AlsGenerator(cfg, seed=2).fit(grown(data), previous=loaded)
    in_memory = AlsGenerator(cfg, seed=2).fit(grown(data), previous=als)
    assert np.array_equal(from_disk.model.user_factors, in_memory.model.user_factors)


def test_als_recommend_pool_keeps_the_lists_its_head_already_held():
    """Personal lists drawn from the most listened tracks: every list track is one of them;
    where the whole catalogue's lists already kept to that head (here: 40 tail tracks of one
    listener each are never recommended), the lists are the same; the similar lists still
    range over every track."""
    base = block_data(n_users=80, n_tracks=40)
    pairs = base.interactions.select("user_id", "track_id").rows()
    pairs += [(u, 140 + u % 40) for u in range(0, 80, 2)]  # tracks 140..179: one listener each
    data = FitData.build(frame(pairs), tracks(range(100, 180)))
    order = np.argsort(-data.listeners(), kind="stable")  # most listened first, ties to the lower column
    rows = np.arange(len(data.user_ids))
    wide = AlsGenerator(AlsConfig(factors=4, iterations=3), seed=3).fit(data)
    cols, _ = wide.recommend(rows, 5)
    head = int(np.max(np.flatnonzero(np.isin(order, cols[cols >= 0])))) + 1
    assert head < len(order), "the tail tracks are never recommended"
    same = AlsGenerator(AlsConfig(factors=4, iterations=3, recommend_pool=head), seed=3).fit(data)
    assert np.array_equal(same.recommend_items, np.sort(order[:head]))
    assert np.array_equal(same.recommend(rows, 5)[0], cols)
    narrow = AlsGenerator(AlsConfig(factors=4, iterations=3, recommend_pool=10), seed=3).fit(data)
    narrow_cols, _ = narrow.recommend(rows, 5)
    assert set(narrow_cols[narrow_cols >= 0].ravel()) <= set(order[:10])
    tail = np.arange(40, 50)
    assert np.array_equal(narrow.similar(tail, 3)[0], wide.similar(tail, 3)[0])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny profile's data (generated, split) in a scratch root, with ALS refitting users only."""
    from musicrec.config import load_profile
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths

    root = tmp_path_factory.mktemp("run")
    profile = load_profile("params/tiny.yaml")
    profile = profile.model_copy(
        update={
            "candidates": profile.candidates.model_copy(
                update={"als": profile.candidates.als.model_copy(update={"refit": "users"})}
            )
        }
    )
    paths = RunPaths.for_profile(profile, root)
    build_dataset(profile, paths, progress=False)
    return profile, paths


def test_stage_reuses_what_does_not_depend_on_the_window(tiny_run):
    """Fitted after history in one stage, history + labels copies the catalogue-only lists; fitted
    alone (nothing in memory, the ALS history model read from disk) it computes the same files."""
    from musicrec.candidates.stage import CandidateStage, fit_window

    profile, paths = tiny_run
    stage = CandidateStage(profile, paths, workers=2)
    stage.fit("history")
    runs = {r.generator: r for r in stage.fit("history+labels")}
    assert "similar lists: the history fit's" in runs["personal_als"].note
    assert runs["audio"].note and "reused" in runs["audio"].note
    copied = {
        name: pl.read_parquet(paths.candidates / name)
        for name in (
            "similar.parquet",
            "content_similar.parquet",
            "audio_similar.parquet",
            "personal_als.parquet",
            "content.parquet",
            "audio.parquet",
        )
    }
    for name in ("similar.parquet", "content_similar.parquet", "audio_similar.parquet"):
        assert copied[name].equals(pl.read_parquet(paths.candidates / "history" / name)), name
    # alone: computed, not copied (i2i_history is left out: polars sums its scores in no fixed order)
    fit_window(profile, paths, "history+labels")
    for name, frame in copied.items():
        assert frame.equals(pl.read_parquet(paths.candidates / name)), name


def test_history_lists_only_for_the_rankers_training_users(tiny_run):
    """With ``ranking.train_users`` set, the history fit lists exactly the ranker's training users
    (every user still counts in the fit); history + labels lists every user."""
    from musicrec.candidates.stage import CandidateStage, labels_targets, list_users, training_users

    profile, paths = tiny_run
    profile = profile.model_copy(update={"ranking": profile.ranking.model_copy(update={"train_users": 50})})
    users = list_users(profile, paths)
    assert np.array_equal(users, training_users(labels_targets(paths), 50, profile.seed)) and len(users) == 50
    stage = CandidateStage(profile, paths)
    stage.fit("history")
    for name in ("personal_als", "random", "i2i_history", "content", "audio"):
        listed = pl.read_parquet(paths.candidates / "history" / f"{name}.parquet")["user_id"].unique()
        assert set(listed.to_list()) <= set(users.tolist()) and listed.len() >= 45, name
    stage.fit("history+labels")
    everyone = pl.read_parquet(paths.candidates / "personal_als.parquet").get_column("user_id").n_unique()
    assert everyone > 300


def test_compare_als_gives_each_variant_its_time_and_quality(tiny_run):
    from musicrec.candidates.compare import compare_als, parse_variant

    profile, paths = tiny_run
    table = compare_als(profile, paths, ["users", "full:2"], n_boot=10)
    assert table.get_column("variant").to_list() == ["users", "full:2"]
    assert ((table["ndcg@10"] > 0) & (table["ndcg@10"] <= 1) & (table["seconds"] >= 0)).all()
    assert parse_variant("warm:4") == ("warm", 4)
    with pytest.raises(ValueError, match="full|warm|users"):
        parse_variant("fast")


def test_parquet_stream_keeps_every_row_and_dictionaries_only_text(tmp_path):
    import pyarrow.parquet as pq

    from musicrec.io import ParquetStream

    schema = {"user_id": pl.Int32, "track_id": pl.Int32, "score": pl.Float32, "source": pl.Utf8}
    parts = [
        pl.DataFrame(
            {"user_id": [u] * 3, "track_id": [1, 2, 3], "score": [0.5, 0.25, 0.125], "source": ["final"] * 3}
        )
        for u in range(4)
    ]
    with ParquetStream(tmp_path / "lists.parquet", schema) as out:
        for part in parts:
            out.write(part)
    assert out.rows == 12
    assert pl.read_parquet(tmp_path / "lists.parquet").equals(pl.concat(parts).cast(schema))
    group = pq.ParquetFile(tmp_path / "lists.parquet").metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(4)}
    assert "RLE_DICTIONARY" in encodings["source"]
    assert not any("DICTIONARY" in e for name in ("user_id", "track_id", "score") for e in encodings[name])
