"""Ranking stage: features, candidate merge, sampling, the CatBoost ranker; toys with known answers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from musicrec.candidates.content import tfidf_vectors
from musicrec.candidates.stage import typical_user
from musicrec.config import Profile, RankingConfig
from musicrec.io import RunPaths
from musicrec.ranking.features import (
    ContentSimilarity,
    FeatureBuilder,
    candidate_files,
    merge_candidates,
    track_features,
    user_features,
)
from musicrec.ranking.ranker import (
    SamplingReport,
    TrainedRanker,
    fit_ranker,
    label_rows,
    sample_training_rows,
    split_users,
    top_n_by_score,
)
from musicrec.ranking.stage import explain_user, score_users
from musicrec.split import before

T0 = dt.datetime(2022, 3, 1)
END = dt.date(2022, 3, 11)  # = at(10): every window below ends here
INTERACTIONS = {
    "user_id": pl.Int32,
    "track_id": pl.Int32,
    "started_at": pl.Datetime("ns"),
    "track_seq": pl.Int16,
    "weight": pl.Float32,
}
TRACKS = {
    "track_id": pl.Int32,
    "albums": pl.List(pl.Int32),
    "artists": pl.List(pl.Int32),
    "genres": pl.List(pl.Int32),
}


def at(day: float, hour: float = 0.0) -> dt.datetime:
    return T0 + dt.timedelta(days=day, hours=hour)


def listens(rows: list[tuple[int, int, dt.datetime]], weights: list[float] | None = None) -> pl.DataFrame:
    """``(user, track, started_at)`` rows as an interactions frame (track_seq in row order)."""
    return pl.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "track_id": [t for _, t, _ in rows],
            "started_at": [s for _, _, s in rows],
            "track_seq": list(range(1, len(rows) + 1)),
            "weight": weights or [1.0] * len(rows),
        },
        schema=INTERACTIONS,
    )


def catalogue(rows: list[tuple[int, list[int], list[int], list[int]]]) -> pl.DataFrame:
    """``(track, artists, albums, genres)`` rows as a tracks frame."""
    return pl.DataFrame(
        {
            "track_id": [r[0] for r in rows],
            "artists": [r[1] for r in rows],
            "albums": [r[2] for r in rows],
            "genres": [r[3] for r in rows],
        },
        schema=TRACKS,
    )


def pairs(user_ids: list[int], track_ids: list[int], **extra) -> pl.DataFrame:
    return pl.DataFrame(
        {"user_id": user_ids, "track_id": track_ids, **extra},
        schema_overrides={"user_id": pl.Int32, "track_id": pl.Int32},
    )


def by_pair(frame: pl.DataFrame, *columns: str) -> dict[tuple[int, int], tuple]:
    return {(r["user_id"], r["track_id"]): tuple(r[c] for c in columns) for r in frame.to_dicts()}


# ----------------------------------------------------------------------------- track and user features
def test_track_features_listens_trend_age_and_catalogue_counts():
    cat = catalogue([(10, [1, 2], [100], [7, 8, 9]), (11, [1], [], [7]), (12, [], [101], [8])])
    lf = listens(
        [
            (1, 10, at(0, 12)),
            (2, 10, at(3, 23)),
            (1, 10, at(4)),
            (3, 10, at(7)),
            (1, 10, at(9, 18)),
            (1, 11, at(6)),
            (2, 11, at(6, 1)),
        ]
    ).lazy()
    out = track_features(lf, cat, END, recent_days=3).sort("track_id")
    # window ends at(10); last 3 days = [at(7), at(10)); the 3 days before = [at(4), at(7))
    # track 10: 5 listens; recent at(7), at(9,18) = 2; previous at(4) = 1 (at(3,23) is in neither)
    #           trend (2+1)/(1+1) = 1.5; first listen at(0,12) -> 9.5 days before the end
    # track 11: 2 listens, both at day 6: recent 0, previous 2 -> trend 1/3; age 4 days
    # track 12: never heard: 0 listens, trend (0+1)/(0+1) = 1, null age
    assert out["track_id"].to_list() == [10, 11, 12]
    assert out["track_listens"].to_list() == [5.0, 2.0, 0.0]
    assert out["track_listens_recent"].to_list() == [2.0, 0.0, 0.0]
    assert out["track_trend"].to_list() == pytest.approx([1.5, 1 / 3, 1.0])
    age = out["track_age_days"].to_list()
    assert age[:2] == pytest.approx([9.5, 4.0]) and age[2] is None
    assert out["track_artists"].to_list() == [2, 1, 0]
    assert out["track_albums"].to_list() == [1, 0, 1]
    assert out["track_genres"].to_list() == [3, 1, 1]


def test_user_features_activity_concentration_and_genre_shares():
    track_genres = pl.DataFrame(
        {"track_id": [10, 10, 11, 13], "genre": [7, 8, 7, 9]},
        schema={"track_id": pl.Int32, "genre": pl.Int32},
    )
    track_artists = pl.DataFrame(
        {"track_id": [10, 11, 11, 12], "artist": [1, 1, 2, 3]},
        schema={"track_id": pl.Int32, "artist": pl.Int32},
    )
    history = listens(
        [
            (1, 10, at(1, 10)),
            (1, 10, at(1, 20)),
            (1, 11, at(4, 8)),
            (1, 12, at(8, 12)),
            (1, 12, at(8, 13)),
            (1, 12, at(8, 14)),
            (1, 12, at(8, 15)),
            (1, 13, at(9, 6)),
            (2, 12, at(2)),
        ]
    )
    users, user_genres, user_artists = user_features(history, track_genres, track_artists, END)
    u = {r["user_id"]: r for r in users.to_dicts()}
    # user 1: 8 listens on 4 dates (days 1, 4, 8, 9); last at(9,6) -> 18 h = 0.75 days before at(10)
    assert u[1]["user_listens"] == 8 and u[1]["user_active_days"] == 4
    assert u[1]["user_days_since_last"] == pytest.approx(0.75)
    # genre listens: 7 <- 10,10,11 = 3; 8 <- 10,10 = 2; 9 <- 13 = 1 (track 12 has no genre)
    # top share 3/8 of the listens; HHI on the 6 genre listens: (3/6)^2 + (2/6)^2 + (1/6)^2 = 14/36
    assert u[1]["user_top_genre_share"] == pytest.approx(3 / 8)
    assert u[1]["user_genre_hhi"] == pytest.approx(14 / 36)
    # artist listens: 1 <- 10,10,11 = 3; 2 <- 11 = 1; 3 <- 12 x4 = 4 -> top share 4/8
    assert u[1]["user_top_artist_share"] == pytest.approx(0.5)
    # user 2: one listen at(2) of a genre-less track by artist 3
    assert (u[2]["user_listens"], u[2]["user_active_days"]) == (1, 1)
    assert u[2]["user_days_since_last"] == pytest.approx(8.0)
    assert u[2]["user_top_genre_share"] is None and u[2]["user_genre_hhi"] is None
    assert u[2]["user_top_artist_share"] == pytest.approx(1.0)
    shares = {(r["user_id"], r["genre"]): r["genre_share"] for r in user_genres.to_dicts()}
    assert shares == {
        (1, 7): pytest.approx(3 / 8),
        (1, 8): pytest.approx(2 / 8),
        (1, 9): pytest.approx(1 / 8),
    }
    artists = {(r["user_id"], r["artist"]): r["artist_listens"] for r in user_artists.to_dicts()}
    assert artists == {(1, 1): 3.0, (1, 2): 1.0, (1, 3): 4.0, (2, 3): 1.0}


# ----------------------------------------------------------------------------- user x track features
FEATURE_TRACKS = [  # (track, artists, albums, genres)
    (10, [1], [100], [7, 8]),
    (11, [1, 2], [101], [7]),
    (12, [3], [100], [9]),
    (20, [1, 3], [100], [7, 9]),
    (21, [5], [105], [5]),
    (22, [2], [], [8]),
]


def test_add_features_user_track_affinities_and_i2i_support(tmp_path):
    cat = catalogue(FEATURE_TRACKS)
    # user 1 listens 10, 11, 12, 10 (days 1..4): last 2 listens are 10 (day 4) and 12 (day 3)
    # user 2 listens 22 once
    history = listens([(1, 10, at(1)), (1, 11, at(2)), (1, 12, at(3)), (1, 10, at(4)), (2, 22, at(5))])
    similar = pl.DataFrame(
        {
            "track_id": [10, 12, 11, 10, 22, 12],
            "similar_track_id": [20, 20, 20, 22, 21, 99],
            "score": [0.5, 0.25, 0.9, 0.4, 0.3, 0.7],
        },
        schema={"track_id": pl.Int32, "similar_track_id": pl.Int32, "score": pl.Float32},
    )
    builder = FeatureBuilder(
        config=RankingConfig(candidates={"personal_als": 10}, i2i_last_k=2),
        listens=history.lazy(),
        window_end=END,
        candidates_dir=tmp_path,
        tracks=cat,
        track_table=track_features(history.lazy(), cat, END, 7),
        similar=similar,
        content=None,
        audio=None,
    )
    rows = pairs([2, 1, 1, 2, 1], [21, 22, 20, 20, 21], personal_als_score=[0.1, 0.2, 0.3, 0.4, 0.5])
    out = builder.add_features(rows, history)
    assert out.select("user_id", "track_id").rows() == [(1, 20), (1, 21), (1, 22), (2, 20), (2, 21)]
    assert out.height == rows.height
    got = by_pair(
        out,
        "genre_affinity",
        "artist_listens",
        "album_listens",
        "artist_share",
        "i2i_support",
        "i2i_similarity",
    )
    # user 1 (4 listens): genre shares 7: 3/4 (10,11,10), 8: 2/4 (10,10), 9: 1/4 (12)
    #   artist listens 1: 3, 2: 1, 3: 1; album listens 100: 3 (10,12,10), 101: 1
    # (1,20) genres 7+9 = 1.0; artists 1+3 = 4 -> share 4/4; album 100: 3;
    #        i2i from the last 2 listens (10, 12): 10->20 (0.5) and 12->20 (0.25): support 2, sum 0.75
    #        (11->20 does not count: 11 is not among the last 2)
    # (1,21) nothing in common: all 0
    # (1,22) genre 8 = 0.5; artist 2 = 1 -> share 1/4; no album; i2i 10->22: 1, 0.4
    # user 2 (one listen of 22: genre 8, artist 2): (2,20) nothing; (2,21) only i2i 22->21: 1, 0.3
    assert got == {
        (1, 20): (pytest.approx(1.0), 4.0, 3.0, pytest.approx(1.0), 2.0, pytest.approx(0.75)),
        (1, 21): (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (1, 22): (pytest.approx(0.5), 1.0, 0.0, pytest.approx(0.25), 1.0, pytest.approx(0.4)),
        (2, 20): (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (2, 21): (0.0, 0.0, 0.0, 0.0, 1.0, pytest.approx(0.3)),
    }
    # the candidate columns ride along; track and user features are joined by key
    assert by_pair(out, "personal_als_score")[(2, 21)] == (pytest.approx(0.1),)
    assert by_pair(out, "track_listens", "user_listens") == {
        (1, 20): (0.0, 4.0),
        (1, 21): (0.0, 4.0),
        (1, 22): (1.0, 4.0),
        (2, 20): (0.0, 1.0),
        (2, 21): (0.0, 1.0),
    }


# ----------------------------------------------------------------------------- merging candidate lists
def write_lists(folder) -> None:
    user_list = {"user_id": pl.Int32, "track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int32}
    pl.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3],
            "track_id": [20, 21, 22, 21, 23, 20],
            "score": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
            "rank": [1, 2, 3, 1, 2, 1],
        },
        schema=user_list,
    ).write_parquet(folder / "personal_als.parquet")
    pl.DataFrame(
        {
            "user_id": [1, 1, 2, 3],
            "track_id": [21, 24, 25, 26],
            "score": [2.0, 1.0, 3.0, 1.0],
            "rank": [1, 2, 1, 1],
        },
        schema=user_list,
    ).write_parquet(folder / "i2i_history.parquet")
    pl.DataFrame(
        {"user_id": [1, 2], "track_id": [40, 41], "score": [1.0, 1.0], "rank": [1, 1]}, schema=user_list
    ).write_parquet(folder / "content.parquet")
    pl.DataFrame(
        {"track_id": [30, 10, 21, 31], "score": [100.0, 90.0, 80.0, 70.0], "rank": [1, 2, 3, 4]},
        schema={"track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int32},
    ).write_parquet(folder / "top_popular.parquet")


def test_merge_candidates_union_of_top_lists(tmp_path):
    write_lists(tmp_path)
    users = pl.DataFrame({"user_id": [1, 2]}, schema={"user_id": pl.Int32})
    heard = listens([(1, 10, at(1)), (2, 30, at(1))])  # popular tracks 10 and 30 already heard
    counts = {"personal_als": 2, "i2i_history": 5, "top_popular": 3, "content": 0, "audio": 10}
    out = merge_candidates(tmp_path, counts, users, heard)
    # content has count 0, audio has no file: neither shows up
    assert not [c for c in out.columns if c.startswith(("content", "audio"))]
    # ALS top 2: u1 20 (r1), 21 (r2) [22 is rank 3]; u2 21 (r1), 23 (r2); u3 is outside the batch
    # i2i top 5: u1 21 (r1), 24 (r2); u2 25 (r1)
    # popular top 3 = 30, 10, 21 [31 is rank 4], minus heard: u1 30, 21; u2 10, 21
    got = by_pair(out, "personal_als_rank", "i2i_history_rank", "top_popular_rank", "n_generators")
    assert got == {
        (1, 20): (1, None, None, 1),
        (1, 21): (2, 1, 3, 3),
        (1, 24): (None, 2, None, 1),
        (1, 30): (None, None, 1, 1),
        (2, 21): (1, None, 3, 2),
        (2, 23): (2, None, None, 1),
        (2, 25): (None, 1, None, 1),
        (2, 10): (None, None, 2, 1),
    }
    scores = by_pair(out, "personal_als_score", "i2i_history_score", "top_popular_score")
    assert scores[(1, 21)] == (pytest.approx(0.8), 2.0, 80.0)
    assert scores[(2, 25)] == (None, 3.0, None)


def test_merge_candidates_without_lists_fails_clearly(tmp_path):
    users = pl.DataFrame({"user_id": [1]}, schema={"user_id": pl.Int32})
    with pytest.raises(FileNotFoundError, match="no candidate lists"):
        merge_candidates(tmp_path, {"personal_als": 5, "top_popular": 5}, users, listens([]))
    write_lists(tmp_path)  # files exist now, but the only requested generator has count 0
    with pytest.raises(FileNotFoundError, match="no candidate lists"):
        merge_candidates(tmp_path, {"personal_als": 0}, users, listens([]))


# ----------------------------------------------------------------------------- content similarity
def test_candidate_files_skips_zero_counts_and_missing_lists(tmp_path):
    write_lists(tmp_path)
    counts = {"personal_als": 2, "i2i_history": 0, "audio": 5, "top_popular": 3}  # no audio list
    assert candidate_files(tmp_path, counts) == [
        ("personal_als", 2, tmp_path / "personal_als.parquet"),
        ("top_popular", 3, tmp_path / "top_popular.parquet"),
    ]


def test_content_similarity_equals_dense_cosine():
    cat = catalogue(
        [
            (10, [1], [100], [7]),
            (11, [1, 2], [101], [7, 8]),
            (12, [3], [102], [8]),
            (13, [4], [103], [9]),
            (14, [2], [101], [7]),
            (15, [], [], []),
        ]
    )
    history = listens(
        [(1, 10, at(1)), (1, 11, at(2)), (1, 10, at(3)), (2, 13, at(1))], weights=[1.0, 2.0, 0.5, 3.0]
    )
    users, tracks = [1, 1, 1, 1, 1, 1, 2, 2, 3], [10, 11, 12, 13, 14, 15, 13, 10, 10]
    got = ContentSimilarity(cat)(history, pairs(users, tracks))
    ids = np.array([10, 11, 12, 13, 14, 15], dtype=np.int32)
    dense = tfidf_vectors(cat, ids)[0].toarray().astype(np.float64)
    row = {int(t): i for i, t in enumerate(ids)}
    # profile = L2-normalised weighted sum of the user's track vectors (repeat listens add up)
    profile = {1: 1.5 * dense[row[10]] + 2.0 * dense[row[11]], 2: 3.0 * dense[row[13]]}
    profile = {u: p / np.linalg.norm(p) for u, p in profile.items()}
    # user 3 has no listens: 0
    want = [profile[u] @ dense[row[t]] if u in profile else 0.0 for u, t in zip(users, tracks, strict=True)]
    assert got == pytest.approx(want, abs=1e-5)
    assert got[0] > 0.5 and got[3] == 0.0 and got[5] == 0.0  # shares tokens / shares none / no tokens
    assert got[6] == pytest.approx(1.0, abs=1e-5)  # user 2 only heard track 13


# ----------------------------------------------------------------------------- labels and sampling
def candidate_rows() -> pl.DataFrame:
    # user 1: tracks 1..10, user 2: 1..5, user 3: 1..8; rows interleaved (not sorted by user)
    keys = [(1, t) for t in range(1, 11)] + [(2, t) for t in range(1, 6)] + [(3, t) for t in range(1, 9)]
    order = np.random.default_rng(0).permutation(len(keys))
    keys = [keys[i] for i in order]
    return pairs([u for u, _ in keys], [t for _, t in keys], f=[float(t) for _, t in keys])


def test_label_rows_and_sampling():
    rows = candidate_rows()
    targets = pairs([1, 1, 1, 3, 1, 4], [3, 7, 3, 2, 99, 1])  # duplicate (1,3); (1,99), (4,1) not candidates
    labelled = label_rows(rows, targets)
    assert labelled.height == rows.height
    assert sorted(labelled.filter(pl.col("target") == 1).select("user_id", "track_id").rows()) == [
        (1, 3),
        (1, 7),
        (3, 2),
    ]
    sampled, report = sample_training_rows(labelled, negatives_per_user=3, seed=7)
    # user 2 has no positive: dropped; users 1 and 3 keep their positives and 3 negatives each
    assert (report.users, report.users_without_positive) == (3, 1)
    assert (report.rows, report.positives) == (23, 3)
    assert (report.sampled_rows, report.sampled_positives) == (2 + 3 + 1 + 3, 3)
    assert report.positive_rate == pytest.approx(3 / 23)
    assert report.sampled_positive_rate == pytest.approx(3 / 9)
    assert set(sampled["user_id"].to_list()) == {1, 3}
    per_user = sampled.group_by("user_id").agg(
        pl.col("target").sum().alias("pos"), (1 - pl.col("target")).sum().alias("neg")
    )
    assert sorted(per_user.rows()) == [(1, 2, 3), (3, 1, 3)]
    keys = sampled.select("user_id", "track_id").rows()
    assert keys == sorted(keys)
    runs = sampled["user_id"].rle()  # each user one contiguous run
    assert runs.len() == sampled["user_id"].n_unique() == 2
    # the same seed gives the same rows, whatever the input order; another seed other negatives
    again, _ = sample_training_rows(labelled.reverse(), negatives_per_user=3, seed=7)
    assert_frame_equal(sampled, again)
    draws = {tuple(sample_training_rows(labelled, 3, seed=s)[0]["track_id"].to_list()) for s in range(6)}
    assert len(draws) > 1
    # more negatives asked than exist: every row of the kept users
    everything, _ = sample_training_rows(labelled, negatives_per_user=100, seed=7)
    assert everything.height == 10 + 8


def test_sampling_reports_add_field_by_field():
    a, b = SamplingReport(1, 2, 3, 4, 5, 6), SamplingReport(10, 20, 30, 40, 50, 60)
    assert a.add(b) == SamplingReport(11, 22, 33, 44, 55, 66)
    assert SamplingReport().add(a) == a


def test_split_users_disjoint_share_and_seeded():
    users = np.repeat(np.arange(100, 200), 3)  # 100 users, repeated as in row-level input
    train, valid = split_users(users, 0.2, seed=1)
    assert len(valid) == 20 and len(train) == 80
    assert not set(train) & set(valid)
    assert sorted(set(train) | set(valid)) == list(range(100, 200))
    assert (np.diff(train) > 0).all() and (np.diff(valid) > 0).all()
    train2, valid2 = split_users(users[::-1], 0.2, seed=1)
    assert (train2 == train).all() and (valid2 == valid).all()
    assert any((split_users(users, 0.2, seed=s)[1] != valid).any() for s in range(2, 6))
    # two users: one each side even though 0.2 * 2 rounds to 0
    assert [len(x) for x in split_users(np.array([5, 6]), 0.2, seed=0)] == [1, 1]


def test_split_users_keeps_a_training_user():
    train, valid = split_users(np.array([1, 2, 3]), 0.9, seed=0)
    assert len(train) >= 1 and len(valid) >= 1


# ----------------------------------------------------------------------------- the ranker
def synthetic_rows(n_users: int, n_candidates: int, seed: int) -> pl.DataFrame:
    """Target 1 for each user's candidate of largest ``signal``, and for one other random candidate."""
    rng = np.random.default_rng(seed)
    signal = rng.random((n_users, n_candidates))
    target = np.zeros((n_users, n_candidates), dtype=np.int8)
    best = signal.argmax(1)
    target[np.arange(n_users), best] = 1
    other = (best + rng.integers(1, n_candidates, n_users)) % n_candidates
    target[np.arange(n_users), other] = 1
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.arange(n_users, dtype=np.int32), n_candidates),
            "track_id": np.tile(np.arange(1000, 1000 + n_candidates, dtype=np.int32), n_users),
            "signal": signal.ravel().astype(np.float32),
            "noise": rng.normal(size=n_users * n_candidates).astype(np.float32),
            "target": target.ravel(),
        }
    )


