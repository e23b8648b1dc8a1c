"""The README's results table comes from the runs' metrics.json, never typed by hand."""

from __future__ import annotations

import json

import pytest

from musicrec.results import END, START, interval_cell, results_table, update_readme


def write_metrics(root, run: str, rows: list[tuple[str, str, int, str, float, float | None, float | None]]):
    folder = root / "outputs" / run
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            [
                {"model": m, "metric": metric, "k": k, "segment": seg, "value": v, "lower": lo, "upper": hi}
                for m, metric, k, seg, v, lo, hi in rows
            ]
        )
    )


def test_table_has_a_row_per_model_and_a_column_per_run_and_metric(tmp_path):
    write_metrics(
        tmp_path,
        "a",
        [
            ("final", "ndcg", 10, "all", 0.25, 0.2, 0.3),
            ("final", "recall", 10, "all", 0.125, 0.1, 0.15),
            ("random", "ndcg", 10, "all", 0.0, 0.0, 0.0),
            ("random", "recall", 10, "all", 0.0, 0.0, 0.0),
            ("final", "ndcg", 10, "heavy", 0.9, 0.8, 1.0),  # another segment: not in the table
            ("final", "ndcg", 5, "all", 0.7, 0.6, 0.8),
        ],
    )  # another k: not in the table
    write_metrics(tmp_path, "b", [("final", "ndcg", 10, "all", 0.5, None, None)])
    lines = results_table(["a", "b"], tmp_path).splitlines()
    assert lines[0] == "| model | a ndcg@10 | a recall@10 | b ndcg@10 | b recall@10 |"
    assert lines[2] == "| final | 0.250 [0.200, 0.300] | 0.125 [0.100, 0.150] | 0.500 |  |"
    assert lines[3] == "| random | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] |  |  |"
    assert len(lines) == 4


def test_interval_cell():
    assert interval_cell(0.25, 0.2, 0.3) == "0.250 [0.200, 0.300]"
    assert interval_cell(0.25, 0.2, 0.3, digits=4) == "0.2500 [0.2000, 0.3000]"
    assert interval_cell(0.25, None, None) == "0.250"  # coverage: no interval
    assert interval_cell(None, None, None) == ""  # a NaN metric, null in metrics.json


def test_missing_run_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="'nope'"):
        results_table(["nope"], tmp_path)


def test_readme_block_is_replaced_and_the_rest_kept(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\noutro\n")
    update_readme(readme, "| new |")
    assert readme.read_text() == f"intro\n{START}\n| new |\n{END}\noutro\n"
    (tmp_path / "other.md").write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        update_readme(tmp_path / "other.md", "| new |")


def test_a_per_user_run_is_labelled_in_its_columns(tmp_path):
    write_metrics(tmp_path, "small", [("final", "ndcg", 10, "all", 0.5, 0.4, 0.6)])
    write_metrics(tmp_path, "big", [("final", "ndcg", 10, "all", 0.25, 0.2, 0.3)])
    for run, protocol in (("small", "per_user"), ("big", None)):
        (tmp_path / "data" / run).mkdir(parents=True)
        split = {"protocol": protocol} if protocol else {"label_start": "2022-12-01"}
        (tmp_path / "data" / run / "split.json").write_text(json.dumps(split))
    header = results_table(["small", "big"], tmp_path).splitlines()[0]
    columns = "small (per-user) ndcg@10 | small (per-user) recall@10 | big ndcg@10 | big recall@10"
    assert header == f"| model | {columns} |"
