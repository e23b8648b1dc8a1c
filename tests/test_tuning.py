"""`make tune` (musicrec.tuning): a tiny search writes its trials and an overlay that profiles can apply;
it never reads the test window; the overlay is validated like a profile and seen by the staleness."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
import yaml

from musicrec.config import Dimension, ProfileError, load_profile
from musicrec.io import RunPaths

MODELS = ["top_popular", "item_knn"]
TRIALS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile's data (generated, split) in a scratch root with params/ and notebooks/."""
    from musicrec.data import build_dataset

    root = tmp_path_factory.mktemp("tune")
    (root / "params").mkdir()
    (root / "notebooks").mkdir()
    shutil.copy("params/tiny.yaml", root / "params" / "tiny.yaml")
    profile = load_profile(root / "params" / "tiny.yaml")
    paths = RunPaths.for_profile(profile, root)
    build_dataset(profile, paths, progress=False)
    return profile, paths


@pytest.fixture(scope="module")
def searched(tiny):
    from musicrec import tuning

    profile, paths = tiny
    return tuning.search(profile, paths, models=MODELS, trials=TRIALS, timeout_seconds=300, progress=False)


def test_search_writes_trials_and_an_overlay(tiny, searched):
    profile, paths = tiny
    trials = pl.read_parquet(paths.outputs / "tuning" / "trials.parquet")
    assert set(trials.columns) >= {"model", "trial", "params", "value", "seconds", "state"}
    assert trials.get_column("model").unique(maintain_order=True).to_list() == MODELS
    assert trials.group_by("model").len().get_column("len").to_list() == [TRIALS] * len(MODELS)
    assert set(trials.get_column("state")) <= {"COMPLETE", "PRUNED", "FAIL"}
    # the first trial is the profile as written (tiny: top_popular.days unset, item_knn bm25 with 20)
    first = trials.filter(pl.col("trial") == 0).sort("model")
    assert first.get_column("params").to_list() == ['{"kind": "bm25", "neighbours": 20}', '{"days": null}']
    done = trials.filter(pl.col("state") == "COMPLETE")
    assert done.get_column("value").is_between(0, 1).all()

    text = (paths.outputs / "tuning" / "best.yaml").read_text()
    assert text.startswith("# Tuned by `make tune`") and "outputs/tiny/tuning/best.yaml" in text
    overlay = yaml.safe_load(text)
    assert set(overlay) == {"candidates"} and set(overlay["candidates"]) == {"top_popular", "item_knn"}
    assert set(overlay["candidates"]["item_knn"]) == {"kind", "neighbours"}
    best = done.group_by("model").agg(pl.col("value").max())
    for model in MODELS:
        assert searched.studies[model].best_value == best.filter(pl.col("model") == model).item(0, "value")


def test_the_overlay_applies_only_with_tuned(tiny, searched):
    profile, paths = tiny
    params = paths.root / "params"
    (params / "tuned.yaml").write_text(
        (params / "tiny.yaml").read_text() + "tuned: outputs/tiny/tuning/best.yaml\n"
    )
    tuned = load_profile(params / "tuned.yaml")
    best = searched.best["item_knn"]
    assert tuned.candidates.item_knn.kind == best["kind"]
    assert tuned.candidates.item_knn.neighbours == best["neighbours"]
    assert tuned.candidates.item_knn.n == profile.candidates.item_knn.n == 200  # untuned keys kept
    assert tuned.candidates.top_popular.days == searched.best["top_popular"]["days"]
    assert load_profile(params / "tiny.yaml").candidates == profile.candidates  # nothing applied silently


def test_a_bad_overlay_key_is_an_error_naming_the_overlay(tiny):
    _, paths = tiny
    params = paths.root / "params"
    (paths.root / "bad.yaml").write_text("candidates:\n  item_knn:\n    neighbors: 30\n")
    (params / "bad.yaml").write_text((params / "tiny.yaml").read_text() + "tuned: bad.yaml\n")
    with pytest.raises(ProfileError, match=r"tuned: bad.yaml: candidates.item_knn.neighbors: unknown key"):
        load_profile(params / "bad.yaml")
    (params / "missing.yaml").write_text((params / "tiny.yaml").read_text() + "tuned: nowhere.yaml\n")
    with pytest.raises(ProfileError, match="no such overlay file"):
        load_profile(params / "missing.yaml")