def test_top_n_by_score_orders_breaks_ties_and_cuts():
    rows = pairs([1, 1, 1, 1, 2, 2], [8, 6, 7, 5, 1, 2])
    top = top_n_by_score(rows, np.array([0.5, 0.9, 0.9, 0.1, 0.2, 0.3]), n=3)
    # user 1: 6 and 7 tie at 0.9 (lower id first), then 8; 5 is cut. user 2 has only two rows
    assert top.select("user_id", "track_id", "rank").rows() == [
        (1, 6, 1),
        (1, 7, 2),
        (1, 8, 3),
        (2, 2, 1),
        (2, 1, 2),
    ]
    assert set(top["source"]) == {"final"}


@pytest.mark.parametrize("loss", ["YetiRank", "Logloss"])
def test_fit_ranker_learns_the_signal_and_round_trips(tmp_path, loss):
    config = RankingConfig(loss=loss, iterations=30, early_stopping_rounds=10, threads=1)
    ranker = fit_ranker(synthetic_rows(60, 20, seed=0), config, seed=3)
    assert (ranker.train_users, ranker.validation_users) == (48, 12)  # 20% of 60 held out
    fresh = synthetic_rows(40, 20, seed=1)
    scores = ranker.predict(fresh)
    # the candidate of largest signal is a positive for every user: it should come first. By
    # chance (20 candidates) it would be first for 5% of the users and in the top 3 for 15%
    top = top_n_by_score(fresh, scores, n=5)
    best_track = 1000 + fresh["signal"].to_numpy().reshape(40, 20).argmax(1)
    best = pl.DataFrame({"user_id": np.arange(40), "track_id": best_track}).cast(pl.Int32)
    rank_of_best = best.join(top, on=["user_id", "track_id"], how="left")["rank"].fill_null(99).to_numpy()
    assert (rank_of_best == 1).mean() >= 0.5 and (rank_of_best <= 3).mean() >= 0.75
    assert (
        top.group_by("user_id").agg(pl.col("rank").sort()).get_column("rank").to_list()
        == [[1, 2, 3, 4, 5]] * 40
    )
    assert ranker.save(tmp_path).is_file()
    loaded = TrainedRanker.load(tmp_path)
    assert loaded.features == ranker.features == ["signal", "noise"] and loaded.loss == loss
    assert loaded.predict(fresh) == pytest.approx(scores, abs=1e-6)
    # float32 numpy input with nulls as NaN scores exactly as the pandas frame CatBoost also takes
    noise = pl.col("noise")
    holes = fresh.with_columns(pl.when(noise > noise.median()).then(None).otherwise(noise).alias("noise"))
    assert holes["noise"].null_count() > 0
    as_pandas = ranker.model.predict(
        holes.select(ranker.features).to_pandas(),
        **({"prediction_type": "RawFormulaVal"} if loss == "Logloss" else {}),
    )
    assert np.array_equal(ranker.predict(holes), as_pandas)
    assert set(ranker.curves["set"]) == {"learn", "validation"}
    assert set(ranker.importance["feature"]) == {"signal", "noise"}
    importance = dict(ranker.importance.select("feature", "importance").rows())
    assert importance["signal"] > importance["noise"]


