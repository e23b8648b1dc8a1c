"""Profiles: every shipped profile loads; bad keys, types and values name the key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from musicrec.config import ProfileError, SplitConfig, load_profile

PARAMS = Path(__file__).resolve().parents[1] / "params"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["default", "tiny", "full", "yandex", "ium", "movielens", "lastfm"])
def test_shipped_profiles_load(name):
    profile = load_profile(PARAMS / f"{name}.yaml")
    assert profile.run == name
    expected = name if name in ("yandex", "ium", "movielens", "lastfm") else "synthetic"
    assert profile.data.source == expected


def test_full_profile_has_the_yandex_music_size():
    cfg = load_profile(PARAMS / "full.yaml").data.synthetic
    assert (cfg.n_users, cfg.n_tracks) == (1_373_221, 1_000_000)
    assert (cfg.start_date, cfg.end_date) == (dt.date(2022, 1, 1), dt.date(2022, 12, 31))


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "data:\n  synthetic:\n    n_user: 10\n")
    with pytest.raises(ProfileError, match=r"p.yaml: data.synthetic.n_user: unknown key"):
        load_profile(path)


def test_wrong_type_is_named(tmp_path):
    path = write(tmp_path, "data:\n  synthetic:\n    n_users: lots\n")
    with pytest.raises(ProfileError, match=r"data.synthetic.n_users: .*integer.*'lots'"):
        load_profile(path)


def test_impossible_values_are_named(tmp_path):
    path = write(tmp_path, "split:\n  label_start: 2022-12-20\n  test_start: 2022-12-16\n")
    with pytest.raises(ProfileError, match=r"split: test_start must come after label_start"):
        load_profile(path)
    path = write(tmp_path, "data:\n  source: spotify\n")
    with pytest.raises(ProfileError, match=r"data.source: .*'synthetic'.*'spotify'"):
        load_profile(path)
    path = write(tmp_path, "data:\n  synthetic:\n    n_users: -5\n")
    with pytest.raises(ProfileError, match=r"data.synthetic.n_users: .*greater than 0"):
        load_profile(path)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(write(tmp_path, "split: [unclosed\n"))
    with pytest.raises(ProfileError, match="no such profile"):
        load_profile(tmp_path / "nope.yaml")


def test_run_name_defaults_to_file_name_and_can_be_set(tmp_path):
    assert load_profile(write(tmp_path, "seed: 1\n", "experiment.yaml")).run == "experiment"
    assert load_profile(write(tmp_path, "run_name: other\n")).run == "other"
    with pytest.raises(ProfileError, match="run_name"):
        load_profile(write(tmp_path, "run_name: ../escape\n"))


def test_data_path_overrides_the_profile(tmp_path):
    path = write(tmp_path, "data:\n  source: ium\n  path: somewhere\n")
    assert load_profile(path).data.path == Path("somewhere")
    assert load_profile(path, data_path="/elsewhere").data.path == Path("/elsewhere")


def test_boundaries_as_days_before_the_end(tmp_path):
    split = SplitConfig(label_start=31, test_start=16)
    assert split.resolve(dt.date(2022, 1, 1), dt.date(2022, 12, 31)) == (
        dt.date(2022, 12, 1),
        dt.date(2022, 12, 16),
    )
    path = write(tmp_path, "split:\n  label_start: 5\n  test_start: 10\n")
    with pytest.raises(ProfileError, match="split: label_start .* must be larger than test_start"):
        load_profile(path)


def test_boundary_after_the_data_ends_names_the_key():
    split = SplitConfig(label_start=dt.date(2022, 12, 1), test_start=dt.date(2023, 2, 1))
    with pytest.raises(ProfileError, match=r"split.test_start: 2023-02-01 is after the data ends"):
        split.resolve(dt.date(2022, 1, 1), dt.date(2022, 12, 31))
    with pytest.raises(ProfileError, match=r"split.label_start: .* leaves no history"):
        SplitConfig(label_start=400, test_start=10).resolve(dt.date(2022, 1, 1), dt.date(2022, 12, 31))


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_profile_is_refused(tmp_path, text):
    (tmp_path / "empty.yaml").write_text(text)
    with pytest.raises(ProfileError, match="the profile is empty"):
        load_profile(tmp_path / "empty.yaml")


@pytest.mark.parametrize(
    "text, hint",
    [
        ("ranking:\n  iteratons: 3\n", "ranking.iteratons: unknown key (did you mean 'iterations'?)"),
        (
            "candidates:\n  als:\n    factor: 3\n",
            "candidates.als.factor: unknown key (did you mean 'factors'?)",
        ),
        ("splitt: {}\n", "splitt: unknown key (did you mean 'split'?)"),
    ],
)
def test_unknown_keys_get_a_suggestion(tmp_path, text, hint):
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ProfileError) as caught:
        load_profile(tmp_path / "typo.yaml")
    assert hint in str(caught.value)


def test_a_data_path_for_a_synthetic_profile_is_refused():
    with pytest.raises(ProfileError, match="DATA_PATH=/some/raw is for a real source.*synthetic"):
        load_profile("params/tiny.yaml", data_path="/some/raw")


def test_a_synthetic_test_start_after_the_span_is_refused_before_generating(tmp_path, monkeypatch):
    import musicrec.sources.synthetic as synthetic
    from musicrec.data import build_dataset
    from musicrec.io import RunPaths

    profile = load_profile(PARAMS / "tiny.yaml")
    late = profile.model_copy(
        update={"split": profile.split.model_copy(update={"test_start": dt.date(2030, 1, 1)})}
    )

    def must_not_run(*args, **kwargs):
        raise AssertionError("generated before the windows were checked")

    monkeypatch.setattr(synthetic, "generate", must_not_run)
    with pytest.raises(ProfileError, match=r"split\.test_start: 2030-01-01 is after the data ends on"):
        build_dataset(late, RunPaths.for_profile(late, tmp_path), progress=False)


def test_engine_defaults_to_local_and_make_can_override_it(tmp_path):
    profile = load_profile(PARAMS / "tiny.yaml")
    assert profile.engine == "local" and profile.spark.master == "local[*]" and profile.spark.conf == {}
    assert load_profile(PARAMS / "tiny.yaml", engine="spark").engine == "spark"
    path = write(
        tmp_path, "engine: spark\nspark: {master: 'spark://host:7077', conf: {spark.executor.memory: 8g}}\n"
    )
    profile = load_profile(path)
    assert profile.engine == "spark" and profile.spark.master == "spark://host:7077"
    assert profile.spark.conf == {"spark.executor.memory": "8g"}
    assert load_profile(path, engine="local").engine == "local"


def test_bad_engine_or_spark_key_names_the_key(tmp_path):
    with pytest.raises(ProfileError, match="engine: Input should be 'local' or 'spark'"):
        load_profile(PARAMS / "tiny.yaml", engine="dask")
    with pytest.raises(ProfileError, match=r"spark.mastr: unknown key \(did you mean 'master'\?\)"):
        load_profile(write(tmp_path, "spark: {mastr: 'local[2]'}\n"))
