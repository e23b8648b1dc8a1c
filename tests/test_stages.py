"""The stage declaration: staleness by content, whole-stage atomicity, the run lock, the Makefile."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from musicrec import stages as st
from musicrec.config import load_profile
from musicrec.io import RunPaths

ROOT = Path(__file__).resolve().parents[1]


def test_the_makefile_holds_the_generated_stage_rules():
    makefile = (ROOT / "Makefile").read_text()
    block = re.search(r"# stages:start\n(.*)# stages:end\n", makefile, re.S)
    assert block, "the Makefile lost its generated stage rules"
    assert block.group(1) == st.makefile_rules(), "regenerate them: musicrec makefile-rules"


def test_cli_report_and_bench_take_their_stages_from_the_declaration():
    from musicrec import bench, cli, report

    assert cli.STAGES == st.PIPELINE == ("01_data", "02_eda", "03_candidates", "04_ranking", "05_evaluation")
    assert cli.ON_DEMAND == ("06_ab_test", "07_tuning")
    assert set(report.STAGE_TITLES) == set(bench.STAGE_NAMES) == set(st.BY_NAME)
    assert all((ROOT / s.notebook).is_file() for s in st.STAGES)
    for s in st.STAGES:  # upstream stages come first
        assert all(st.STAGES.index(st.BY_NAME[u]) < st.STAGES.index(s) for u in s.upstream)


def test_code_files_follow_imports_but_not_presentation_or_the_service():
    candidates = st.code_files(ROOT / "notebooks" / "03_candidates.ipynb")
    assert {"musicrec.candidates.stage", "musicrec.candidates.als", "musicrec.io"} <= set(candidates)
    # imported with importlib by name (musicrec.candidates.{name})
    assert {"musicrec.candidates.content", "musicrec.candidates.audio"} <= set(candidates)
    for name in (
        "musicrec.report",
        "musicrec.plots",
        "musicrec.cli",
        "musicrec.service.app",
        "musicrec.evaluation",
        "musicrec.ranking.stage",
    ):
        assert name not in candidates
    evaluation = st.code_files(ROOT / "notebooks" / "05_evaluation.ipynb")
    assert "musicrec.evaluation" in evaluation and "musicrec.metrics" in evaluation
    assert "musicrec.service.app" in st.code_files(ROOT / "notebooks" / "06_ab_test.ipynb")


# ----------------------------------------------------------------------------- a fake run
@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root with the notebooks and a copy of the package (so its code can be edited)."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(
        st.PACKAGE_ROOT, tmp_path / "src" / "musicrec", ignore=shutil.ignore_patterns("__pycache__")
    )
    monkeypatch.setattr(st, "PACKAGE_ROOT", tmp_path / "src" / "musicrec")
    return tmp_path


def fake_artefacts(s: st.Stage, paths: RunPaths, text: str) -> None:
    """Write every required artefact of ``s`` (a file, or a folder with one file) holding ``text``."""
    for path, required in st.artefact_paths(s, paths):
        if not required:
            continue
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "part.parquet").write_text(text)


def run_all(profile, paths, data_path=None, text="v1", names=st.PIPELINE):
    for name in names:
        s = st.stage(name)
        with st.transaction(s, profile, paths, data_path):
            fake_artefacts(s, paths, text)


def tiny(root, **sections):
    profile = load_profile(ROOT / "params" / "tiny.yaml")
    return profile.model_copy(update=sections), RunPaths.for_profile(profile, root)


def test_a_complete_run_is_fresh_and_each_change_plans_exactly_its_stages(project):
    profile, paths = tiny(project)
    assert list(st.plan(profile, paths, names=st.PIPELINE)) == list(st.PIPELINE)
    run_all(profile, paths)
    assert st.plan(profile, paths, names=st.PIPELINE) == {}

    # only the ranking section: ranking and evaluation
    ranking = profile.model_copy(update={"ranking": profile.ranking.model_copy(update={"iterations": 7})})
    assert list(st.plan(ranking, paths, names=st.PIPELINE)) == ["04_ranking", "05_evaluation"]
    assert "profile changed: ranking" in st.plan(ranking, paths)["04_ranking"]
    # the ranker's training users decide which users the history fit lists: candidates too
    users = profile.model_copy(update={"ranking": profile.ranking.model_copy(update={"train_users": 5})})
    assert list(st.plan(users, paths, names=st.PIPELINE)) == ["03_candidates", "04_ranking", "05_evaluation"]
    # evaluation settings: evaluation alone
    ks = profile.model_copy(update={"evaluation": profile.evaluation.model_copy(update={"ks": [3]})})
    assert list(st.plan(ks, paths, names=st.PIPELINE)) == ["05_evaluation"]
    # another DATA_PATH: everything
    assert list(st.plan(profile, paths, "elsewhere", names=st.PIPELINE)) == list(st.PIPELINE)


def test_a_missing_or_edited_artefact_plans_its_stage_and_what_follows(project):
    profile, paths = tiny(project)
    run_all(profile, paths)
    paths.recommendations.unlink()
    plan = st.plan(profile, paths, names=st.PIPELINE)
    assert list(plan) == ["04_ranking", "05_evaluation"]
    assert "artefacts missing: outputs/tiny/recommendations.parquet" in plan["04_ranking"]
    run_all(profile, paths, names=("04_ranking", "05_evaluation"))
    assert st.plan(profile, paths, names=st.PIPELINE) == {}
    (paths.candidates / "part.parquet").write_text("edited by hand")
    assert list(st.plan(profile, paths, names=st.PIPELINE)) == [
        "03_candidates",
        "04_ranking",
        "05_evaluation",
    ]


def test_code_edits_plan_only_the_stages_that_import_it(project):
    profile, paths = tiny(project)
    run_all(profile, paths)
    package = project / "src" / "musicrec"
    for presentation in ("report.py", "plots.py", "cli.py", "service/app.py"):
        with open(package / presentation, "a") as f:
            f.write("\n# an edit\n")
    assert st.plan(profile, paths, names=st.PIPELINE) == {}, "no stage imports these"
    with open(package / "evaluation" / "lists.py", "a") as f:
        f.write("\n# an edit\n")
    # the ranking notebook's test check reads the models' lists through evaluation.model_lists
    plan = st.plan(profile, paths, names=st.PIPELINE)
    assert list(plan) == ["04_ranking", "05_evaluation"]
    assert "code changed: musicrec.evaluation.lists" in plan["05_evaluation"]
    notebook = project / "notebooks" / "02_eda.ipynb"
    notebook.write_text(notebook.read_text().replace("# 2. Exploratory analysis", "# 2. EDA", 1))
    assert "02_eda" in st.plan(profile, paths, names=st.PIPELINE)
    (project / "notebooks" / "01_data.ipynb").touch()
    assert "01_data" not in st.plan(profile, paths, names=st.PIPELINE), "times do not count, content does"


def test_a_failed_stage_leaves_the_previous_artefacts_and_stamp(project):
    profile, paths = tiny(project)
    run_all(profile, paths)
    stamp = st.stamp_path(paths, "01_data").read_text()
    with (
        pytest.raises(RuntimeError, match="the split does not fit"),
        st.transaction(st.stage("01_data"), profile, paths, "ml-100k"),
    ):
        paths.interactions.write_text("ml-100k listens")  # replaced, then the split fails
        raise RuntimeError("the split does not fit")
    assert paths.interactions.read_text() == "v1" and paths.split.read_text() == "v1"
    assert st.stamp_path(paths, "01_data").read_text() == stamp
    assert st.plan(profile, paths, names=st.PIPELINE) == {}, "the previous complete run stands"
    assert not paths.previous.exists()


def test_a_killed_stage_is_undone_at_the_next_start(project):
    profile, paths = tiny(project)
    run_all(profile, paths)
    # a run killed midway: the context never exits (kill -9 runs no finally), files half written
    killed = st.transaction(st.stage("03_candidates"), profile, paths)
    killed.__enter__()
    (paths.candidates).mkdir(parents=True, exist_ok=True)
    (paths.candidates / "part.parquet").write_text("half")
    temporary = paths.notebooks / ".03_candidates.x1y2.tmp.ipynb"
    temporary.write_text("")
    plan = st.plan(profile, paths, names=st.PIPELINE)
    assert plan["03_candidates"] == ["its last run was interrupted"]
    assert list(plan) == ["03_candidates", "04_ranking", "05_evaluation"]
    assert st.recover(st.stage("03_candidates"), paths)
    assert (paths.candidates / "part.parquet").read_text() == "v1"
    assert not temporary.exists()
    assert st.plan(profile, paths, names=st.PIPELINE) == {}


def test_a_second_run_of_the_same_run_is_refused_naming_the_holder(tmp_path):
    paths = RunPaths(tmp_path, "tiny")
    with (
        st.run_lock(paths, "musicrec stage 03_candidates"),
        pytest.raises(st.RunLocked, match=r"in use by pid \d+ \(musicrec stage 03_candidates"),
        st.run_lock(paths, "musicrec stage 01_data"),
    ):
        pass
    with st.run_lock(paths, "musicrec stage 01_data"):  # released
        pass


def test_the_report_ignores_a_killed_stages_temporary_notebook(tmp_path):
    from musicrec.report import build_report

    profile, paths = tiny(tmp_path)
    paths.notebooks.mkdir(parents=True)
    (paths.notebooks / ".03_candidates.abc.tmp.ipynb").write_text("")
    with pytest.raises(FileNotFoundError, match="no executed notebooks"):
        build_report(ROOT / "params" / "tiny.yaml", root=tmp_path)


def test_generator_lists_come_from_the_registry():
    import importlib
    import typing

    from musicrec import evaluation, generators
    from musicrec.candidates import recall
    from musicrec.config import RankingConfig
    from musicrec.ranking import features

    for spec in generators.GENERATORS:
        importlib.import_module(spec.module)
    assert recall.USER_LISTS == features.USER_GENERATORS == generators.USER_LISTS
    assert "top_popular" not in generators.USER_LISTS
    assert set(evaluation.GENERATORS) == set(generators.NAMES) and evaluation.GENERATORS[0] == "random"
    key_type = typing.get_args(RankingConfig.model_fields["candidates"].annotation)[0]
    assert typing.get_args(key_type) == generators.NAMES


def test_windows_read_once_give_each_windows_listens(tmp_path):
    import datetime as dt
    import json

    import polars as pl

    from musicrec.split import Windows

    (tmp_path / "split.json").write_text(
        json.dumps({"label_start": "2022-12-01", "test_start": "2022-12-16"})
    )
    windows = Windows.read(tmp_path / "split.json")
    days = [
        dt.datetime(2022, 11, 30, 23, 59),
        dt.datetime(2022, 12, 1),
        dt.datetime(2022, 12, 15, 23),
        dt.datetime(2022, 12, 16),
        dt.datetime(2022, 12, 31),
    ]
    listens = pl.LazyFrame({"started_at": days}).with_columns(pl.col("started_at").cast(pl.Datetime("ns")))

    def count(frame):
        return frame.collect().height

    assert count(windows.fit_listens(listens, "history")) == 1
    assert count(windows.fit_listens(listens, "history+labels")) == 3
    assert count(windows.target_listens(listens, "labels")) == 2
    assert count(windows.target_listens(listens, "test")) == 2
    with pytest.raises(ValueError, match="'labels' or 'test'"):
        windows.bounds("history")
    with pytest.raises(FileNotFoundError, match="run the data stage first"):
        Windows.read(tmp_path / "missing.json")