def test_fit_ranker_needs_two_users():
    with pytest.raises(ValueError, match="at least two users"):
        fit_ranker(synthetic_rows(1, 5, seed=0), RankingConfig(iterations=5, threads=1), seed=0)


# ----------------------------------------------------------------------------- leakage
def test_window_listens_is_strictly_before_the_end():
    end = at(10)
    lf = listens(
        [(1, 10, end - dt.timedelta(microseconds=1)), (1, 11, end), (1, 12, at(12)), (2, 13, at(0))]
    ).lazy()
    assert sorted(before(lf, END).collect()["track_id"].to_list()) == [10, 13]


def write_run(root, interactions: pl.DataFrame) -> RunPaths:
    """A run folder with the files ``FeatureBuilder.for_window(..., "history")`` reads."""
    paths = RunPaths(root, "toy")
    paths.data.mkdir(parents=True)
    interactions.write_parquet(paths.interactions)
    # the catalogue holds every track the lists name (as the candidates stage guarantees)
    unlisted = [(t, [], [], []) for t in (23, 24, 25, 26, 30, 31, 40, 41)]
    catalogue(FEATURE_TRACKS + unlisted).write_parquet(paths.tracks)
    paths.split.write_text(json.dumps({"label_start": END.isoformat(), "test_start": "2022-03-14"}))
    folder = paths.candidates / "history"
    folder.mkdir(parents=True)
    write_lists(folder)
    pl.DataFrame(
        {"track_id": [10, 12, 22], "similar_track_id": [20, 21, 24], "score": [0.5, 0.2, 0.3]},
        schema={"track_id": pl.Int32, "similar_track_id": pl.Int32, "score": pl.Float32},
    ).write_parquet(folder / "similar.parquet")
    return paths


