"""The content (TF-IDF) and audio (autoencoder) candidate generators."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from musicrec.candidates.audio import AudioGenerator
from musicrec.candidates.base import FitData, top_n
from musicrec.candidates.content import ContentGenerator, csr_top_n
from musicrec.config import AudioConfig, ContentConfig, load_profile
from musicrec.schema import C
from musicrec.sources.synthetic import generate


# ------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> FitData:
    out = tmp_path_factory.mktemp("tiny")
    profile = load_profile("params/tiny.yaml")
    generate(profile.data.synthetic, profile.seed, out, progress=False)
    return FitData.build(
        pl.read_parquet(out / "interactions.parquet"),
        pl.read_parquet(out / "tracks.parquet"),
        pl.read_parquet(out / "track_features.parquet"),
    )


def toy_data(
    listens: dict[int, list[int]],
    genres: list[list[int]],
    artists: list[list[int]],
    albums: list[list[int]],
    features: np.ndarray | None = None,
) -> FitData:
    """FitData of hand-made tracks 0..T-1 (ids 100+i) and users listening in the given order."""
    n = len(genres)
    tracks = pl.DataFrame(
        {C.track_id: np.arange(n) + 100, C.albums: albums, C.artists: artists, C.genres: genres},
        schema={
            C.track_id: pl.Int32,
            C.albums: pl.List(pl.Int32),
            C.artists: pl.List(pl.Int32),
            C.genres: pl.List(pl.Int32),
        },
    )
    rows = [
        (u, t + 100, dt.datetime(2022, 1, 1) + dt.timedelta(days=i), i + 1, 1.0)
        for u, ts in listens.items()
        for i, t in enumerate(ts)
    ]
    interactions = pl.DataFrame(
        rows,
        orient="row",
        schema={
            C.user_id: pl.Int32,
            C.track_id: pl.Int32,
            C.started_at: pl.Datetime("ns"),
            C.track_seq: pl.Int16,
            C.weight: pl.Float32,
        },
    )
    track_features = None
    if features is not None:
        track_features = pl.DataFrame({C.track_id: np.arange(len(features)) + 100}).cast(pl.Int32)
        track_features = track_features.with_columns(
            [pl.Series(f"f{j}", features[:, j].astype(np.float32)) for j in range(features.shape[1])]
        )
    return FitData.build(interactions, tracks, track_features)


def check_lists(cols: np.ndarray, scores: np.ndarray, n: int, n_tracks: int) -> None:
    """Shape, valid columns, no repeats, best first, padding -1 / -inf at the end only."""
    assert cols.shape == scores.shape and cols.shape[1] == n
    assert ((cols >= -1) & (cols < n_tracks)).all()
    assert (np.isfinite(scores) == (cols >= 0)).all()
    for row_cols, row_scores in zip(cols, scores, strict=True):
        found = row_cols[row_cols >= 0]
        assert len(np.unique(found)) == len(found)
        assert (row_cols[len(found) :] == -1).all()
        assert (np.diff(row_scores[: len(found)]) <= 1e-6).all()


def assert_nothing_heard(data: FitData, rows: np.ndarray, cols: np.ndarray) -> None:
    """No returned column is stored in the user's row of the matrix (a heard track)."""
    heard = data.matrix[rows]
    n_tracks = data.matrix.shape[1]
    heard_keys = np.repeat(np.arange(len(rows)), np.diff(heard.indptr)) * n_tracks + heard.indices
    ok = cols >= 0
    keys = (np.arange(len(rows))[:, None] * n_tracks + cols)[ok]
    assert not np.isin(keys, heard_keys).any()


def assert_not_itself(track_cols: np.ndarray, cols: np.ndarray) -> None:
    assert not (cols == track_cols[:, None]).any()


# --------------------------------------------------------------- content
def test_content_lists_are_valid_on_tiny_data(tiny):
    gen = ContentGenerator(ContentConfig(max_postings=50, max_pairs=20_000)).fit(tiny)
    rows = np.arange(len(tiny.user_ids))
    cols, scores = gen.recommend(rows, 30)
    check_lists(cols, scores, 30, len(tiny.track_ids))
    assert_nothing_heard(tiny, rows, cols)
    assert (cols[:, 0] >= 0).all()
    tracks = np.arange(len(tiny.track_ids))
    sim, sim_scores = gen.similar(tracks, 10)
    check_lists(sim, sim_scores, 10, len(tiny.track_ids))
    assert_not_itself(tracks, sim)
    assert gen.fit_report["cut_tokens"] > 0  # the entry lists were cut: exercised


