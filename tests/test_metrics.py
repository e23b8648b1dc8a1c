"""Known answers, computed by hand, for the metrics and their bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from musicrec.metrics import (
    MAP,
    NDCG,
    Coverage,
    HitRate,
    Hits,
    IntraListDiversity,
    Novelty,
    Precision,
    Recall,
    TopLists,
    bootstrap_ci,
    bootstrap_diff_ci,
    evaluate,
    evaluate_per_user,
)

L3 = math.log2(3)  # 1.5849625


def frame(rows, columns):
    return pl.DataFrame(rows, schema=columns, orient="row")


def reco_frame(lists: dict[int, list[int]]) -> pl.DataFrame:
    """Lists in order, ranks 1..n."""
    rows = [(u, t, r) for u, tracks in lists.items() for r, t in enumerate(tracks, 1)]
    return frame(rows, {"user_id": pl.Int32, "track_id": pl.Int32, "rank": pl.Int16})


def rel_frame(items: dict[int, list[int]]) -> pl.DataFrame:
    rows = [(u, t) for u, tracks in items.items() for t in tracks]
    return frame(rows, {"user_id": pl.Int32, "track_id": pl.Int32})


# User 1 (A): relevant {1, 2, 3}, list [1, 4, 2, 5]   -> hits at positions 1 and 3
# User 2 (B): relevant {7} (fewer than k), list [8, 7, 9] -> hit at position 2
# User 3 (C): relevant {10, 11}, no recommendations -> 0 everywhere
# User 4 (D): recommendations [50, 51] but no relevant item -> not evaluated by default
RECOS = reco_frame({1: [1, 4, 2, 5], 2: [8, 7, 9], 4: [50, 51]})
RELEVANT = rel_frame({1: [1, 2, 3, 1], 2: [7], 3: [10, 11]})  # (1, 1) twice: counted once


def values(metric, recos=RECOS, relevant=RELEVANT, users=None) -> dict[int, float]:
    per_user = metric.calc_per_user(recos, relevant, users)
    return dict(zip(per_user["user_id"].to_list(), per_user["value"].to_list(), strict=True))


def test_precision_by_hand():
    # k=2: A top2 [1, 4] -> 1 hit -> 1/2; B [8, 7] -> 1/2; C -> 0
    assert values(Precision(2)) == pytest.approx({1: 0.5, 2: 0.5, 3: 0.0})
    # k=3: A [1, 4, 2] -> 2/3; B [8, 7, 9] -> 1/3; C 0; mean (2/3 + 1/3 + 0) / 3 = 1/3
    assert values(Precision(3)) == pytest.approx({1: 2 / 3, 2: 1 / 3, 3: 0.0})
    assert Precision(3).calc(RECOS, RELEVANT) == pytest.approx(1 / 3)
    # a list shorter than k still divides by k: B at k=5 -> 1/5
    assert values(Precision(5))[2] == pytest.approx(0.2)


def test_recall_by_hand():
    # k=2: A 1 hit / 3 relevant (the repeated relevant row counts once) = 1/3; B 1/1; C 0/2
    assert values(Recall(2)) == pytest.approx({1: 1 / 3, 2: 1.0, 3: 0.0})
    # mean (1/3 + 1 + 0) / 3 = 4/9
    assert Recall(2).calc(RECOS, RELEVANT) == pytest.approx(4 / 9)
    # k=3: A 2/3
    assert values(Recall(3))[1] == pytest.approx(2 / 3)


def test_ndcg_by_hand():
    # k=2, A: DCG = 1/log2(2) = 1; ideal over min(3, 2) = 2 items: 1 + 1/log2(3) = 1.63093
    #   -> 1 / 1.63093 = 0.61315
    # k=2, B: DCG = 1/log2(3) = 0.63093; ideal over min(1, 2) = 1 item: 1 -> 0.63093
    expected2 = {1: 1 / (1 + 1 / L3), 2: 1 / L3, 3: 0.0}
    assert values(NDCG(2)) == pytest.approx(expected2)
    assert expected2[1] == pytest.approx(0.61315, abs=1e-5)
    # k=3, A: DCG = 1 + 1/log2(4) = 1.5; ideal 1 + 1/log2(3) + 1/2 = 2.13093 -> 0.70392
    assert values(NDCG(3))[1] == pytest.approx(1.5 / (1 + 1 / L3 + 0.5))
    assert values(NDCG(3))[1] == pytest.approx(0.70392, abs=1e-5)


def test_map_by_hand():
    # k=2, A: hit at 1 -> precision@1 = 1; / min(3, 2) = 2 -> 0.5
    # k=2, B: hit at 2 -> precision@2 = 1/2; / min(1, 2) = 1 -> 0.5
    assert values(MAP(2)) == pytest.approx({1: 0.5, 2: 0.5, 3: 0.0})
    # k=3, A: hits at 1 and 3 -> (1/1 + 2/3) / min(3, 3) = (5/3) / 3 = 5/9
    assert values(MAP(3))[1] == pytest.approx(5 / 9)
    # k=1, B: no hit in [8] -> 0
    assert values(MAP(1))[2] == 0.0


def test_hitrate_by_hand():
    # k=1: A [1] hit, B [8] no hit, C nothing -> mean 1/3
    assert values(HitRate(1)) == {1: 1.0, 2: 0.0, 3: 0.0}
    assert HitRate(2).calc(RECOS, RELEVANT) == pytest.approx(2 / 3)


def test_users_argument_excludes_users_without_relevant_items():
    users = pl.Series([1, 3, 4, 99, 3])  # 4: recos, no relevant; 99: nothing; 3 repeated
    # only 1 and 3 have relevant items: P@2 = (1/2 + 0) / 2 = 1/4
    assert values(Precision(2), users=users) == {1: 0.5, 3: 0.0}
    assert Precision(2).calc(RECOS, RELEVANT, users) == pytest.approx(0.25)
    assert evaluate(RECOS, RELEVANT, [Precision(2)], users=users)["value"].item() == pytest.approx(0.25)


def test_rank_column_decides_not_row_order():
    shuffled = RECOS.sample(fraction=1.0, shuffle=True, seed=3)
    assert shuffled["rank"].to_list() != RECOS["rank"].to_list()
    for metric in (Precision(3), Recall(2), NDCG(3), MAP(3), HitRate(1)):
        assert values(metric, shuffled) == pytest.approx(values(metric))


def test_ties_broken_by_track_id_and_gaps_closed():
    # ranks (1, 21), (1, 20), (2, 22): the tie puts track 20 (smaller id) first
    recos = frame(
        [(5, 21, 1), (5, 20, 1), (5, 22, 2)], {"user_id": pl.Int32, "track_id": pl.Int32, "rank": pl.Int32}
    )
    relevant = rel_frame({5: [20]})
    assert Precision(1).calc(recos, relevant) == 1.0
    # the top 2 holds two items (20, 21), not three: P@2 = 1/2, never 1/3 or 2/3 by over-counting
    assert Precision(2).calc(recos, relevant) == 0.5
    # ranks 2, 5, 9 are positions 1, 2, 3: the relevant track at rank 9 is in the top 3
    gaps = frame(
        [(6, 30, 9), (6, 31, 2), (6, 32, 5)], {"user_id": pl.Int32, "track_id": pl.Int32, "rank": pl.Int32}
    )
    assert HitRate(3).calc(gaps, rel_frame({6: [30]})) == 1.0
    assert HitRate(2).calc(gaps, rel_frame({6: [30]})) == 0.0
    # NDCG of the hit at position 3: (1/log2(4)) / 1 = 0.5
    assert NDCG(3).calc(gaps, rel_frame({6: [30]})) == pytest.approx(0.5)


def test_track_listed_twice_is_one_hit():
    # list [30, 30, 31], relevant {30}: one hit at position 1; the copy still takes position 2
    recos = reco_frame({7: [30, 30, 31]})
    relevant = rel_frame({7: [30]})
    assert Precision(2).calc(recos, relevant) == 0.5  # 1 hit / 2
    assert Recall(3).calc(recos, relevant) == 1.0  # not 2
    assert MAP(3).calc(recos, relevant) == 1.0  # (1/1) / min(1, 3)
    assert NDCG(3).calc(recos, relevant) == 1.0  # 1 / 1


def test_inputs_with_int64_ids_and_extra_columns():
    recos = RECOS.with_columns(pl.col("user_id").cast(pl.Int64), score=pl.lit(0.5))
    assert values(Precision(2), recos) == values(Precision(2))
    with pytest.raises(ValueError, match="missing columns"):
        Precision(2).calc(RECOS.drop("rank"), RELEVANT)
    with pytest.raises(ValueError, match="positive integer"):
        Precision(0)


def test_no_relevant_users_gives_nan_mean():
    empty = RELEVANT.clear()
    assert values(Precision(2), relevant=empty) == {}
    assert math.isnan(Precision(2).calc(RECOS, empty))


# --------------------------------------------------------------------------- beyond accuracy


def test_coverage_by_hand():
    # default users: those of relevant (1, 2, 3): top 2 of 1 is {1, 4}, of 2 {8, 7} -> 4 / 10
    assert Coverage(2, n_items=10).calc(RECOS, RELEVANT) == pytest.approx(0.4)
    # k=3 adds 2 and 9: {1, 4, 2, 8, 7, 9} -> 6 / 10
    assert Coverage(3, n_items=10).calc(RECOS, RELEVANT) == pytest.approx(0.6)
    # all users of recos (no relevant, no users): also 50, 51 -> 6 / 20
    assert Coverage(2, n_items=20).calc(RECOS) == pytest.approx(0.3)
    # users=[4]: {50, 51} -> 2 / 10
    assert Coverage(2, n_items=10).calc(RECOS, RELEVANT, pl.Series([4])) == pytest.approx(0.2)
    with pytest.raises(TypeError):
        Coverage(2, n_items=10).calc_per_user(RECOS, RELEVANT)


def test_novelty_by_hand():
    # 4 training users; track 1: all 4 -> -log2(4/4) = 0 bits; track 2: users 1, 2 (user 1 twice)
    # -> -log2(2/4) = 1; track 3: one user -> -log2(1/4) = 2; track 9 unseen -> log2(4) = 2
    train = rel_frame({1: [1, 2, 2], 2: [1, 2], 3: [1, 3], 4: [1]})
    recos = reco_frame({10: [1, 2, 3], 11: [3, 9]})
    novelty = Novelty(2, train=train)
    # user 10 top 2 [1, 2]: (0 + 1) / 2 = 0.5; user 11 [3, 9]: (2 + 2) / 2 = 2; mean 1.25
    assert values(novelty, recos, relevant=None) == pytest.approx({10: 0.5, 11: 2.0})
    assert novelty.calc(recos) == pytest.approx(1.25)
    # k=3, user 10: (0 + 1 + 2) / 3 = 1
    assert values(Novelty(3, train=train), recos, relevant=None)[10] == pytest.approx(1.0)
    # users without recommendations are left out, not 0
    assert values(novelty, recos, users=pl.Series([10, 12])) == pytest.approx({10: 0.5})


TRACKS = pl.DataFrame(
    {"track_id": [1, 2, 3, 4, 5], "genres": [[1], [1, 2], [3], [], [2, 1]]},
    schema={"track_id": pl.Int32, "genres": pl.List(pl.Int32)},
)


def test_diversity_by_hand():
    recos = reco_frame(
        {
            20: [1, 2, 3],  # pairs: (1,2) J=|{1}|/|{1,2}|=1/2 -> 0.5; (1,3) -> 1; (2,3) -> 1; mean 2.5/3
            21: [2, 5, 4],  # 4 has no genre: only (2,5): same set {1,2}, J=1 -> 0
            22: [4, 1],  # one track with genres: no pair -> left out
            23: [2, 3, 2],  # distinct tracks {2, 3}: one pair, disjoint -> 1
            24: [99, 1, 3],  # 99 is not in tracks (no genre): only (1,3) -> 1
        }
    )
    diversity = IntraListDiversity(3, tracks=TRACKS)
    assert values(diversity, recos, relevant=None) == pytest.approx({20: 2.5 / 3, 21: 0.0, 23: 1.0, 24: 1.0})
    # mean over the four users: (0.83333 + 0 + 1 + 1) / 4 = 0.70833
    assert diversity.calc(recos) == pytest.approx((2.5 / 3 + 2) / 4)
    # k=2, user 20: only (1,2) -> 0.5
    assert values(IntraListDiversity(2, tracks=TRACKS), recos, relevant=None)[20] == pytest.approx(0.5)


def test_diversity_with_many_genres_uses_several_words():
    # genres 0..199 need 4 words of 64 bits: track 1 = {0..99}, track 2 = {50..199}
    # |A ∩ B| = 50, |A ∪ B| = 200 -> distance 1 - 50/200 = 0.75
    tracks = pl.DataFrame(
        {"track_id": [1, 2], "genres": [list(range(100)), list(range(50, 200))]},
        schema={"track_id": pl.Int32, "genres": pl.List(pl.Int32)},
    )
    recos = reco_frame({1: [1, 2]})
    assert IntraListDiversity(2, tracks=tracks).calc(recos) == pytest.approx(0.75)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_matches_single_metrics():
    train = rel_frame({1: [1, 2], 2: [7]})
    metrics = [
        Precision(2),
        Recall(3),
        NDCG(2),
        MAP(3),
        HitRate(1),
        Coverage(2, n_items=10),
        Novelty(2, train=train),
        IntraListDiversity(2, tracks=TRACKS),
    ]
    out = evaluate(RECOS, RELEVANT, metrics, n_boot=200)
    assert out.columns == ["metric", "k", "value", "lower", "upper"]
    assert out["metric"].to_list() == [
        "precision",
        "recall",
        "ndcg",
        "map",
        "hitrate",
        "coverage",
        "novelty",
        "diversity",
    ]
    assert out["k"].to_list() == [2, 3, 2, 3, 1, 2, 2, 2]
    for metric, value in zip(metrics, out["value"].to_list(), strict=True):
        assert value == pytest.approx(metric.calc(RECOS, RELEVANT), nan_ok=True)
    coverage = out.filter(pl.col("metric") == "coverage")
    assert coverage["lower"].is_null().all() and coverage["upper"].is_null().all()
    others = out.filter(pl.col("metric") != "coverage")
    assert (others["lower"] <= others["value"] + 1e-12).all()
    assert (others["value"] <= others["upper"] + 1e-12).all()


def test_hits_are_shared_across_ks():
    hits = Hits.compute(RECOS, RELEVANT, max_k=3)
    assert hits.users["n_relevant"].to_list() == [3, 1, 2]
    assert hits.hits.rows() == [(1, 1, 1), (1, 3, 2), (2, 2, 1)]  # (user, position, hit_index)
    assert Precision(2).from_hits(hits).equals(Precision(2).calc_per_user(RECOS, RELEVANT))
    with pytest.raises(ValueError, match="beyond"):
        Precision(4).from_hits(hits)


def naive(lists: dict, relevant: dict, k: int) -> dict[str, dict[int, float]]:
    """A plain Python reference, user by user."""
    out = {name: {} for name in ("precision", "recall", "ndcg", "map", "hitrate")}
    for user, rel in relevant.items():
        rel = set(rel)
        top = lists.get(user, [])[:k]
        seen, hits = set(), []
        for position, track in enumerate(top, 1):
            if track in rel and track not in seen:
                hits.append(position)
            seen.add(track)
        out["precision"][user] = len(hits) / k
        out["recall"][user] = len(hits) / len(rel)
        ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(rel), k) + 1))
        out["ndcg"][user] = sum(1 / math.log2(p + 1) for p in hits) / ideal
        out["map"][user] = sum((i + 1) / p for i, p in enumerate(hits)) / min(len(rel), k)
        out["hitrate"][user] = float(bool(hits))
    return out


def random_case(seed: int, n_users: int = 300, n_tracks: int = 40, length: int = 15):
    rng = np.random.default_rng(seed)
    lists = {
        u: [int(t) for t in rng.integers(0, n_tracks, size=rng.integers(0, length))] for u in range(n_users)
    }
    relevant = {
        u: [int(t) for t in rng.integers(0, n_tracks, size=rng.integers(1, 8))]
        for u in range(n_users)
        if rng.random() < 0.8
    }
    recos = reco_frame({u: t for u, t in lists.items() if t})
    # shuffle rows and spread the ranks (x3) so that the sorting path is used too
    recos = recos.sample(fraction=1.0, shuffle=True, seed=seed).with_columns(pl.col("rank") * 3)
    return lists, relevant, recos, rel_frame(relevant)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_data_matches_reference_and_stays_in_unit_interval(seed):
    lists, relevant, recos, relevant_frame = random_case(seed)
    for k in (1, 5, 10):
        reference = naive(lists, relevant, k)
        for cls in (Precision, Recall, NDCG, MAP, HitRate):
            got = values(cls(k), recos, relevant_frame)
            assert got == pytest.approx(reference[cls.name]), (cls.name, k)
            assert all(0.0 <= v <= 1.0 for v in got.values())
    tracks = pl.DataFrame(
        {"track_id": list(range(40)), "genres": [[t % 5, t % 7] if t % 4 else [] for t in range(40)]},
        schema={"track_id": pl.Int32, "genres": pl.List(pl.Int32)},
    )
    diversity = values(IntraListDiversity(10, tracks=tracks), recos, relevant_frame)
    assert diversity and all(0.0 <= v <= 1.0 for v in diversity.values())
    assert 0.0 <= Coverage(10, n_items=40).calc(recos, relevant_frame) <= 1.0
    novelty = values(Novelty(10, train=relevant_frame), recos, relevant_frame)
    n_train_users = len(relevant)
    assert all(0.0 <= v <= math.log2(n_train_users) + 1e-9 for v in novelty.values())


def test_sorted_and_shuffled_input_agree():
    _, _, recos, relevant = random_case(5)
    ordered = TopLists.from_recos(recos, 10).frame
    again = TopLists.from_recos(ordered.rename({"position": "rank"}), 10).frame  # the fast path
    assert again.equals(ordered)
    per_user = evaluate_per_user(recos, relevant, [NDCG(10), MAP(5)])
    per_user_sorted = evaluate_per_user(ordered.rename({"position": "rank"}), relevant, [NDCG(10), MAP(5)])
    for a, b in zip(per_user, per_user_sorted, strict=True):
        assert a.equals(b)


@pytest.mark.parametrize("n_relevant", [3, 10, 25])
def test_perfect_ranking_scores_one(n_relevant):
    # relevant items first, then others: NDCG@k = MAP@k = 1 and recall = min(|rel|, k) / |rel|
    k = 10
    relevant = {u: list(range(100 * u, 100 * u + n_relevant)) for u in range(1, 6)}
    lists = {u: tracks + [-1 - i for i in range(20)] for u, tracks in relevant.items()}
    recos, relevant_frame = reco_frame(lists), rel_frame(relevant)
    assert NDCG(k).calc(recos, relevant_frame) == pytest.approx(1.0)
    assert MAP(k).calc(recos, relevant_frame) == pytest.approx(1.0)
    assert Recall(k).calc(recos, relevant_frame) == pytest.approx(min(n_relevant, k) / n_relevant)
    assert Precision(k).calc(recos, relevant_frame) == pytest.approx(min(n_relevant, k) / k)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_of_a_constant_collapses():
    assert bootstrap_ci(np.full(500, 0.37)) == (0.37, 0.37)


def test_bootstrap_ignores_the_last_bits_and_the_order_of_the_values():
    """Another engine sums the same users' values in another order: the last bits differ, and the
    interval must not (without the rounding, a value split in two changes every draw)."""
    rng = np.random.default_rng(3)
    values_ = rng.integers(0, 7, size=400) / 7  # few distinct values, as NDCG of short lists
    nudged = np.nextafter(values_, np.where(rng.random(400) < 0.5, -1.0, 2.0))  # one ulp away
    assert (nudged != values_).all()
    expected = bootstrap_ci(values_, n_boot=300, seed=5)
    assert bootstrap_ci(nudged, n_boot=300, seed=5) == pytest.approx(expected, abs=1e-12)
    assert bootstrap_ci(rng.permutation(nudged), n_boot=300, seed=5) == pytest.approx(expected, abs=1e-12)
    distinct = np.arange(400) / 400  # truly different values stay different: a wider spread
    assert bootstrap_ci(distinct, n_boot=300, seed=5) != pytest.approx(expected, abs=1e-3)


def test_bootstrap_of_a_proportion_matches_the_normal_interval():
    # p = 0.5, n = 10000: 0.5 ± 1.96 * sqrt(0.25 / 10000) = 0.5 ± 0.0098
    values_ = np.r_[np.zeros(5000), np.ones(5000)]
    low, high = bootstrap_ci(values_, n_boot=2000, seed=1)
    assert low == pytest.approx(0.5 - 0.0098, abs=0.0015)
    assert high == pytest.approx(0.5 + 0.0098, abs=0.0015)


def test_bootstrap_of_continuous_values_matches_the_normal_interval():
    # more distinct values than the support limit: binned, the half-width stays 1.96 * sd / sqrt(n)
    rng = np.random.default_rng(4)
    x = rng.exponential(size=50_000)
    low, high = bootstrap_ci(x, n_boot=2000)
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=0.2 * half)


def test_bootstrap_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).random(1000)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    low, high = bootstrap_ci(x, alpha=0.5, seed=7)
    low95, high95 = bootstrap_ci(x, alpha=0.05, seed=7)
    assert low95 < low < high < high95


def test_bootstrap_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([])))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(np.array([0.1, np.nan]))


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    a = rng.random(5000)
    # b = a + 0.1 on every user: the difference is exactly -0.1 in every resample
    low, high = bootstrap_diff_ci(a, a + 0.1)
    assert low == pytest.approx(-0.1) and high == pytest.approx(-0.1)
    # a small true difference hidden in large user-to-user spread: pairing removes the spread
    b = a - 0.01 + rng.normal(0, 0.01, size=a.size)
    low, high = bootstrap_diff_ci(a, b)
    diff = a - b  # mean about 0.01, sd about 0.01
    assert low < diff.mean() < high
    # width 2 * 1.96 * sd(a - b) / sqrt(n) = 2 * 1.96 * 0.01 / 70.7 = 0.00055; unpaired (sd of a and b
    # about 0.29 each) it would be 2 * 1.96 * sqrt(2 / 12 / 5000) = 0.0226
    assert high - low == pytest.approx(2 * 1.96 * diff.std() / math.sqrt(a.size), rel=0.15)
    with pytest.raises(ValueError, match="same users"):
        bootstrap_diff_ci(a, a[:-1])


def test_user_split_over_two_blocks_is_not_taken_as_sorted():
    # user 1 appears twice, each block with ranks 1..n: ranks (1, 2) and (1) -> positions by
    # (rank, track_id): (1, 5) pos 1, (1, 6) pos 2, (2, 7) pos 3; relevant {7}: a hit at position 3
    recos = frame(
        [(1, 5, 1), (1, 7, 2), (2, 8, 1), (1, 6, 1)],
        {"user_id": pl.Int32, "track_id": pl.Int32, "rank": pl.Int32},
    )
    relevant = rel_frame({1: [7]})
    assert TopLists.from_recos(recos, 3).frame.filter(pl.col("user_id") == 1).rows() == [
        (1, 5, 1),
        (1, 6, 2),
        (1, 7, 3),
    ]
    assert HitRate(2).calc(recos, relevant) == 0.0
    assert NDCG(3).calc(recos, relevant) == pytest.approx(0.5)  # (1/log2(4)) / 1


def test_novelty_from_counts_is_novelty_from_train():
    # the popularity table (distinct listeners per track, 0 for a track nobody heard) and the number
    # of users give the same per-user novelty as the interactions themselves
    train = rel_frame({1: [1, 2, 2], 2: [1, 2], 3: [1, 3], 4: [1]})
    listeners = pl.DataFrame({"track_id": [1, 2, 3, 9], "listeners": [4, 2, 1, 0]})
    recos = reco_frame({10: [1, 2, 9], 11: [3, 7]})
    from_train = Novelty(3, train=train).calc_per_user(recos)
    assert Novelty(3, listeners=listeners, n_users=4).calc_per_user(recos).equals(from_train)
    with pytest.raises(ValueError, match="counts"):
        Novelty(3)
