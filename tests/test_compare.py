"""`make compare`: the tables behind the page, the runs' labels, the errors, and the page itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import plotly.offline
import polars as pl
import pytest

from musicrec import cli
from musicrec import compare as cmp

ROOT = Path(__file__).resolve().parents[1]
TINY_METRICS = ROOT / "outputs" / "tiny" / "metrics.parquet"


def rows(model: str, metric: str, k: int, segment: str, value: float, half: float | None = 0.01) -> dict:
    lower, upper = (None, None) if half is None else (value - half, value + 2 * half)
    return {
        "model": model,
        "k": k,
        "metric": metric,
        "segment": segment,
        "value": value,
        "lower": lower,
        "upper": upper,
    }


def run_a() -> list[dict]:
    """Two models, two segments, two ks; coverage measured at 10 only (as the evaluation does)."""
    return [
        rows("top_popular", "ndcg", 10, "all", 0.10),
        rows("final", "ndcg", 10, "all", 0.30),
        rows("final", "ndcg", 10, "cold", 0.05),
        rows("final", "ndcg", 10, "heavy", 0.40),
        rows("final", "ndcg", 5, "all", 0.35),
        rows("final", "recall", 10, "all", 0.20),
        rows("oracle", "ndcg", 10, "all", 0.60),
        rows("final", "coverage", 10, "all", 0.25, half=None),
        rows("top_popular", "coverage", 10, "all", 0.01, half=None),
        rows("final", "coverage", 10, "heavy", 0.5, half=None),
    ]


def run_b() -> list[dict]:
    """No oracle (a real source) and no top_popular coverage."""
    return [
        rows("final", "ndcg", 10, "all", 0.50),
        rows("top_popular", "ndcg", 10, "all", 0.20),
        rows("final", "ndcg", 100, "all", 0.55),
        rows("final", "ndcg", 10, "light", 0.45),
        rows("final", "coverage", 10, "all", 0.75, half=None),
    ]


def write_run(root: Path, run: str, metrics: list[dict], as_json: bool = False) -> Path:
    folder = root / "outputs" / run
    folder.mkdir(parents=True, exist_ok=True)
    if as_json:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    else:
        pl.DataFrame(metrics).with_columns(pl.col("k").cast(pl.Int32)).write_parquet(
            folder / "metrics.parquet"
        )
    return folder


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "a.yaml").write_text("seed: 1\n")
    (tmp_path / "params" / "other.yaml").write_text("run_name: b\nseed: 2\n")
    write_run(tmp_path, "a", run_a())
    write_run(tmp_path, "b", run_b())
    return tmp_path


# --------------------------------------------------------------------------- tables
def test_load_metrics_stacks_the_runs_with_a_run_column(project):
    metrics = cmp.load_metrics(project, ["a", "b", "a"])  # a name twice: once
    assert metrics.columns == ["run", *cmp.COLUMNS]
    assert metrics.group_by("run").len().sort("run").rows() == [("a", len(run_a())), ("b", len(run_b()))]


def test_headline_table_has_a_row_per_run_and_model_with_coverage(project):
    table = cmp.headline_table(cmp.load_metrics(project, ["b", "a"]), "ndcg", 10)
    # runs in the order asked for; final first, the oracle last
    assert table.select("run", "model").rows() == [
        ("b", "final"),
        ("b", "top_popular"),
        ("a", "final"),
        ("a", "top_popular"),
        ("a", "oracle"),
    ]
    final_a = table.row(2, named=True)
    assert final_a["value"] == pytest.approx(0.30)
    assert (final_a["lower"], final_a["upper"]) == pytest.approx((0.29, 0.32))
    assert (final_a["coverage"], final_a["coverage_k"]) == (pytest.approx(0.25), 10)
    # coverage of all users, not of the heavy segment; none measured for b's top_popular or a's oracle
    assert table.filter(pl.col("run") == "b")["coverage"].to_list() == [pytest.approx(0.75), None]
    assert table.row(4, named=True)["coverage"] is None


def test_headline_table_takes_coverage_at_its_own_k_when_asked_for_another(project):
    table = cmp.headline_table(cmp.load_metrics(project, ["a"]), "ndcg", 5)
    assert table.rows(named=True) == [
        {
            "run": "a",
            "model": "final",
            "value": pytest.approx(0.35),
            "lower": pytest.approx(0.34),
            "upper": pytest.approx(0.37),
            "coverage": pytest.approx(0.25),
            "coverage_k": 10,
        }
    ]


def test_segment_table_keeps_the_segments_in_their_order(project):
    table = cmp.segment_table(cmp.load_metrics(project, ["a", "b"]), "ndcg", 10)
    final_a = table.filter((pl.col("run") == "a") & (pl.col("model") == "final"))
    assert final_a["segment"].to_list() == ["all", "heavy", "cold"]
    assert final_a["value"].to_list() == pytest.approx([0.30, 0.40, 0.05])
    assert table.filter(pl.col("run") == "b")["segment"].to_list() == ["all", "light", "all"]


def test_k_table_has_every_k_of_the_segment(project):
    table = cmp.k_table(cmp.load_metrics(project, ["a", "b"]), "ndcg")
    final = table.filter(pl.col("model") == "final")
    assert final.select("run", "k", "value").rows() == [
        ("a", 5, pytest.approx(0.35)),
        ("a", 10, pytest.approx(0.30)),
        ("b", 10, pytest.approx(0.50)),
        ("b", 100, pytest.approx(0.55)),
    ]


def test_wide_table_has_a_cell_per_run_empty_where_the_run_lacks_the_model(project):
    wide = cmp.wide_table(cmp.headline_table(cmp.load_metrics(project, ["a", "b"]), "ndcg", 10))
    assert wide == [
        {"model": "final", "a": "0.3000 [0.2900, 0.3200]", "b": "0.5000 [0.4900, 0.5200]"},
        {"model": "top_popular", "a": "0.1000 [0.0900, 0.1200]", "b": "0.2000 [0.1900, 0.2200]"},
        {"model": "oracle", "a": "0.6000 [0.5900, 0.6200]", "b": ""},
    ]


def test_metrics_json_stands_in_for_a_missing_parquet_file(tmp_path):
    write_run(tmp_path, "old", run_b(), as_json=True)
    metrics = cmp.load_metrics(tmp_path, ["old"])
    assert metrics.height == len(run_b())
    assert cmp.run_label(tmp_path, "old").metrics_file == "outputs/old/metrics.json"


# --------------------------------------------------------------------------- errors
def test_a_run_that_does_not_exist_is_named_with_the_command_that_makes_it(project):
    with pytest.raises(cmp.CompareError) as error:
        cmp.load_metrics(project, ["a", "nope", "b"])
    message = str(error.value)
    assert "run 'nope' does not exist" in message
    assert "'a'" not in message and "'b'" not in message
    assert "no profile in params/ makes a run named 'nope'" in message


def test_a_run_without_metrics_names_its_profile_by_run_name(project):
    (project / "outputs" / "a" / "metrics.parquet").unlink()
    (project / "outputs" / "b" / "metrics.parquet").unlink()
    with pytest.raises(cmp.CompareError) as error:
        cmp.load_metrics(project, ["a", "b"])
    lines = str(error.value).splitlines()
    assert len(lines) == 3  # the heading and one line per run
    assert "run 'a' has no metrics yet" in lines[1] and "`make evaluate PARAMS=params/a.yaml`" in lines[1]
    # run b is made by params/other.yaml, whose run_name is b
    assert "run 'b' has no metrics yet" in lines[2] and "`make evaluate PARAMS=params/other.yaml`" in lines[2]


def test_a_path_is_not_a_run_name(project):
    with pytest.raises(cmp.CompareError, match="'../a' is not a run name"):
        cmp.load_metrics(project, ["../a"])


def test_cli_says_which_run_is_missing_without_a_traceback(project, capsys):
    assert cli.main(["compare", "a", "lastfm", "--root", str(project)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("musicrec compare: cannot compare:")
    assert "run 'lastfm' does not exist" in err
    assert "Traceback" not in err
    assert not list((project / "outputs").glob("compare-*"))


def test_an_unknown_metric_is_an_error_naming_the_ones_there_are(project, capsys):
    assert cli.main(["compare", "a", "--metric", "mrr", "--root", str(project)]) == 1
    assert "no mrr@10 in these runs' metrics (metrics at k=10: ndcg, recall)" in capsys.readouterr().err


# --------------------------------------------------------------------------- labels
def provenance_entry(commit: str, dirty: bool, time: str, profile: str = "params/a.yaml") -> dict:
    return {"git_commit": commit, "git_dirty": dirty, "time": time, "profile": profile}


def test_label_comes_from_the_evaluation_stage_provenance(project):
    (project / "outputs" / "a" / "provenance.json").write_text(
        json.dumps(
            {
                "05_evaluation": provenance_entry("a" * 40, True, "2026-03-04T05:06:07+00:00"),
                "06_ab_test": provenance_entry("b" * 40, False, "2026-03-05T00:00:00+00:00"),
            }
        )
    )
    label = cmp.run_label(project, "a")
    assert (label.profile, label.commit, label.dirty) == ("params/a.yaml", "a" * 40, True)
    assert label.short_commit == "aaaaaaaa+dirty"
    assert label.text() == "a: params/a.yaml, aaaaaaaa+dirty, 2026-03-04 05:06"


def test_label_without_provenance_says_unknown_and_finds_the_profile(project):
    (project / "outputs" / "b" / "timings.json").write_text(
        json.dumps({"05_evaluation": {"finished": "2026-01-02T03:04:05"}})
    )
    label = cmp.run_label(project, "b")
    assert (label.profile, label.commit, label.dirty, label.when) == (
        "params/other.yaml",
        "unknown",
        None,
        "2026-01-02 03:04",
    )
    assert label.short_commit == "unknown"


# --------------------------------------------------------------------------- figures and page
def test_coverage_figure_puts_each_run_and_model_at_its_coverage_with_error_bars(project):
    metrics = cmp.load_metrics(project, ["a", "b"])
    labels = {r: cmp.run_label(project, r) for r in ("a", "b")}
    fig = cmp.coverage_figure(metrics, labels, "ndcg", 10)
    shown = [t for t in fig.data if t.visible]
    assert [t.name.split(" ")[0] for t in shown] == ["a", "b"]
    a = shown[0]
    # the oracle of run a has no coverage: no point for it
    assert list(a.text) == ["final", "top_popular"]
    assert list(a.x) == pytest.approx([0.25, 0.01])
    assert list(a.y) == pytest.approx([0.30, 0.10])
    assert list(a.error_y.array) == pytest.approx([0.02, 0.02])  # upper - value
    assert list(a.error_y.arrayminus) == pytest.approx([0.01, 0.01])  # value - lower
    # the menu offers the metrics there are at k=10, and shows one metric's traces at a time
    menu = fig.layout.updatemenus[0]
    assert [b.label for b in menu.buttons] == ["NDCG", "recall"]
    assert sum(menu.buttons[1].args[0]["visible"]) == 2  # recall: one trace per run


def test_segment_and_k_figures_have_a_column_per_run_and_a_colour_per_model(project):
    metrics = cmp.load_metrics(project, ["a", "b"])
    labels = {r: cmp.run_label(project, r) for r in ("a", "b")}
    segments = cmp.segment_figure(metrics, labels, "ndcg", 10)
    bars = [t for t in segments.data if t.visible and t.name == "final"]
    assert [list(t.x) for t in bars] == [["all", "heavy", "cold"], ["all", "light"]]
    assert bars[0].marker.color == bars[1].marker.color
    assert [t.showlegend for t in bars] == [True, False]  # one legend entry per model
    assert "params/other.yaml" in segments.layout.annotations[1].text  # the run's label as its title
    ks = cmp.k_figure(metrics, labels, "ndcg")
    lines = [t for t in ks.data if t.visible and t.name == "final"]
    assert [list(t.x) for t in lines] == [["5", "10"], ["10", "100"]]


def test_the_page_is_written_atomically_with_plotly_inline_once(project):
    (project / "outputs" / "a" / "provenance.json").write_text(
        json.dumps({"05_evaluation": provenance_entry("0123456789" * 4, False, "2026-03-04T05:06:07+00:00")})
    )
    page = cmp.write_compare(["a", "b"], project)
    assert page == project / "outputs" / "compare-a-b.html"
    text = page.read_text()
    plotly_js = plotly.offline.get_plotlyjs()
    assert text.count(plotly_js[:200]) == 1
    assert "<script src=" not in text  # nothing to fetch: the page works offline
    assert text.count("Plotly.newPlot(") == 3
    for cell in (
        "01234567",
        "0123456789" * 4,
        "params/a.yaml",
        "params/other.yaml",
        "0.3000 [0.2900, 0.3200]",
    ):
        assert cell in text
    assert sorted(p.name for p in (project / "outputs").iterdir()) == ["a", "b", "compare-a-b.html"]


def test_make_compare_target_runs_the_subcommand_with_RUNS():
    makefile = (ROOT / "Makefile").read_text()
    assert "RUNS ?= default" in makefile
    assert "\n\t$(PY) -m musicrec compare $(RUNS)\n" in makefile
    assert any(line.startswith("compare:") and "## " in line for line in makefile.splitlines())


@pytest.mark.skipif(
    not TINY_METRICS.is_file(), reason="no tiny run in outputs/tiny (make all PARAMS=params/tiny.yaml)"
)
def test_the_page_from_a_real_tiny_run(tmp_path):
    for run in ("tiny", "copy"):
        (tmp_path / "outputs" / run).mkdir(parents=True)
        shutil.copy(TINY_METRICS, tmp_path / "outputs" / run / "metrics.parquet")
    metrics = cmp.load_metrics(tmp_path, ["tiny", "copy"])
    real = pl.read_parquet(TINY_METRICS)
    headline = cmp.headline_table(metrics, "ndcg", 10)
    want = real.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10) & (pl.col("segment") == "all"))
    assert headline.height == 2 * want.height
    final = headline.filter((pl.col("run") == "copy") & (pl.col("model") == "final")).row(0, named=True)
    assert final["value"] == pytest.approx(want.filter(pl.col("model") == "final")["value"][0])
    page = cmp.write_compare(["tiny", "copy"], tmp_path, out=tmp_path / "page.html")
    assert page.stat().st_size > len(plotly.offline.get_plotlyjs())