def test_content_scores_are_exact_cosines(tiny):
    """Without cuts the lists equal brute force; with cuts the scores stay exact cosines."""
    rows = np.arange(0, len(tiny.user_ids), 3)
    exact = ContentGenerator(ContentConfig(max_postings=10**9)).fit(tiny)
    dense = exact.user_profiles(rows).toarray() @ exact.vectors.toarray().T
    want_cols, want = top_n(dense, 40, tiny.matrix[rows])
    want = np.where(want > 0, want, -np.inf)  # brute force also ranks zero scores
    _, got = exact.recommend(rows, 40)
    np.testing.assert_allclose(
        np.where(np.isfinite(got), got, -1), np.where(np.isfinite(want), want, -1), atol=1e-5
    )
    cut = ContentGenerator(ContentConfig(max_postings=20)).fit(tiny)
    cols, scores = cut.recommend(rows, 40)
    ok = cols >= 0
    np.testing.assert_allclose(scores[ok], np.take_along_axis(dense, np.maximum(cols, 0), 1)[ok], atol=1e-5)
    # the cut keeps almost all the score mass of the exact lists
    assert np.where(ok, scores, 0).sum() > 0.95 * np.where(np.isfinite(want), want, 0).sum()


def block_toy(features: bool = False) -> FitData:
    """Tracks 0-5 (genre 1, artists 10/11) and 6-11 (genre 2, artists 20/21); track 12 has no tokens."""
    genres = [[1]] * 6 + [[2]] * 6 + [[]]
    artists = [[10], [10], [10], [11], [11], [11], [20], [20], [20], [21], [21], [21], []]
    albums = [[100 + i // 2] for i in range(12)] + [[]]
    listens = {1: [0, 3], 2: [1, 4, 5], 3: [6, 9], 4: [7, 10, 11], 5: [12]}
    feats = None
    if features:
        rng = np.random.default_rng(0)
        centre = np.where(np.arange(13)[:, None] < 6, 5.0, -5.0) * np.ones((13, 4))
        feats = centre + rng.normal(scale=0.3, size=(13, 4))
        feats[:, 3] = 7.0  # a constant column
    return toy_data(listens, genres, artists, albums, feats)


def test_content_recommends_within_the_block():
    data = block_toy()
    gen = ContentGenerator(ContentConfig()).fit(data)
    rows = data.user_rows(np.array([1, 2, 3, 4, 5]))
    cols, scores = gen.recommend(rows, 8)
    check_lists(cols, scores, 8, 13)
    assert_nothing_heard(data, rows, cols)
    block_a, block_b = set(range(6)), set(range(6, 12))
    for row, block, heard in ((0, block_a, 2), (1, block_a, 3), (2, block_b, 2), (3, block_b, 3)):
        found = cols[row][cols[row] >= 0]
        assert set(found) == block - {t - 100 for t in data.track_ids[data.matrix[row].indices]}
        assert len(found) == 6 - heard  # padded: only the block's unheard tracks score
    assert (cols[4] == -1).all() and np.isneginf(scores[4]).all()  # a profile with no tokens
    assert 12 not in cols
    tracks = np.arange(13)
    sim, sim_scores = gen.similar(tracks, 5)
    assert_not_itself(tracks, sim)
    for t in range(12):
        found = sim[t][sim[t] >= 0]
        assert len(found) == 5 and set(found) <= (block_a if t < 6 else block_b)
        # the track of the same artist and album comes first
        assert found[0] == (t ^ 1)
    assert (sim[12] == -1).all()  # no tokens, no neighbours


def test_csr_top_n_matches_dense_top_n():
    rng = np.random.default_rng(3)
    dense = rng.random((40, 300)).astype(np.float32)
    dense[dense < 0.9] = 0
    block = sp.csr_matrix(dense)
    cols, scores = csr_top_n(block, 50)
    want_cols, want = top_n(np.where(dense > 0, dense, -np.inf), 50)
    np.testing.assert_array_equal(scores, want)
    assert ((cols >= 0) == (want_cols >= 0)).all()


# ----------------------------------------------------------------- audio
def test_audio_lists_are_valid_and_deterministic(tiny):
    config = AudioConfig(max_iter=30, sample_tracks=1_000)
    gen = AudioGenerator(config, seed=5).fit(tiny)
    rows = np.arange(len(tiny.user_ids))
    cols, scores = gen.recommend(rows, 30)
    check_lists(cols, scores, 30, len(tiny.track_ids))
    assert_nothing_heard(tiny, rows, cols)
    tracks = np.arange(len(tiny.track_ids))
    sim, sim_scores = gen.similar(tracks, 10)
    check_lists(sim, sim_scores, 10, len(tiny.track_ids))
    assert_not_itself(tracks, sim)
    report = gen.fit_report
    assert report["train_tracks"] == 1_000 and 0 < report["train_r2"] <= 1
    assert np.allclose(np.linalg.norm(gen.embeddings, axis=1), 1, atol=1e-4)
    again = AudioGenerator(config, seed=5).fit(tiny)
    np.testing.assert_array_equal(again.recommend(rows, 30)[0], cols)
    np.testing.assert_array_equal(again.similar(tracks, 10)[0], sim)


def test_audio_cells_stay_close_to_exact(tiny):
    """The inverted-file search (forced on the tiny catalogue) against brute force."""
    base = dict(max_iter=30, sample_tracks=1_000)
    exact = AudioGenerator(AudioConfig(**base), seed=2).fit(tiny)
    cells = AudioGenerator(
        AudioConfig(**base, exact_max_tracks=100, cell_size=100, probe_cells=6), seed=2
    ).fit(tiny)
    assert cells.fit_report["cells"] == 30 and exact.fit_report["cells"] == 1
    tracks = np.arange(len(tiny.track_ids))
    sim, sim_scores = cells.similar(tracks, 10)
    check_lists(sim, sim_scores, 10, len(tiny.track_ids))
    assert_not_itself(tracks, sim)
    want, _ = exact.similar(tracks, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(sim, want, strict=True)])
    assert overlap > 0.7
    rows = np.arange(len(tiny.user_ids))
    cols, scores = cells.recommend(rows, 30)
    check_lists(cols, scores, 30, len(tiny.track_ids))
    assert_nothing_heard(tiny, rows, cols)


def test_audio_neighbours_stay_in_their_cluster():
    data = block_toy(features=True)
    gen = AudioGenerator(AudioConfig(max_iter=300, embedding_dim=2, hidden=8), seed=0).fit(data)
    tracks = np.arange(13)
    sim, _ = gen.similar(tracks, 4)
    assert_not_itself(tracks, sim)
    for t in range(13):
        cluster = set(range(6)) if t < 6 else set(range(6, 13))
        assert set(sim[t]) <= cluster
    rows = data.user_rows(np.array([1, 2, 3, 4]))
    cols, _ = gen.recommend(rows, 3)
    assert_nothing_heard(data, rows, cols)
    assert set(cols[:2].ravel()) <= set(range(6)) and set(cols[2:].ravel()) <= set(range(6, 13))


def test_audio_without_features():
    data = block_toy(features=False)
    with pytest.raises(ValueError, match="has no track_features: audio generator skipped"):
        AudioGenerator(AudioConfig()).fit(data)


def test_audio_tracks_without_features_are_left_out():
    data = block_toy(features=True)
    data.track_features = data.track_features.filter(pl.col(C.track_id) != 100 + 2)
    gen = AudioGenerator(AudioConfig(max_iter=100, embedding_dim=2, hidden=8), seed=0).fit(data)
    assert not gen.has_embedding[2] and gen.fit_report["tracks_embedded"] == 12
    sim, scores = gen.similar(np.arange(13), 20)
    assert (sim[2] == -1).all() and np.isneginf(scores[2]).all()
    assert 2 not in sim
    assert (sim[0] >= 0).sum() == 11  # padded: 11 other embedded tracks
    cols, _ = gen.recommend(np.arange(len(data.user_ids)), 20)
    assert 2 not in cols
    # user 5 listened only to track 12: the profile exists; a user of track 2 alone would not
    assert gen.has_profile.all()
