"""Provenance of each stage run, and the optional MLflow tracking, on a tiny profile.

The stage's notebook is not run: ``cli._execute`` is replaced by a fake that writes what the
real stage would (artefacts shaped like the tiny run's, a figure), so that ``cli.run_stage``
does everything else for real: the lock, the transaction, provenance.json and the MLflow store,
which the tests read back with MLflow's own client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import polars as pl
import pytest
import yaml

from musicrec import cli, provenance, tracking
from musicrec.config import ProfileError, load_profile
from musicrec.io import RunPaths

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # the store copies bytes; it needs no real image
EXECUTED: dict[Path, list[str]] = {}  # project root -> the stages whose (fake) notebook ran


# --------------------------------------------------------------------------- provenance
def test_provenance_outside_git_is_flat_json_with_commit_unknown(tmp_path):
    record = provenance.provenance(tmp_path, tmp_path / "params" / "x.yaml")
    assert record["git_commit"] == "unknown" and record["git_dirty"] is None
    assert record["profile"] == "params/x.yaml"  # relative to the project root
    assert all(not isinstance(v, dict | list) for v in record.values())
    assert json.loads(json.dumps(record)) == record
    import numpy
    import polars

    assert record["polars_version"] == polars.__version__
    assert record["numpy_version"] == numpy.__version__
    assert record["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert record["cpu_count"] == os.cpu_count()
    assert record["memory_gb"] > 0
    assert {f"{p.replace('-', '_')}_version" for p in provenance.PACKAGES} <= set(record)
    assert provenance.package_version("no-such-package-musicrec-test") is None


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_provenance_in_a_repository_has_its_commit_and_sees_a_dirty_tree(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert provenance.git_state(tmp_path) == (head, False)
    (tmp_path / "a.txt").write_text("two\n")
    assert provenance.git_state(tmp_path) == (head, True)


# --------------------------------------------------------------------------- the profile key
@pytest.mark.parametrize(
    ("value", "expected"), [("mlflow", "mlflow"), ("off", None), ("false", None), ("null", None)]
)
def test_tracking_key_values(tmp_path, value, expected):
    path = tmp_path / "p.yaml"
    path.write_text(f"tracking: {value}\n")
    assert load_profile(path).tracking == expected


def test_an_unknown_tracking_value_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("tracking: wandb\n")
    with pytest.raises(ProfileError, match=r"p\.yaml: tracking: .*'mlflow'.*\(got 'wandb'\)"):
        load_profile(path)


def test_tracking_is_off_by_default():
    assert load_profile(ROOT / "params" / "tiny.yaml").tracking is None


# --------------------------------------------------------------------------- a fake tiny run
METRIC_ROWS = [
    # model, k, metric, segment, value, lower, upper
    ("final", 10, "ndcg", "all", 0.23, 0.20, 0.26),
    ("final", 10, "recall", "all", 0.21, 0.18, 0.25),
    ("final", 10, "coverage", "all", 0.12, None, None),
    ("final", 10, "ndcg", "heavy", 0.31, 0.26, 0.36),  # another segment: not a headline
    ("final", 5, "ndcg", "all", 0.25, 0.21, 0.29),  # another k: not a headline
    ("top_popular", 10, "ndcg", "all", 0.18, 0.15, 0.21),
]
RANKING_SUMMARY = {
    "sampling": {"users": 262, "positive_rate": 0.02},
    "scoring": {"recall": {"top_10": 0.16}},
    "best_iteration": 27,
    "steps": [{"step": "fit", "seconds": 2.2, "peak_rss_gb": 0.46}],
    "note": "text is not a metric",
}


def fake_stage_outputs(stage: str, paths: RunPaths) -> None:
    """What the real stage writes that tracking reads, shaped like the tiny run's files."""
    if stage == "05_evaluation":
        rows = [
            dict(zip(("model", "k", "metric", "segment", "value", "lower", "upper"), r, strict=True))
            for r in METRIC_ROWS
        ]
        pl.DataFrame(rows).write_parquet(paths.metrics)
        paths.metrics_json.write_text(json.dumps(rows))
        paths.evaluation.write_text(json.dumps({"comparison": [], "verdicts": ["final beats top_popular"]}))
        paths.plots.mkdir(parents=True, exist_ok=True)
        paths.plot("evaluation_ndcg").write_bytes(PNG)
    elif stage == "04_ranking":
        paths.ranking.mkdir(parents=True, exist_ok=True)
        paths.ranking_summary.write_text(json.dumps(RANKING_SUMMARY))
        paths.recommendations.write_bytes(b"not read")
        paths.plots.mkdir(parents=True, exist_ok=True)
        paths.plot("ranking_curves").write_bytes(PNG)


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A project root with params/tiny.yaml (tracking on), stub notebooks, and a fake ``_execute``."""
    (tmp_path / "params").mkdir()
    raw = yaml.safe_load((ROOT / "params" / "tiny.yaml").read_text())
    (tmp_path / "params" / "tiny.yaml").write_text(yaml.safe_dump({**raw, "tracking": "mlflow"}))
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("params_path = ''\ndata_path = ''\nroot = ''\nscratch = ''")
    cell.metadata["tags"] = ["parameters"]
    notebook.cells = [cell]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    for stage in ("04_ranking", "05_evaluation"):
        nbformat.write(notebook, tmp_path / "notebooks" / f"{stage}.ipynb")
    # a figure of an earlier stage: not this stage's
    old = tmp_path / "plots" / "tiny" / "events_over_time.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(PNG)
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    calls = []

    def fake_execute(stage, params, source, target, parameters, paths, progress):
        calls.append(stage)
        fake_stage_outputs(stage, paths)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        return cli.StageRun(stage, 1.5, 321.0, target)

    monkeypatch.setattr(cli, "_execute", fake_execute)
    EXECUTED[tmp_path] = calls
    return tmp_path


def params_of(project: Path) -> Path:
    return project / "params" / "tiny.yaml"


def read_store(project: Path):
    client = tracking.client(project)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_a_stage_records_its_provenance(project):
    cli.run_stage("05_evaluation", params_of(project), root=project)
    recorded = json.loads((project / "outputs" / "tiny" / "provenance.json").read_text())
    assert list(recorded) == ["05_evaluation"]
    entry = recorded["05_evaluation"]
    assert entry["git_commit"] == "unknown"  # tmp_path is no repository
    assert entry["profile"] == "params/tiny.yaml"
    cli.run_stage("04_ranking", params_of(project), root=project)
    recorded = json.loads((project / "outputs" / "tiny" / "provenance.json").read_text())
    assert sorted(recorded) == ["04_ranking", "05_evaluation"]  # the earlier stage's entry kept


def test_each_stage_run_is_one_mlflow_run_with_params_metrics_and_artefacts(project):
    cli.run_stage("05_evaluation", params_of(project), root=project)
    cli.run_stage("04_ranking", params_of(project), root=project)
    assert (project / "mlruns").is_dir()
    client, runs = read_store(project)
    assert [r.info.run_name for r in runs] == ["05_evaluation", "04_ranking"]
    assert all(r.info.status == "FINISHED" for r in runs)
    evaluation, ranking = runs

    profile = load_profile(params_of(project))
    # params: the sections the stage reads (seed, evaluation), flattened; the tiny profile's own values
    params = evaluation.data.params
    assert params["seed"] == "7"
    assert params["evaluation.n_boot"] == str(profile.evaluation.n_boot)
    assert params["evaluation.ks"] == json.dumps(profile.evaluation.ks)
    assert not any(k.startswith(("candidates.", "data.")) for k in params)  # sections it does not read
    assert ranking.data.params["ranking.n"] == str(profile.ranking.n)
    assert ranking.data.params["candidates.audio.n"] == str(profile.candidates.audio.n)

    # metrics: the headline of metrics.json, the stage's time and memory
    metrics = evaluation.data.metrics
    assert metrics["final.ndcg_at_10"] == pytest.approx(0.23)
    assert metrics["final.ndcg_at_10.lower"] == pytest.approx(0.20)
    assert metrics["final.ndcg_at_10.upper"] == pytest.approx(0.26)
    assert metrics["final.recall_at_10"] == pytest.approx(0.21)
    assert metrics["final.coverage_at_10"] == pytest.approx(0.12)
    assert "final.coverage_at_10.lower" not in metrics  # coverage has no interval
    assert metrics["top_popular.ndcg_at_10"] == pytest.approx(0.18)
    assert not any(k.startswith("final.ndcg_at_5") for k in metrics)
    assert (metrics["stage.seconds"], metrics["stage.peak_rss_mb"]) == (1.5, 321.0)
    # the ranking stage: every number of ranking/summary.json (the folder's name first), list items by name
    metrics = ranking.data.metrics
    assert metrics["ranking.summary.sampling.users"] == 262
    assert metrics["ranking.summary.scoring.recall.top_10"] == pytest.approx(0.16)
    assert metrics["ranking.summary.steps.fit.seconds"] == pytest.approx(2.2)
    assert metrics["ranking.summary.best_iteration"] == 27

    # artefacts: the stage's figures (not an earlier stage's), its artefact paths, its provenance
    def files(run) -> set[str]:
        top = client.list_artifacts(run.info.run_id)
        inside = client.list_artifacts(run.info.run_id, "plots")
        return {a.path for a in top if not a.is_dir} | {a.path for a in inside}

    assert files(evaluation) == {"plots/evaluation_ndcg.png", "artefacts.json", "provenance.json"}
    assert files(ranking) == {"plots/ranking_curves.png", "artefacts.json", "provenance.json"}
    listed = json.loads(
        Path(client.download_artifacts(evaluation.info.run_id, "artefacts.json", str(project))).read_text()
    )
    paths = {a["path"]: a["bytes"] for a in listed["artefacts"]}
    metrics_parquet = project / "outputs" / "tiny" / "metrics.parquet"
    assert paths["outputs/tiny/metrics.parquet"] == metrics_parquet.stat().st_size
    assert "outputs/tiny/notebooks/05_evaluation.ipynb" in paths

    # tags: the stage, the run, the provenance
    tags = evaluation.data.tags
    assert (tags["musicrec.stage"], tags["musicrec.run"], tags["musicrec.git_commit"]) == (
        "05_evaluation",
        "tiny",
        "unknown",
    )
    assert "mlflow.source.git.commit" not in tags  # no commit to name


def test_tracking_off_writes_no_store(project):
    raw = yaml.safe_load(params_of(project).read_text())
    params_of(project).write_text(yaml.safe_dump({**raw, "tracking": None}))
    cli.run_stage("05_evaluation", params_of(project), root=project)
    assert not (project / "mlruns").exists()
    assert (project / "outputs" / "tiny" / "provenance.json").is_file()


def test_tracking_without_mlflow_stops_before_the_stage_runs(project, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(cli.StageError, match=r"tracking: mlflow.*pip install -e '\.\[tracking\]'"):
        cli.run_stage("05_evaluation", params_of(project), root=project)
    assert EXECUTED[project] == []  # the notebook never ran
    assert not (project / "outputs" / "tiny" / "metrics.parquet").exists()


def test_cli_reports_missing_mlflow_as_one_line(project, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code = cli.main(["stage", "05_evaluation", "--params", str(params_of(project)), "--root", str(project)])
    err = capsys.readouterr().err
    assert code == 1
    assert "pip install -e '.[tracking]'" in err and "Traceback" not in err


def test_flatten_keys_list_items_by_their_name():
    summary = {"runs": [{"generator": "als", "window": "history+labels", "fit_seconds": 1.0}, {"x": 2}]}
    assert dict(tracking.flatten(summary)) == {"runs.als.history+labels.fit_seconds": 1.0, "runs.1.x": 2}
    # MLflow refuses '+' in a key: it becomes '_'
    assert tracking._numbers(tracking.flatten(summary)) == {
        "runs.als.history_labels.fit_seconds": 1.0,
        "runs.1.x": 2.0,
    }