def test_features_ignore_listens_at_or_after_the_window_end(tmp_path):
    history = listens([(1, 10, at(1)), (1, 11, at(5)), (1, 12, at(9, 20)), (2, 22, at(2)), (2, 10, at(8))])
    rng = np.random.default_rng(0)
    n = 200  # listens of the labels window and later, by known and new users, of every track
    future = listens(
        [
            (
                int(rng.choice([1, 2, 3])),
                int(rng.choice([10, 11, 12, 20, 21, 22, 30])),
                at(10 + float(rng.integers(0, 5)), float(rng.integers(0, 24))),
            )
            for _ in range(n)
        ]
        + [(1, 30, at(10)), (2, 21, at(10))]
    )  # exactly at the end
    profile = Profile(
        ranking=RankingConfig(
            candidates={"personal_als": 2, "i2i_history": 5, "top_popular": 3}, recent_days=3, i2i_last_k=2
        )
    )
    clean = FeatureBuilder.for_window(profile, write_run(tmp_path / "clean", history), "history")
    leaky = FeatureBuilder.for_window(
        profile, write_run(tmp_path / "leaky", pl.concat([history, future])), "history"
    )
    assert clean.window_end == leaky.window_end == END
    assert clean.window_users().tolist() == leaky.window_users().tolist() == [1, 2]
    assert_frame_equal(clean.track_table, leaky.track_table)
    rows = clean.batch(np.array([1, 2]))
    assert_frame_equal(rows, leaky.batch(np.array([1, 2])))
    assert rows.height > 0 and rows["i2i_support"].sum() > 0
    # the same builder over the unfiltered listens differs: the comparison above can fail
    everything = pl.scan_parquet(tmp_path / "leaky" / "data" / "toy" / "interactions.parquet")
    unfiltered = dataclasses.replace(
        leaky, listens=everything, track_table=track_features(everything, leaky.tracks, END, 3)
    )
    assert not rows.equals(unfiltered.batch(np.array([1, 2])))
    assert not clean.track_table.equals(unfiltered.track_table)


