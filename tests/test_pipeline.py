"""End to end: `make all` on the tiny profile in a copy of the project, with papermill.

The copy shares this test run's virtual environment (``VENV=...``), so nothing is
installed again; the data, outputs and plots land in the copy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from musicrec import generators
from musicrec.schema import CATALOG_NAMES_SCHEMA, INTERACTIONS_SCHEMA, TRACKS_SCHEMA
from musicrec.stages import PIPELINE

ROOT = Path(__file__).resolve().parents[1]
STAGES = PIPELINE  # musicrec.stages
pytestmark = pytest.mark.slow


def copy_project(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, dest / name)
    for folder in ("notebooks", "params", "src"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    return dest


def make(project: Path, *args: str) -> subprocess.CompletedProcess:
    venv = Path(sys.prefix)
    # SKIP_SETUP: never reinstall the package into this environment from the copy
    return subprocess.run(
        ["make", *args, f"VENV={venv}", "SKIP_SETUP=1"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    if not (Path(sys.prefix) / ".installed").is_file():
        pytest.skip("runs inside the project's virtual environment (make test)")
    dest = copy_project(tmp_path_factory.mktemp("project"))
    result = make(dest, "all", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def test_artefacts_have_the_contract_columns(project):
    data = project / "data" / "tiny"
    inter = pl.read_parquet(data / "interactions.parquet")
    assert dict(inter.schema) == INTERACTIONS_SCHEMA
    tracks = pl.read_parquet(data / "tracks.parquet")
    assert dict(tracks.schema) == TRACKS_SCHEMA
    assert dict(pl.read_parquet(data / "catalog_names.parquet").schema) == CATALOG_NAMES_SCHEMA
    assert (data / "track_features.parquet").is_file()
    assert (data / "oracle" / "user_taste.parquet").is_file()
    assert tracks.height == 3000  # params/tiny.yaml
    assert inter.get_column("user_id").n_unique() <= 400


def test_split_counts_add_up(project):
    data = project / "data" / "tiny"
    split = json.loads((data / "split.json").read_text())
    inter = pl.read_parquet(data / "interactions.parquet")
    windows = split["windows"]
    assert sum(w["rows"] for w in windows.values()) == inter.height
    assert (split["label_start"], split["test_start"]) == ("2022-12-01", "2022-12-16")
    test = inter.filter(pl.col("started_at") >= pl.datetime(2022, 12, 16))
    assert windows["test"]["rows"] == test.height
    assert windows["test"]["users"] == test.get_column("user_id").n_unique()
    before = inter.filter(pl.col("started_at") < pl.datetime(2022, 12, 16))
    cold = set(test.get_column("user_id")) - set(before.get_column("user_id"))
    assert windows["test"]["cold_users"] == len(cold)
    summary = json.loads((data / "summary.json").read_text())
    assert summary["rows"] == inter.height and summary["source"] == "synthetic"


def test_notebooks_plots_and_report(project):
    out = project / "outputs" / "tiny"
    for stage in STAGES:
        executed = json.loads((out / "notebooks" / f"{stage}.ipynb").read_text())
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and "params/tiny.yaml" in "".join(injected[0]["source"])
        assert not any(
            o.get("output_type") == "error" for c in executed["cells"] for o in c.get("outputs", [])
        )
    plots = {p.stem for p in (project / "plots" / "tiny").glob("*.png")}
    assert {
        "window_sizes",
        "listens_per_user",
        "listens_per_track",
        "events_over_time",
        "genres",
        "artists",
        "calibration",
        "candidate_recall",
        "candidates_times",
        "ranking_curves",
        "ranking_importance",
        "ranking_recall",
        "ranking_ndcg",
        "evaluation_ndcg",
        "evaluation_recall",
        "evaluation_curves",
        "evaluation_popularity_bias",
        "evaluation_coverage",
        "evaluation_candidate_recall",
    } <= plots
    index = (out / "reports" / "index.html").read_text()
    for page in (f"{stage}.html" for stage in STAGES):
        assert f'href="{page}"' in index
        report = (out / "reports" / page).read_text()
        assert "<img" in report or "image/png" in report
        assert "load_profile(" not in report, "reports carry no code"
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == set(STAGES)


def planned(project: Path, *args: str) -> list[str]:
    """The stages `make -n all` would run."""
    dry = make(project, "-n", "all", "PARAMS=params/tiny.yaml", *args)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    return re.findall(r"musicrec stage .* (0\d_\w+)", dry.stdout)


def test_second_run_runs_nothing_and_changes_rerun_stages(project):
    dry = make(project, "-n", "all", "PARAMS=params/tiny.yaml")
    assert dry.returncode == 0 and "musicrec stage" not in dry.stdout, dry.stdout
    assert "musicrec report" not in dry.stdout
    notebook = project / "notebooks" / "02_eda.ipynb"
    notebook.touch()
    assert planned(project) == [], "a touched file with the same content reruns nothing"
    original = notebook.read_text()
    notebook.write_text(original.replace("# 2. Exploratory analysis", "# 2. EDA", 1))
    assert planned(project) == ["02_eda"]
    notebook.write_text(original)
    assert planned(project) == []
    assert planned(project, "DATA_PATH=elsewhere") == list(STAGES), "a new DATA_PATH reruns everything"


def test_make_plans_exactly_the_stages_a_change_touches(project):
    recommendations = project / "outputs" / "tiny" / "recommendations.parquet"
    kept = recommendations.read_bytes()
    recommendations.unlink()
    assert planned(project) == ["04_ranking", "05_evaluation"]
    recommendations.write_bytes(kept)  # the same bytes, a new file time: still changed since it ran
    assert planned(project) == ["04_ranking", "05_evaluation"]
    profile = project / "params" / "tiny.yaml"
    original = profile.read_text()
    try:
        profile.write_text(original + "ranking:\n  iterations: 30\n")
        assert planned(project) == ["04_ranking", "05_evaluation"]
    finally:
        profile.write_text(original)
    result = make(project, "ranking", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned(project) == ["05_evaluation"]
    result = make(project, "all", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = make(project, "plan", "PARAMS=params/tiny.yaml")
    assert "every stage is fresh" in plan.stdout, plan.stdout + plan.stderr


def test_a_failed_data_stage_keeps_the_previous_run(project):
    """The reproduction of issue 12: a data stage that fails at the split (after replacing the
    listens) used to leave the new listens, no split.json, and a stamp saying fresh."""
    data = project / "data" / "tiny"
    before = {p.name: p.read_bytes() for p in data.glob("*.*")}
    (project / "params" / "tiny_late.yaml").write_text(
        (project / "params" / "tiny.yaml")
        .read_text()
        .replace("2022-12-01", "2030-12-01")
        .replace("2022-12-16", "2030-12-16")
        .replace("seed: 7", "seed: 8")
        + "run_name: tiny\n"
    )
    result = make(project, "data", "PARAMS=params/tiny_late.yaml")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert {p.name: p.read_bytes() for p in data.glob("*.*")} == before, "the previous data is back"
    assert planned(project) == [], "the previous complete run stands"
    assert not (project / "outputs" / "tiny" / ".previous").exists()


def test_a_killed_stage_never_breaks_a_later_run(project):
    notebooks = project / "outputs" / "tiny" / "notebooks"
    (notebooks / ".03_candidates.k1ll3d.tmp.ipynb").write_text("")  # what kill -9 leaves behind
    (project / "outputs" / "tiny" / "reports" / "index.html").unlink()
    result = make(project, "all", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "musicrec stage" not in result.stdout, "nothing was stale"


def test_broken_profile_gives_one_paragraph(project):
    (project / "params" / "broken.yaml").write_text("split:\n  test_start: someday\n")
    result = make(project, "data", "PARAMS=params/broken.yaml")
    assert result.returncode != 0
    assert "split.test_start" in result.stderr and "Traceback" not in result.stderr


def test_broken_input_file_gives_one_paragraph(project, tmp_path):
    raw = tmp_path / "movielens"
    raw.mkdir()
    (raw / "ratings.csv").write_text("userId,movieid,rating,timestamp\n1,1,5.0,964982703\n")
    (raw / "movies.csv").write_text("movieId,title,genres\n1,Toy Story (1995),Comedy\n")
    result = make(project, "data", "PARAMS=params/movielens.yaml", f"DATA_PATH={raw}")
    assert result.returncode != 0
    assert "ratings.csv" in result.stderr and "movieId" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if "musicrec stage" in line]
    assert len(message) == 1


@pytest.mark.parametrize(
    "source, folder",
    [
        ("ium", "ium23l-music-v2"),
        ("movielens", "ml-latest-small"),
        ("lastfm", "hetrec2011-lastfm-2k"),
    ],
)
def test_real_profiles_run_end_to_end(project, shared_data, source, folder):
    result = make(project, "all", f"PARAMS=params/{source}.yaml", f"DATA_PATH={shared_data / folder}")
    assert result.returncode == 0, result.stdout + result.stderr
    split = json.loads((project / "data" / source / "split.json").read_text())
    assert all(w["rows"] > 0 for w in split["windows"].values())
    assert (project / "outputs" / source / "reports" / "index.html").is_file()


def test_bench_records_time_and_memory_per_stage(project):
    result = make(project, "bench", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    bench = json.loads((project / "outputs" / "tiny" / "bench.json").read_text())
    assert [row["stage"] for row in bench["stages"]] == list(STAGES)
    for row in bench["stages"]:
        assert row["seconds"] > 0
        assert row["peak_rss_mb"] > 50, "the kernel's memory, not the runner's"
    assert "peak RSS" in result.stdout
    assert {"training rows", "fit", "scoring"} <= {step["step"] for step in bench["ranking_steps"]}


USER_LISTS = generators.USER_LISTS  # every generator that writes per-user lists
SIMILAR_LISTS = ("similar", "content_similar", "audio_similar")


@pytest.mark.parametrize("window", ["history", "history+labels"])
def test_candidate_lists_keep_the_contract(project, window):
    data, out = project / "data" / "tiny", project / "outputs" / "tiny" / "candidates"
    folder = out / "history" if window == "history" else out
    split = json.loads((data / "split.json").read_text())
    end = split["label_start"] if window == "history" else split["test_start"]
    inter = pl.read_parquet(data / "interactions.parquet").filter(
        pl.col("started_at") < pl.lit(end).str.to_datetime().cast(pl.Datetime("ns"))
    )
    heard = inter.select("user_id", "track_id")
    track_ids = pl.read_parquet(data / "tracks.parquet").get_column("track_id").implode()
    popular = pl.read_parquet(folder / "top_popular.parquet")
    assert popular.get_column("rank").to_list() == list(range(1, popular.height + 1))
    for name in USER_LISTS:
        lists = pl.read_parquet(folder / f"{name}.parquet")
        assert lists.columns == ["user_id", "track_id", "score", "rank"], name
        gaps = lists.group_by("user_id").agg((pl.col("rank").sort() == pl.int_range(1, pl.len() + 1)).all())
        assert gaps.get_column("rank").all(), f"{name}: ranks 1..N without gaps"
        assert lists.join(heard, on=["user_id", "track_id"]).height == 0, f"{name}: heard tracks"
        assert lists.get_column("track_id").is_in(track_ids).all(), f"{name}: source track ids"
        assert lists.get_column("user_id").is_in(heard.get_column("user_id").implode()).all()
        # params/tiny.yaml asks for 200; content and i2i lists can be shorter (few shared tokens)
        assert (
            lists.get_column("rank").max() == 200
            if name in ("personal_als", "random")
            else lists.get_column("rank").max() <= 200
        )
    for name in SIMILAR_LISTS:
        near = pl.read_parquet(folder / f"{name}.parquet")
        assert near.columns == ["track_id", "similar_track_id", "score", "rank"], name
        assert near.filter(pl.col("track_id") == pl.col("similar_track_id")).height == 0, name
        assert near.get_column("similar_track_id").is_in(track_ids).all()
    assert (project / "outputs" / "tiny" / "models" / "als.npz").is_file()


def test_running_make_in_a_copy_leaves_this_environment_alone(project):
    where = subprocess.run(
        [sys.executable, "-c", "import musicrec; print(musicrec.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(ROOT), where


def test_recommendations_keep_the_contract(project):
    data, out = project / "data" / "tiny", project / "outputs" / "tiny"
    split = json.loads((data / "split.json").read_text())
    test_start = pl.lit(split["test_start"]).str.to_datetime().cast(pl.Datetime("ns"))
    inter = pl.read_parquet(data / "interactions.parquet")
    before = inter.filter(pl.col("started_at") < test_start)
    cold = inter.filter(pl.col("started_at") >= test_start).join(before, on="user_id", how="anti")
    recos = pl.read_parquet(out / "recommendations.parquet")
    assert recos.columns == ["user_id", "track_id", "score", "rank", "source"]
    n = 100  # ranking.n's default; tiny does not change it
    assert recos.group_by("user_id").len().get_column("len").max() <= n
    gaps = recos.group_by("user_id").agg((pl.col("rank").sort() == pl.int_range(1, pl.len() + 1)).all())
    assert gaps.get_column("rank").all(), "ranks 1..N without gaps"
    assert recos.join(before.select("user_id", "track_id"), on=["user_id", "track_id"]).height == 0, (
        "no already-heard track"
    )
    warm = recos.filter(pl.col("source") == "final")
    assert set(warm.get_column("user_id")) == set(before.get_column("user_id"))
    popular = pl.read_parquet(out / "candidates" / "top_popular.parquet").sort("rank").head(n)
    cold_lists = recos.filter(pl.col("source") == "top_popular")
    assert set(cold_lists.get_column("user_id")) == set(cold.get_column("user_id"))
    for _, part in cold_lists.group_by("user_id"):
        assert part.sort("rank").get_column("track_id").to_list() == popular.get_column("track_id").to_list()
    # a list is exactly n long where enough candidates exist: ALS alone offers 100 unheard tracks
    # (ranking.candidates) to nearly every user of tiny's 3,000-track catalogue
    assert (warm.group_by("user_id").len().get_column("len") == n).mean() > 0.95
    assert (out / "models" / "ranker.cbm").is_file()
    summary = json.loads((out / "ranking" / "summary.json").read_text())
    assert summary["scoring"]["cold_users"] == cold.get_column("user_id").n_unique()


def test_metrics_and_the_index_page(project):
    out = project / "outputs" / "tiny"
    metrics = pl.read_parquet(out / "metrics.parquet")
    assert metrics.columns == ["model", "k", "metric", "segment", "value", "lower", "upper"]
    assert pl.DataFrame(json.loads((out / "metrics.json").read_text())).height == metrics.height
    models = set(metrics.get_column("model"))
    assert {"random", "top_popular", "personal_als", "i2i_history", "final", "oracle"} <= models
    assert {"all", "light", "medium", "heavy", "cold"} <= set(metrics.get_column("segment"))
    ndcg = metrics.filter((pl.col("metric") == "ndcg") & (pl.col("k") == 10) & (pl.col("segment") == "all"))
    assert (ndcg.get_column("lower") <= ndcg.get_column("value")).all()
    assert (ndcg.get_column("value") <= ndcg.get_column("upper")).all()
    index = (out / "reports" / "index.html").read_text()
    assert "Results on the test window" in index and "NDCG@10" in index
    for model in ndcg.get_column("model"):
        assert re.search(rf"<td>{model}( ★ winner| \(reference[^<]*\))?</td>", index), f"{model} missing"
    best = ndcg.filter(pl.col("model") != "oracle").sort("value", descending=True).get_column("model")[0]
    assert index.count("★ winner") == 1 and f"<td>{best} ★ winner</td>" in index
    verdicts = json.loads((out / "evaluation.json").read_text())["verdicts"]
    assert verdicts and all(v in index for v in verdicts)
    for link in re.findall(r'href="([^"#][^"]*)"', index):
        assert (out / "reports" / link).is_file(), f"broken link {link}"
    for anchor in re.findall(r'href="#([^"]+)"', index):
        assert f'id="{anchor}"' in index, f"broken anchor {anchor}"


def test_index_page_screenshot(project):
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    result = make(project, "screenshot", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    png = project / "outputs" / "tiny" / "reports" / "index.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_abtest_replays_the_test_window_on_demand(project):
    out = project / "outputs" / "tiny"
    assert not (out / "notebooks" / "06_ab_test.ipynb").exists(), "make all does not run the A/B replay"
    result = make(project, "abtest", "PARAMS=params/tiny.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    executed = json.loads((out / "notebooks" / "06_ab_test.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "params/tiny.yaml" in "".join(injected[0]["source"])
    assert not any(o.get("output_type") == "error" for c in executed["cells"] for o in c.get("outputs", []))
    abtest = json.loads((out / "service" / "abtest.json").read_text())
    test_window = json.loads((project / "data" / "tiny" / "split.json").read_text())["windows"]["test"]
    replay = abtest["replay"]
    # tiny has fewer test-window users than the notebook's max_users: every one is replayed
    assert (replay["users"], replay["events_posted"]) == (test_window["users"], test_window["rows"])
    assert (
        replay["requests"]
        == replay["sessions"]
        == sum(v["recommendations"] for v in abtest["results"]["variants"])
    )
    assert [v["variant"] for v in abtest["results"]["variants"]] == ["blended", "offline"]
    assert abtest["verdict"].startswith("At 95% confidence")
    assert {"ab_success", "ab_success_by_day"} <= {p.stem for p in (project / "plots" / "tiny").glob("*.png")}
    report = (out / "reports" / "06_ab_test.html").read_text()
    assert "image/png" in report and "replay(" not in report, "the report carries figures, no code"
    # progress as plain lines (at most one every 10 s), never a redrawn tqdm bar
    assert "session/s" not in report and "\r" not in report
    lines = re.findall(r"\] replay: \d+/\d+ sessions", report)
    assert len(lines) <= 2 + replay["seconds"] / 10
    index = (out / "reports" / "index.html").read_text()
    assert 'href="06_ab_test.html"' in index and abtest["verdict"] in index
    assert "06_ab_test" in json.loads((out / "timings.json").read_text())
    dry = make(project, "-n", "abtest", "PARAMS=params/tiny.yaml")
    assert dry.returncode == 0 and "musicrec stage" not in dry.stdout, dry.stdout
    dry = make(project, "-n", "all", "PARAMS=params/tiny.yaml")
    assert "06_ab_test" not in dry.stdout
    # ABTEST sets the notebook's parameters from make, and reruns it though nothing changed
    result = make(project, "abtest", "PARAMS=params/tiny.yaml", "ABTEST=max_users=3 seed=1")
    assert result.returncode == 0, result.stdout + result.stderr
    replay = json.loads((out / "service" / "abtest.json").read_text())["replay"]
    assert (replay["users"], replay["max_users"], replay["seed"]) == (3, 3, 1)
    result = make(project, "abtest", "PARAMS=params/tiny.yaml", "ABTEST=max_user=3")
    assert result.returncode != 0
    assert "max_user: not a parameter of 06_ab_test.ipynb" in result.stderr and "max_users" in result.stderr


@pytest.mark.parametrize("target", ["all", "plan", "serve"])
def test_a_missing_profile_under_make_gets_the_packages_message(project, target):
    result = make(project, target, "PARAMS=params/nope.yaml")
    assert result.returncode != 0
    assert "params/nope.yaml: no such profile" in result.stderr + result.stdout
    assert "No rule to make target" not in result.stderr


def _contents(folders: list[Path]) -> dict[str, str]:
    import hashlib

    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".stamps" not in p.parts
    }


def test_notebooks_run_from_jupyterlab_into_a_scratch_run(project):
    """As JupyterLab runs them: the kernel in notebooks/, only the profile chosen; every notebook
    runs top to bottom into outputs/tiny-lab/, and make's run is left exactly as it was."""
    import papermill as pm

    from musicrec.cli import _kernel_name

    made = [project / f / "tiny" for f in ("data", "outputs", "plots")]
    before = _contents(made)
    names = [*STAGES, "06_ab_test"]
    # one notebook alone first: a new scratch run starts from make's artefacts
    runs = [("solo", ["04_ranking"]), ("lab", names)]
    for scratch, stages in runs:
        for name in stages:
            parameters = {"params_path": "params/tiny.yaml"}
            if scratch != "lab":
                parameters["scratch"] = scratch
            pm.execute_notebook(
                str(project / "notebooks" / f"{name}.ipynb"),
                str(project / f"{name}-{scratch}.ipynb"),
                parameters=parameters,
                kernel_name=_kernel_name(),
                cwd=str(project / "notebooks"),
                progress_bar=False,
            )
    assert (project / "outputs" / "tiny-solo" / "recommendations.parquet").is_file()
    lab = project / "outputs" / "tiny-lab"
    assert (lab / "metrics.parquet").is_file() and (lab / "recommendations.parquet").is_file()
    assert (project / "data" / "tiny-lab" / "split.json").is_file()
    assert _contents(made) == before, "make's run was written to"
