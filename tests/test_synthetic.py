"""The synthetic generator: contract, determinism, calibration shapes and hidden structure."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from musicrec.config import SyntheticConfig
from musicrec.schema import INTERACTIONS_SCHEMA
from musicrec.sources.synthetic import generate, true_preference

SMALL = SyntheticConfig(
    n_users=3000, n_tracks=4000, max_tracks_per_user=1500, n_genres=40, n_named_genres=36, chunk_users=700
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SMALL, seed=11, out_dir=out, progress=False)
    return out


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


def test_files_and_dtypes(generated):
    inter = pl.read_parquet(generated / "interactions.parquet")
    assert dict(inter.schema) == INTERACTIONS_SCHEMA
    tracks = pl.read_parquet(generated / "tracks.parquet")
    assert tracks.columns == ["track_id", "albums", "artists", "genres"]
    assert tracks.height == SMALL.n_tracks
    assert inter.get_column("track_id").is_in(tracks.get_column("track_id").implode()).all()
    names = pl.read_parquet(generated / "catalog_names.parquet")
    assert set(names.get_column("type")) == {"track", "album", "artist", "genre"}
    features = pl.read_parquet(generated / "track_features.parquet")
    assert features.height == SMALL.n_tracks and "energy" in features.columns


def test_every_pair_once_and_history_in_time_order(generated):
    inter = pl.read_parquet(generated / "interactions.parquet")
    assert not inter.select("user_id", "track_id").is_duplicated().any()
    per_user = inter.group_by("user_id").agg(
        pl.col("track_seq").sort_by("track_seq").alias("seq"),
        pl.col("started_at").sort_by("track_seq").alias("ts"),
    )
    for row in per_user.head(200).iter_rows(named=True):
        assert row["seq"] == list(range(1, len(row["seq"]) + 1))
        assert row["ts"] == sorted(row["ts"])


def test_deterministic_for_a_seed(generated, tmp_path):
    generate(SMALL, seed=11, out_dir=tmp_path / "again", progress=False)
    assert digest(tmp_path / "again") == digest(generated)
    generate(SMALL, seed=12, out_dir=tmp_path / "other", progress=False)
    assert digest(tmp_path / "other")["interactions.parquet"] != digest(generated)["interactions.parquet"]


def test_activity_shapes(generated):
    inter = pl.read_parquet(generated / "interactions.parquet")
    per_user = inter.group_by("user_id").len().get_column("len")
    # the configured log-normal: median 55, mean 162 (capped at 1,500 here)
    assert 45 <= per_user.median() <= 65
    assert 120 <= per_user.mean() <= 175
    assert per_user.max() <= 1500
    per_track = inter.group_by("track_id").len().get_column("len")
    assert per_track.median() < 0.5 * per_track.mean(), "a long tail of rarely heard tracks"
    months = inter.group_by(pl.col("started_at").dt.month().alias("m")).len().sort("m")
    by_month = dict(zip(months.get_column("m"), months.get_column("len"), strict=True))
    assert by_month[11] > 5 * by_month[1], "listening grows over the year"
    assert inter.get_column("started_at").min().year == 2022
    assert inter.get_column("started_at").max().date().isoformat() <= "2022-12-31"


def test_catalogue_gaps_as_in_the_real_data(generated):
    tracks = pl.read_parquet(generated / "tracks.parquet")
    no_artist = tracks.select(pl.col("artists").list.len().eq(0).mean()).item()
    assert 0.005 < no_artist < 0.03  # 1.5% in the real data
    genres = set(tracks.get_column("genres").explode().drop_nulls().to_list())
    names = pl.read_parquet(generated / "catalog_names.parquet").filter(pl.col("type") == "genre")
    assert len(genres - set(names.get_column("id").to_list())) > 0, "some genres have no name"


def test_pop_leads_the_genres(generated):
    inter = pl.read_parquet(generated / "interactions.parquet")
    tracks = pl.read_parquet(generated / "tracks.parquet")
    names = pl.read_parquet(generated / "catalog_names.parquet").filter(pl.col("type") == "genre")
    top = (
        inter.join(tracks, on="track_id")
        .explode("genres")
        .group_by("genres")
        .len()
        .sort("len", descending=True)
        .head(3)
        .join(names, left_on="genres", right_on="id")
        .sort("len", descending=True)
    )
    assert top.get_column("name").to_list()[0] == "pop"


def test_listening_runs_in_artist_streaks(generated):
    inter = pl.read_parquet(generated / "interactions.parquet").sort("user_id", "track_seq")
    prior = pl.read_parquet(generated / "oracle" / "track_prior.parquet")
    artist = inter.join(prior.select("track_id", "artist"), on="track_id").sort("user_id", "track_seq")
    same_next = artist.select(
        (
            (pl.col("artist") == pl.col("artist").shift(-1))
            & (pl.col("user_id") == pl.col("user_id").shift(-1))
        ).mean()
    ).item()
    shuffled = (
        artist.with_columns(pl.col("artist").shuffle(seed=1).over("user_id"))
        .select(
            (
                (pl.col("artist") == pl.col("artist").shift(-1))
                & (pl.col("user_id") == pl.col("user_id").shift(-1))
            ).mean()
        )
        .item()
    )
    assert same_next > 2 * shuffled


def test_true_preference_ranks_future_listens_above_random_tracks(generated):
    """The hidden structure is findable: what a user listens to in December scores higher,
    under the generator's own preferences, than a random track the same user never heard."""
    inter = pl.read_parquet(generated / "interactions.parquet")
    december = inter.filter(pl.col("started_at").dt.month() == 12).sample(2000, seed=1)
    users = december.get_column("user_id").to_numpy()
    all_tracks = pl.read_parquet(generated / "tracks.parquet").get_column("track_id").to_numpy()
    random_tracks = np.random.default_rng(0).choice(all_tracks, len(users))
    heard_pairs = set(zip(inter.get_column("user_id"), inter.get_column("track_id"), strict=True))
    unheard = np.array([(u, t) not in heard_pairs for u, t in zip(users, random_tracks, strict=True)])
    heard_score = true_preference(generated / "oracle", users, december["track_id"].to_numpy())
    random_score = true_preference(generated / "oracle", users, random_tracks)
    # the area under the ROC curve of these pairs, ties counting half
    wins = ((heard_score > random_score) + 0.5 * (heard_score == random_score))[unheard].mean()
    assert wins > 0.75, wins


def test_true_preference_rejects_unknown_ids(generated):
    with pytest.raises(KeyError, match="track_id"):
        true_preference(generated / "oracle", np.array([0]), np.array([10**8]))


def test_true_preference_reads_the_oracle_again_when_it_changes(generated, tmp_path):
    oracle = tmp_path / "oracle"
    shutil.copytree(generated / "oracle", oracle)
    users = pl.read_parquet(oracle / "user_taste.parquet").get_column("user_id").to_numpy()[:50]
    tracks = pl.read_parquet(oracle / "track_prior.parquet").get_column("track_id").to_numpy()[:50]
    before = true_preference(oracle, users, tracks)
    assert np.array_equal(true_preference(oracle, users, tracks), before)  # the cached tables
    params = json.loads((oracle / "params.json").read_text())
    params["exploration_share"] = params["exploration_share"] + 0.1
    (oracle / "params.json").write_text(json.dumps(params))
    os.utime(oracle / "params.json", ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime, surely
    after = true_preference(oracle, users, tracks)
    assert not np.allclose(after, before)
