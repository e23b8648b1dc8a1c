"""The HTML reports: the run card's numbers from metrics.json, the stage pages' frame, the tables."""

from __future__ import annotations

import json
import re

import nbformat
import polars as pl
import pytest

from musicrec.io import RunPaths, write_json
from musicrec.plots import cell_text, table
from musicrec.report import (
    headline_rows,
    metric_grid,
    oracle_caveats,
    render_notebook,
)


def row(model, metric, k, value, lower=None, upper=None, segment="all"):
    return dict(model=model, metric=metric, k=k, segment=segment, value=value, lower=lower, upper=upper)


@pytest.fixture
def run(tmp_path) -> RunPaths:
    paths = RunPaths(tmp_path, "card")
    rows = [
        row("final", "ndcg", 10, 0.20, 0.19, 0.21),
        row("personal_als", "ndcg", 10, 0.12, 0.11, 0.13),
        row("oracle", "ndcg", 10, 0.25, 0.24, 0.26),
        row("final", "recall", 10, 0.14, 0.13, 0.15),
        row("final", "coverage", 10, 0.271),
        row("final", "recall", 100, 0.363, 0.35, 0.37),
        row("oracle", "recall", 100, 0.339, 0.33, 0.35),
        row("final", "ndcg", 10, 0.18, 0.17, 0.19, segment="light"),
    ]
    write_json(rows, paths.metrics_json)
    comparison = {
        "metric": "ndcg",
        "k": 10,
        "model_a": "final",
        "model_b": "personal_als",
        "mean_a": 0.20,
        "mean_b": 0.12,
        "diff": 0.08,
        "lower": 0.075,
        "upper": 0.085,
    }
    write_json({"comparison": [comparison], "verdicts": []}, paths.evaluation)
    return paths


def test_the_run_card_marks_the_winner_and_gives_lift_and_share_with_intervals(run):
    rows = {r["model"]: r for r in headline_rows(run)}
    assert list(rows) == ["oracle (reference: true taste)", "final ★ winner", "personal_als"]
    final = rows["final ★ winner"]
    assert final["NDCG@10"] == "0.2000 [0.1900, 0.2100]"
    # lift: 0.08 / 0.12 = +67%, interval 0.075 / 0.12 = +62.5% and 0.085 / 0.12 = +70.8%
    assert final["lift over personal_als (NDCG)"] == "+67% [+62%, +71%]"
    # share of the oracle: 0.20 / 0.25 = 80%, its interval 0.19 / 0.25 and 0.21 / 0.25
    assert final["share of the oracle (NDCG)"] == "80% [76%, 84%]"
    assert final["coverage@10 (exact)"] == "27.1%" and rows["personal_als"]["recall@10"] == "–"


def test_the_oracle_is_flagged_where_a_model_beats_it(run):
    assert oracle_caveats(run) == ["recall@100: final 0.363 against 0.339"]


def test_the_metric_grid_holds_every_metric_k_and_segment(run):
    grid = metric_grid(run)
    assert "<th>recall@100</th>" in grid and "<th>coverage@10</th>" in grid
    assert "<td>light</td><td>final</td>" in grid and "0.1800 [0.1700, 0.1900]" in grid


def test_a_stage_page_is_titled_links_the_index_and_lists_its_sections(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# 4. Ranking"),
        nbformat.v4.new_markdown_cell("## Training rows\n\ntext"),
        nbformat.v4.new_markdown_cell("## Fitting the ranker"),
    ]
    source = tmp_path / "04_ranking.ipynb"
    nbformat.write(nb, source)
    page = render_notebook(source, tmp_path / "04_ranking.html", title="Ranking", run="card").read_text()
    assert re.search(r"<title>Ranking · musicrec card</title>", page)
    assert '<a href="index.html">' in page
    contents = re.search(r'class="mr-contents">(.*?)</span>', page).group(1)
    assert re.findall(r">([^<]+)</a>", contents) == ["Training rows", "Fitting the ranker"]


def test_tables_have_no_index_separators_whole_numbers_and_dashes():
    frame = pl.DataFrame(
        {"artist": [1703.0, None], "listens": [4116496, 7], "notes": [{"a": 1, "b": 2}, {"a": 3, "b": None}]}
    )
    html = table(frame).to_html()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert cells == ["1,703", "4,116,496", "a: 1, b: 2", "–", "7", "a: 3"]
    assert "<th" in html and "level0 row0" not in html, "no index column"
    assert cell_text("regularization=0.05, " * 20).endswith("0.05, "), "text in full"
    assert json.loads(json.dumps(cell_text(float("inf")))) == "∞"