# ----------------------------------------------------------------------------- scoring
class AlsScore:
    """A stand-in ranker: the ALS score is the ranking score."""

    def predict(self, rows: pl.DataFrame) -> np.ndarray:
        return rows["personal_als_score"].to_numpy()


def scoring_run(root) -> RunPaths:
    """Users 1, 2 warm (listens before the test window at(13)), user 3 first seen in it.

    Test-window listens: user 1 hears 20 three times and 21 once, user 2 hears 22: three
    distinct (user, track) pairs in five listens.
    """
    paths = RunPaths(root, "toy")
    paths.data.mkdir(parents=True)
    listens(
        [
            (1, 10, at(1)),
            (2, 11, at(2)),
            (1, 20, at(13)),
            (1, 20, at(13, 1)),
            (1, 20, at(14)),
            (1, 21, at(14, 2)),
            (2, 22, at(13, 5)),
            (3, 10, at(14)),
        ]
    ).write_parquet(paths.interactions)
    catalogue([(t, [], [], []) for t in (10, 11, 20, 21, 22, 23, 24, 25, 26, 30)]).write_parquet(paths.tracks)
    paths.split.write_text(json.dumps({"label_start": END.isoformat(), "test_start": "2022-03-14"}))
    paths.candidates.mkdir(parents=True)
    pl.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 2],
            "track_id": [20, 23, 24, 25, 26, 22],
            "score": [0.9, 0.8, 0.7, 0.9, 0.8, 0.7],
            "rank": [1, 2, 3, 1, 2, 3],
        },
        schema={"user_id": pl.Int32, "track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int32},
    ).write_parquet(paths.candidates / "personal_als.parquet")
    pl.DataFrame(
        {"track_id": [30], "score": [5.0], "rank": [1]},
        schema={"track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int32},
    ).write_parquet(paths.candidates / "top_popular.parquet")
    return paths


SCORING = Profile(ranking=RankingConfig(candidates={"personal_als": 3}, n=2))


def test_score_users_writes_ranked_lists_and_top_popular_for_cold_users(tmp_path):
    paths = scoring_run(tmp_path)
    result = score_users(SCORING, paths, AlsScore())
    # warm users' top 2 by ALS score; cold user 3 gets the top-popular list
    recs = pl.read_parquet(paths.recommendations).sort("user_id", "rank")
    assert recs.select("user_id", "track_id", "rank", "source").rows() == [
        (1, 20, 1, "final"),
        (1, 23, 2, "final"),
        (2, 25, 1, "final"),
        (2, 26, 2, "final"),
        (3, 30, 1, "top_popular"),
    ]
    assert (result["warm_users"], result["cold_users"]) == (2, 1)
    assert (result["candidate_rows"], result["rows"]) == (6, 5)


def test_score_users_leaves_out_tracks_disliked_before_the_test_window(tmp_path):
    paths = scoring_run(tmp_path)
    # user 1 disliked 23 before the test window, user 2 disliked 25 inside it (not known yet)
    pl.DataFrame(
        {"user_id": [1, 2], "track_id": [23, 25], "disliked_at": [at(5), at(14)]},
        schema={"user_id": pl.Int32, "track_id": pl.Int32, "disliked_at": pl.Datetime("ns")},
    ).write_parquet(paths.data / "disliked_pairs.parquet")
    result = score_users(SCORING, paths, AlsScore())
    recs = pl.read_parquet(paths.recommendations).filter(pl.col("source") == "final").sort("user_id", "rank")
    assert recs.select("user_id", "track_id").rows() == [(1, 20), (1, 24), (2, 25), (2, 26)]
    assert result["disliked_candidates_removed"] == 1 and result["candidate_rows"] == 5


def test_score_users_recall_counts_distinct_pairs(tmp_path):
    result = score_users(SCORING, scoring_run(tmp_path), AlsScore())
    # distinct test pairs of warm users: (1,20), (1,21), (2,22). Candidates hold (1,20) and (2,22);
    # the top 2 (u1: 20, 23; u2: 25, 26) only (1,20), and the top 10 is the top 2 here (n = 2).
    # Same convention as training_rows and candidate_recall (unique pairs): 2/3, 1/3, 1/3
    assert result["recall"] == {
        "candidates": pytest.approx(2 / 3),
        "top_10": pytest.approx(1 / 3),
        "top_2": pytest.approx(1 / 3),
    }


def test_explain_user_gives_each_generators_rank_of_the_final_list(tmp_path):
    paths = scoring_run(tmp_path)
    score_users(SCORING, paths, AlsScore())
    # top_popular is not among SCORING's candidates: only personal_als gets a column
    assert explain_user(SCORING, paths, 1).select("rank", "track_id", "personal_als").rows() == [
        (1, 20, 1),
        (2, 23, 2),
    ]
    both = Profile(ranking=RankingConfig(candidates={"personal_als": 1, "top_popular": 1, "content": 5}))
    assert explain_user(both, paths, 2).select("track_id", "personal_als", "top_popular").rows() == [
        (25, 1, None),
        (26, None, None),
    ]


def test_typical_user_is_the_median_history_before_the_test_window(tmp_path):
    paths = RunPaths(tmp_path, "toy")
    paths.data.mkdir(parents=True)
    # before test_start (at(13)): user 1 has 1 listen, user 2 has 3, user 3 has 2 (and 3 in the test window)
    listens(
        [
            (1, 10, at(1)),
            (2, 10, at(1)),
            (2, 11, at(5)),
            (2, 12, at(5)),
            (3, 10, at(2)),
            (3, 11, at(3)),
            (3, 12, at(13)),
            (3, 20, at(13)),
            (3, 21, at(14)),
        ]
    ).write_parquet(paths.interactions)
    paths.split.write_text(json.dumps({"label_start": END.isoformat(), "test_start": "2022-03-14"}))
    user, n_listens, latest = typical_user(paths, latest=2)
    assert (user, n_listens) == (3, 2)
    assert latest.columns == ["started_at", "track_id"] and latest["track_id"].to_list() == [11, 10]
    # equal sizes order by user id (1, 2, then 4); equal started_at by track_seq, the later first
    listens(
        [
            (1, 10, at(1)),
            (1, 11, at(2)),
            (2, 11, at(5)),
            (2, 12, at(5)),
            (4, 10, at(1)),
            (4, 11, at(1)),
            (4, 12, at(1)),
        ]
    ).write_parquet(paths.interactions)
    user, n_listens, latest = typical_user(paths)
    assert (user, n_listens) == (2, 2) and latest["track_id"].to_list() == [12, 11]


def test_candidates_outside_the_catalogue_are_refused(tmp_path):
    builder = FeatureBuilder(
        RankingConfig(),
        listens([(1, 10, at(1))]).lazy(),
        END,
        tmp_path,
        catalogue(FEATURE_TRACKS),
        track_features(listens([(1, 10, at(1))]).lazy(), catalogue(FEATURE_TRACKS), END, 3),
        similar=None,
    )
    with pytest.raises(ValueError, match="missing from the catalogue"):
        builder.add_features(pairs([1], [99]), listens([(1, 10, at(1))]))


def test_final_against_best_reads_the_intervals():
    from musicrec.ranking.stage import final_against_best

    def ndcg(final: tuple[float, float, float]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "model": ["final", "personal_als", "random"],
                "value": [final[0], 0.10, 0.0],
                "lower": [final[1], 0.09, 0.0],
                "upper": [final[2], 0.11, 0.0],
            }
        )

    assert "beats the best single generator, **personal_als**" in final_against_best(ndcg((0.2, 0.19, 0.21)))
    assert "is below" in final_against_best(ndcg((0.05, 0.04, 0.06)))
    assert "is within the interval of" in final_against_best(ndcg((0.105, 0.1, 0.115)))


