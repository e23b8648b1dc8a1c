"""The stages' steps that ``engine: spark`` runs on Spark give the local engine's results, on the tiny
profile: the data stage's split (``split.json``), the candidates stage's top-popular list
(``top_popular.parquet``) and the candidates notebook's candidate recall
(:func:`musicrec.spark.run_candidate_recall` with a polars frame of targets).

Skipped with a reason without pyspark or Java, unless MUSICREC_REQUIRE_SPARK=1 (as tests/test_spark.py).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from spark_support import tiny_spark_run

from musicrec.candidates.base import SIMILAR_SCHEMA, USER_RECS_SCHEMA, FitData
from musicrec.candidates.recall import candidate_recall
from musicrec.candidates.stage import (
    CandidateStage,
    GeneratorRun,
    labels_targets,
    list_users,
    window_interactions,
)
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.schema import C
from musicrec.spark import run_candidate_recall, run_split
from musicrec.split import compute_split

WINDOWS = ("history", "history+labels")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile on ``engine: spark`` with its data built by the data stage (the split on
    Spark), and the same profile on the local engine."""
    spark_profile, paths = tiny_spark_run(tmp_path_factory.mktemp("spark-stages"))
    local_profile = spark_profile.model_copy(update={"engine": "local"})
    yield spark_profile, local_profile, paths
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def _with_top_popular(profile, **update):
    cfg = profile.candidates.top_popular.model_copy(update=update)
    return profile.model_copy(
        update={"candidates": profile.candidates.model_copy(update={"top_popular": cfg})}
    )


# --------------------------------------------------------------------------- data stage: the split


def test_data_stage_writes_the_local_split_on_spark(tiny, tmp_path):
    spark_profile, local_profile, paths = tiny
    written = json.loads(paths.split.read_text())  # by build_dataset on engine: spark
    local = run_split(local_profile, paths.interactions)
    assert local == compute_split(paths.interactions, local_profile.split, file=str(paths.interactions))
    assert run_split(spark_profile, paths.interactions) == local
    write_json(local, tmp_path / "split.json")  # what the local data stage writes
    assert written == json.loads((tmp_path / "split.json").read_text())


# --------------------------------------------------------------------------- candidates: top-popular


@pytest.mark.parametrize("days", [None, 7])
@pytest.mark.parametrize("window", WINDOWS)
def test_candidates_top_popular_on_spark_equals_local(tiny, window, days):
    """Both local ways (from the matrix for the whole window, a group-by for the last days) against
    Spark's list of the window's listens."""
    spark_profile, local_profile, paths = tiny
    interactions = window_interactions(paths, window)
    data = FitData.build(interactions, pl.read_parquet(paths.tracks))
    lists = [
        CandidateStage(_with_top_popular(profile, days=days), paths)._top_popular(data, interactions, window)
        for profile in (local_profile, spark_profile)
    ]
    assert lists[0].height == local_profile.candidates.top_popular.n
    assert_frame_equal(lists[1], lists[0])


def _fit_top_popular_only(profile, source: RunPaths, root, monkeypatch) -> RunPaths:
    """The candidates stage's fit of the history window with only top-popular and random (the
    other generators stubbed out), on a copy of ``source``'s data under ``root``."""
    for method in ("_als", "_i2i", "_item_knn", "_optional"):
        monkeypatch.setattr(CandidateStage, method, lambda self, *args: GeneratorRun("stub", ""))
    paths = RunPaths.for_profile(profile, root)
    shutil.copytree(source.data, paths.data)
    runs = {r.generator: r for r in CandidateStage(profile, paths).fit("history")}
    assert runs["top_popular"].note == ("on Spark" if profile.engine == "spark" else "")
    return paths


def test_candidates_stage_writes_the_local_top_popular_file_on_spark(tiny, tmp_path, monkeypatch):
    spark_profile, local_profile, paths = tiny
    files = [
        _fit_top_popular_only(profile, paths, tmp_path / profile.engine, monkeypatch).candidate_dir("history")
        / "top_popular.parquet"
        for profile in (local_profile, spark_profile)
    ]
    local, spark = (pl.read_parquet(f) for f in files)
    assert local.height == local_profile.candidates.top_popular.n
    assert spark.schema == local.schema
    assert_frame_equal(spark, local)


# --------------------------------------------------------------------------- data stage: the Yandex adapter