def test_changing_the_overlay_makes_the_stages_that_read_it_stale(tiny):
    from musicrec.stages import STAGES, section_values

    _, paths = tiny
    params = paths.root / "params"
    (paths.root / "over.yaml").write_text("candidates:\n  item_knn:\n    neighbours: 30\n")
    (params / "over.yaml").write_text((params / "tiny.yaml").read_text() + "tuned: over.yaml\n")
    before = load_profile(params / "over.yaml")
    (paths.root / "over.yaml").write_text("candidates:\n  item_knn:\n    neighbours: 31\n")
    after = load_profile(params / "over.yaml")
    changed = {
        s.name for s in STAGES if section_values(before, s.sections) != section_values(after, s.sections)
    }
    # the stages that read candidates: the candidates stage and the search (ranking reads candidates.audio)
    assert changed == {"03_candidates", "07_tuning"}


def test_the_test_window_is_never_read(tiny, searched, tmp_path):
    """The same search on a copy of the data without the test window's listens (split.json kept)
    scores every trial the same."""
    from musicrec import tuning

    profile, paths = tiny
    copy = RunPaths(tmp_path, paths.run)
    shutil.copytree(paths.data, copy.data)
    windows = paths.windows()
    listens = pl.read_parquet(paths.interactions)
    kept = windows.fit_listens(listens.lazy(), "history+labels").collect()
    assert 0 < kept.height < listens.height
    kept.write_parquet(copy.interactions)
    again = tuning.search(profile, copy, models=MODELS, trials=TRIALS, timeout_seconds=300, progress=False)
    columns = ["model", "trial", "params", "value", "state"]
    assert again.trials.select(columns).equals(searched.trials.select(columns))
    assert again.best == searched.best


def test_the_generators_trials_can_fit_on_a_sample_of_users(tiny):
    from musicrec import tuning

    profile, paths = tiny
    every = tuning.TuningData.load(profile, paths)
    sampled_profile = profile.model_copy(
        update={"tuning": profile.tuning.model_copy(update={"fit_users": "25%"})}
    )
    sampled = tuning.TuningData.load(sampled_profile, paths)
    heard = every.interactions.get_column("user_id").n_unique()
    fitted = set(sampled.interactions.get_column("user_id").unique().to_list())
    assert len(fitted) == round(heard * 0.25)
    # each fitted user keeps all their history, and only fitted users are scored
    mine = every.interactions.filter(pl.col("user_id").is_in(list(fitted)))
    assert mine.height == sampled.interactions.height
    assert set(sampled.users.tolist()) <= fitted and 0 < len(sampled.users) < len(every.users)
    again = tuning.TuningData.load(sampled_profile, paths)  # seeded: the same sample
    assert again.interactions.equals(sampled.interactions)


def test_i2i_is_searched_over_the_similar_lists_of_the_best_als(tiny, monkeypatch):
    from musicrec import tuning

    profile, paths = tiny
    seen = []
    original = tuning.TuningData.similar

    def spy(self):
        seen.append(self.profile.candidates.als)
        return original(self)

    monkeypatch.setattr(tuning.TuningData, "similar", spy)
    # ALS searched over factors the profile does not have (64), so its best differs from the profile
    space = dict(profile.tuning.space) | {"personal_als": {"factors": Dimension(choices=[8, 12])}}
    searched_profile = profile.model_copy(
        update={"tuning": profile.tuning.model_copy(update={"space": space})}
    )
    result = tuning.search(
        searched_profile,
        paths,
        models=["personal_als", "i2i_history"],
        trials=3,
        timeout_seconds=300,
        progress=False,
    )
    best_als = result.best["personal_als"]
    assert seen, "i2i's trials read no similar lists"
    # every similar list i2i was scored with came from the best ALS found before it
    assert best_als["factors"] in (8, 12) and profile.candidates.als.factors == 64
    assert all(als.factors == best_als["factors"] for als in seen)