# ----------------------------------------------------------------------------- fast paths of scoring
@pytest.mark.parametrize("ids", [np.array([0, 2, 3, 7, 8]), np.array([-5, 3, 10**9, 2 * 10**9])])
def test_id_positions_match_a_binary_search(ids):
    from musicrec.candidates.base import IdPositions, index_of

    positions = IdPositions(ids)
    assert (positions.table is not None) == (ids[0] >= 0)  # a dense table only for compact ids
    wanted = np.concatenate([ids, ids[::-1], [-7, 1, 4, 9, 10**9 + 1, 3 * 10**9, -5]])
    assert positions(wanted).tolist() == index_of(ids, wanted).tolist()


def test_unique_inverse_matches_numpy():
    from musicrec.ranking.features import _unique_inverse

    keys = np.random.default_rng(0).integers(-50, 50, 1000).astype(np.int64) * (1 << 32)
    unique, inverse = _unique_inverse(keys)
    expected, expected_inverse = np.unique(keys, return_inverse=True)
    assert unique.tolist() == expected.tolist() and inverse.tolist() == expected_inverse.tolist()
    assert [len(a) for a in _unique_inverse(keys[:0])] == [0, 0]


def test_pair_values_reads_stored_cells_and_zero_elsewhere():
    import scipy.sparse as sp

    from musicrec.ranking.features import pair_values

    dense = np.zeros((3, 5), dtype=np.float32)
    dense[0, 1], dense[0, 4], dense[2, 0] = 1.5, 2.0, 3.25
    rows, cols = np.array([0, 0, 0, 1, 2, 2]), np.array([1, 4, 2, 3, 0, 4])
    assert pair_values(sp.csr_array(dense), rows, cols).tolist() == dense[rows, cols].tolist()
    assert pair_values(sp.csr_array((3, 5), dtype=np.float32), rows, cols).tolist() == [0.0] * 6