def _yandex_folder(paths: RunPaths, folder, interactions: pl.DataFrame | None = None):
    """The tiny run's data as the Yandex Music files (the canonical format), ``interactions``
    replacing its listens when given."""
    folder.mkdir(parents=True, exist_ok=True)
    listens = pl.read_parquet(paths.interactions).drop(C.weight) if interactions is None else interactions
    listens.write_parquet(folder / "interactions.parquet")
    shutil.copy(paths.tracks, folder / "tracks.parquet")
    shutil.copy(paths.catalog_names, folder / "catalog_names.parquet")
    return folder


def _yandex_profile(profile, folder, **options):
    data = profile.data.model_copy(
        update={"source": "yandex", "path": folder, "yandex": profile.data.yandex.model_copy(update=options)}
    )
    return profile.model_copy(update={"data": data, "run_name": f"yandex-{profile.engine}"})


def _build(profile, root):
    from musicrec.data import build_dataset

    run = RunPaths.for_profile(profile, root)
    return run, build_dataset(profile, run, progress=False)


def test_data_stage_adapts_yandex_files_on_spark_like_local(tiny, tmp_path):
    spark_profile, local_profile, paths = tiny
    folder = _yandex_folder(paths, tmp_path / "raw")
    (local, local_summary), (spark, spark_summary) = (
        _build(_yandex_profile(profile, folder), tmp_path / profile.engine)
        for profile in (local_profile, spark_profile)
    )
    order = [C.user_id, C.started_at, C.track_id]
    expected = pl.read_parquet(local.interactions).sort(order)
    assert expected.height == pl.read_parquet(paths.interactions).height > 10_000
    assert_frame_equal(pl.read_parquet(spark.interactions).sort(order), expected)
    for name in ("tracks", "catalog_names"):
        assert_frame_equal(pl.read_parquet(getattr(spark, name)), pl.read_parquet(getattr(local, name)))
    assert "written on Spark" in " ".join(spark_summary["notes"])
    assert {k: v for k, v in spark_summary.items() if k not in ("notes", "raw_path")} == {
        k: v for k, v in local_summary.items() if k not in ("notes", "raw_path")
    }
    assert json.loads(spark.split.read_text()) == json.loads(local.split.read_text())


def _broken(listens: pl.DataFrame, case: str) -> pl.DataFrame:
    """The tiny run's listens broken one way."""
    every_500th = pl.int_range(pl.len()) % 500 == 7
    if case == "repeated pair":  # a copy of the first listen
        return pl.concat([listens, listens.head(1)])
    if case == "unknown track":
        return listens.with_columns(pl.when(every_500th).then(10**7).otherwise(C.track_id).alias(C.track_id))
    if case == "misspelled column":
        return listens.rename({C.user_id: "userid"})
    if case == "text ids":
        return listens.with_columns(pl.col(C.track_id).cast(pl.Utf8))
    raise ValueError(case)


@pytest.mark.parametrize("case", ["repeated pair", "unknown track", "misspelled column", "text ids"])
def test_data_stage_on_spark_stops_yandex_files_with_the_local_error(tiny, tmp_path, case):
    from musicrec.schema import DataContractError

    spark_profile, local_profile, paths = tiny
    listens = pl.read_parquet(paths.interactions).drop(C.weight)
    folder = _yandex_folder(paths, tmp_path / "raw", _broken(listens, case))
    errors = []
    for profile in (local_profile, spark_profile):
        with pytest.raises(DataContractError) as info:
            _build(_yandex_profile(profile, folder), tmp_path / profile.engine)
        errors.append(info.value)
    local, spark = errors
    assert (spark.file, spark.column, spark.problem) == (local.file, local.column, local.problem)


def test_yandex_files_without_track_seq_fall_back_to_the_local_adapter(tiny, tmp_path):
    spark_profile, local_profile, paths = tiny
    listens = pl.read_parquet(paths.interactions).drop(C.weight, C.track_seq)
    folder = _yandex_folder(paths, tmp_path / "raw", listens)
    spark, summary = _build(_yandex_profile(spark_profile, folder), tmp_path / "spark")
    assert any("ran on the local engine" in note and "track_seq" in note for note in summary["notes"])
    local, _ = _build(_yandex_profile(local_profile, folder), tmp_path / "local")
    assert_frame_equal(pl.read_parquet(spark.interactions), pl.read_parquet(local.interactions))


