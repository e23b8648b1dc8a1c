"""Committed notebooks: reports in shape, without outputs, parameterised for papermill."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_stage_notebooks():
    assert [p.stem for p in NOTEBOOKS][:2] == ["01_data", "02_eda"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_reads_like_a_report(path):
    cells = json.loads(path.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and "params_path" in "".join(tagged[0]["source"])
    assert any("Conclusion" in "".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def test_the_readme_lists_every_make_target_and_no_path_outside_the_project():
    root = Path(__file__).resolve().parents[1]
    makefile, readme = (root / "Makefile").read_text(), (root / "README.md").read_text()
    targets = re.findall(r"^([a-z][a-z-]*):[^\n]*## ", makefile, flags=re.M)
    listed = set(re.findall(r"^\| `make ([a-z-]+)", readme, flags=re.M))
    missing = set(targets) - listed
    assert targets and not missing, f"not in the README's commands table: {missing}"
    assert "../shared" not in readme, "a user's clone has no ../shared"