def test_score_users_gives_the_same_lists_whatever_the_batch_size(tmp_path):
    # batches of one user are built ahead of the one being ranked: the same rows, in order
    paths = scoring_run(tmp_path)
    score_users(SCORING, paths, AlsScore())
    whole = pl.read_parquet(paths.recommendations)
    one_by_one = SCORING.model_copy(update={"ranking": SCORING.ranking.model_copy(update={"batch_users": 1})})
    result = score_users(one_by_one, paths, AlsScore())
    assert_frame_equal(pl.read_parquet(paths.recommendations), whole)
    assert result["candidate_rows"] == 6


def test_prefetched_yields_every_chunk_in_order():
    from musicrec.ranking.stage import prefetched

    chunks = [np.array([i, i + 1]) for i in range(0, 10, 2)]
    got = list(prefetched(lambda c: pl.DataFrame({"x": c * 10}), chunks))
    assert [c.tolist() for c, _ in got] == [c.tolist() for c in chunks]
    assert [f["x"].to_list() for _, f in got] == [(c * 10).tolist() for c in chunks]
    assert list(prefetched(lambda c: pl.DataFrame(), [])) == []


def test_compare_on_test_samples_users_when_asked(tmp_path):
    from musicrec.ranking.stage import compare_on_test

    paths = scoring_run(tmp_path)
    score_users(SCORING, paths, AlsScore())
    everyone = compare_on_test(paths, k=2, n_boot=10, max_users=None)
    assert set(everyone["users"]) == {2}  # warm users 1 and 2 have test listens
    one = compare_on_test(paths, k=2, n_boot=10, seed=3, max_users=1)
    assert set(one["users"]) == {1}
    assert one.equals(compare_on_test(paths, k=2, n_boot=10, seed=3, max_users=1))  # seeded
    # one user's lists only. User 1 hears 20 and 21, the final top 2 is 20, 23: NDCG@2 = 1 / (1 + 1/log2 3);
    # user 2 hears 22, gets 25, 26: 0. Both users: the mean of the two
    final = one.filter((pl.col("model") == "final") & (pl.col("metric") == "ndcg"))["value"].item()
    assert round(final, 6) in (0.0, round(1 / (1 + 1 / np.log2(3)), 6))
    both = everyone.filter((pl.col("model") == "final") & (pl.col("metric") == "ndcg"))["value"].item()
    assert both == pytest.approx(1 / (1 + 1 / np.log2(3)) / 2)
