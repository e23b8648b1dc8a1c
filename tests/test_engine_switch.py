"""make's ENGINE reaches the notebooks: ``musicrec stage --engine spark`` passes ``engine`` to the
notebook's parameters cell, :func:`musicrec.lab.open_run` loads the profile with it, and the stage's
stamp and provenance record it (no Spark needed: only the flag is checked)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from musicrec import stages as st
from musicrec.cli import main
from musicrec.config import load_profile
from musicrec.io import RunPaths
from musicrec.lab import open_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
OPEN_RUN = "open_run(params_path, data_path, root, scratch, engine)"


def _parameters_cell(path: Path) -> str:
    cells = nbformat.read(path, as_version=4).cells
    return next(c.source for c in cells if "parameters" in c.metadata.get("tags", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_takes_engine_and_passes_it_to_open_run(path):
    lines = _parameters_cell(path).splitlines()
    assert any(line.startswith('engine = ""') for line in lines)
    assert OPEN_RUN in "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)


def test_open_run_overrides_the_profiles_engine(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "notebooks").mkdir()
    shutil.copy(ROOT / "params" / "tiny.yaml", tmp_path / "params" / "tiny.yaml")
    profile, _ = open_run("params/tiny.yaml", "", tmp_path, "", "spark")
    assert profile.engine == "spark"
    profile, _ = open_run("params/tiny.yaml", "", tmp_path, "", "")
    assert profile.engine == "local"  # empty: the profile's own
    profile, paths = open_run("params/tiny.yaml", "", tmp_path, "lab", "spark")
    assert profile.engine == "spark" and paths.run == "tiny-lab"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project root with params/tiny.yaml and a one-cell 02_eda notebook that records the engine
    of the profile :func:`open_run` gives it (the real notebooks' parameters cell)."""
    (tmp_path / "params").mkdir()
    shutil.copy(ROOT / "params" / "tiny.yaml", tmp_path / "params" / "tiny.yaml")
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(_parameters_cell(ROOT / "notebooks" / "02_eda.ipynb"))
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "from musicrec.io import write_json\n"
        "from musicrec.lab import open_run\n\n"
        f"profile, paths = {OPEN_RUN}\n"
        'write_json({"engine": profile.engine, "parameter": engine}, paths.outputs / "seen.json")'
    )
    notebook.cells = [nbformat.v4.new_markdown_cell("# Stub"), parameters, body]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "notebooks").mkdir()
    nbformat.write(notebook, tmp_path / "notebooks" / "02_eda.ipynb")
    return tmp_path


def test_stage_engine_reaches_the_notebook_and_its_stamp(project):
    params = project / "params" / "tiny.yaml"
    args = ["stage", "02_eda", "--params", str(params), "--root", str(project)]
    assert main([*args, "--engine", "spark"]) == 0
    local = load_profile(params)
    paths = RunPaths.for_profile(local, project)
    assert json.loads((paths.outputs / "seen.json").read_text()) == {"engine": "spark", "parameter": "spark"}
    assert json.loads(paths.provenance.read_text())["02_eda"]["engine"] == "spark"
    assert st.read_stamp(paths, "02_eda")["fingerprint"]["engine"] == "spark"
    # the same stage planned on the local engine must rerun, and on spark it is fresh
    spark = load_profile(params, engine="spark")
    assert st.staleness(st.stage("02_eda"), spark, paths) == []
    assert st.staleness(st.stage("02_eda"), local, paths) == ["ENGINE changed ('spark' -> 'local')"]

    # without --engine: the profile's own (local)
    assert main(args) == 0
    assert json.loads((paths.outputs / "seen.json").read_text()) == {"engine": "local", "parameter": ""}
    assert json.loads(paths.provenance.read_text())["02_eda"]["engine"] == "local"


def test_stamps_without_an_engine_count_as_local(tmp_path):
    """Stamps written before the engine switch ran on the local engine: still fresh for it."""
    profile = load_profile(ROOT / "params" / "tiny.yaml")
    paths = RunPaths.for_profile(profile, tmp_path)
    new = st.fingerprint(st.stage("02_eda"), profile, paths)
    old = {key: value for key, value in new.items() if key != "engine"}
    assert st._differences(old, new) == []
    spark = st.fingerprint(st.stage("02_eda"), profile.model_copy(update={"engine": "spark"}), paths)
    assert st._differences(old, spark) == ["ENGINE changed ('local' -> 'spark')"]