# --------------------------------------------------------------------------- candidates stage: i2i


def _similar_lists(paths: RunPaths, seed: int) -> pl.DataFrame:
    """Random similar lists for every track (up to 40 each), scores multiples of 1/16: their sums
    are exact in float32 and float64 alike, and many tie, so the tie rule (the smaller track id)
    decides whole stretches of the lists."""
    rng = np.random.default_rng(seed)
    tracks = pl.read_parquet(paths.tracks).get_column(C.track_id).to_numpy()
    sources = np.repeat(tracks, rng.integers(0, 41, size=len(tracks)))
    targets = rng.choice(tracks, size=len(sources))
    frame = pl.DataFrame(
        {
            C.track_id: sources,
            C.similar_track_id: targets,
            C.score: rng.integers(1, 17, size=len(sources)) / 16,
        }
    ).filter(pl.col(C.track_id) != pl.col(C.similar_track_id))
    frame = frame.unique([C.track_id, C.similar_track_id], keep="first", maintain_order=True)
    ranked = frame.sort([C.track_id, C.score, C.similar_track_id], descending=[False, True, False])
    ranked = ranked.with_columns(pl.int_range(1, pl.len() + 1).over(C.track_id).alias(C.rank))
    return ranked.cast(SIMILAR_SCHEMA)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("some_users", [False, True])
def test_candidates_i2i_from_history_on_spark_equals_local(tiny, tmp_path, window, some_users):
    """The candidates stage's i2i from history on Spark writes the local file: the same users,
    tracks, scores and ranks, for every user of the window or for some (the ranker's sample)."""
    spark_profile, local_profile, paths = tiny
    interactions = window_interactions(paths, window)
    data = FitData.build(interactions, pl.read_parquet(paths.tracks))
    similar = _similar_lists(paths, seed=len(window))
    lists = []
    for profile in (local_profile, spark_profile):
        stage = CandidateStage(profile, paths)
        stage.rows = np.arange(len(data.user_ids))[:: 3 if some_users else 1]
        out = tmp_path / profile.engine
        write_parquet(similar, out / "similar.parquet")
        run = stage._i2i(data, interactions, out, window)
        lists.append(pl.read_parquet(out / "i2i_history.parquet"))
        assert run.rows == lists[-1].height
    local, spark = (frame.sort(C.user_id, C.rank) for frame in lists)
    assert local.height > 1000 and local.get_column(C.rank).max() == local_profile.candidates.i2i_history.n
    assert local.get_column(C.user_id).n_unique() == pytest.approx(len(stage.rows), rel=0.05)
    assert spark.schema == local.schema == USER_RECS_SCHEMA
    assert_frame_equal(spark, local)
    ties = local.group_by(C.user_id, C.score).len().get_column("len").max()
    assert ties > 1  # the tie rule was exercised


# --------------------------------------------------------------------------- notebook: candidate recall


def test_candidate_recall_of_the_notebook_on_spark_equals_local(tiny, tmp_path, monkeypatch):
    """``run_candidate_recall(profile, folder, targets)`` as notebook 03 calls it (a polars frame of
    the labels-window targets of the training users), on a candidates folder of the stage."""
    spark_profile, local_profile, paths = tiny
    run = _fit_top_popular_only(local_profile, paths, tmp_path, monkeypatch)
    folder = run.candidate_dir("history")
    targets = labels_targets(run, list_users(local_profile, run))
    assert targets.height > 0
    expected = candidate_recall(folder, targets, list(local_profile.candidates.recall_at))
    local = run_candidate_recall(local_profile, folder, targets)
    spark = run_candidate_recall(spark_profile, folder, targets)
    assert_frame_equal(local, expected)
    assert_frame_equal(spark, expected)
    assert set(expected.get_column("generator")) == {"top_popular", "random", "union"}
    assert expected.get_column("found").sum() > 0
    # a parquet of targets gives the same table; no targets at all gives the same (empty) counts
    write_parquet(targets, tmp_path / "targets.parquet")
    assert_frame_equal(run_candidate_recall(spark_profile, folder, tmp_path / "targets.parquet"), expected)
    nobody = targets.clear()
    assert_frame_equal(
        run_candidate_recall(spark_profile, folder, nobody),
        run_candidate_recall(local_profile, folder, nobody),
    )
