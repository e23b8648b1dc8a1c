"""bench.json: the steps of an executed notebook, the memory timeline, the README's benchmark tables."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import nbformat
import pytest

from musicrec.bench import END, START, bench_tables, notebook_steps, per_10x, profile_size, write_bench
from musicrec.cli import main
from musicrec.io import RunPaths
from musicrec.monitor import MemoryTimeline, PeakMemory

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
MB = 2**20


def executed_notebook(path, cells: list[tuple[str, str, float | None, list[str]]]):
    """A notebook as papermill leaves it: (type, source, seconds or None for not run, tags),
    one after the other from T0."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    clock = T0
    for kind, source, seconds, tags in cells:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        if seconds is not None:
            end = clock + dt.timedelta(seconds=seconds)
            cell.metadata["papermill"] = {
                "start_time": clock.isoformat(),
                "end_time": end.isoformat(),
                "duration": seconds,
                "status": "completed",
                "exception": False,
            }
            clock = end
        nb.cells.append(cell)
    nbformat.write(nb, str(path))
    return path


NOTEBOOK = [
    ("md", "# 3. Candidates\n\nintro", 0.0, []),
    ("code", "# Parameters\nparams_path = ''", 0.01, ["parameters"]),
    ("code", "from musicrec import plots", 0.5, []),  # under the title: named by it
    ("md", "## Fit on history\n\nThe ranker's training candidates.", 0.0, []),
    ("code", "runs = fit(history)", 10.0, []),
    ("md", "A paragraph without a heading keeps the heading above.", 0.0, []),
    ("code", "\n# show the times\ntable(runs)", 2.0, []),
    ("md", "## Recall", 0.0, []),
    ("code", "recall = candidate_recall(paths)", 3.0, []),
    ("code", "never_run()", None, []),
]


def at(seconds: float) -> float:
    return (T0 + dt.timedelta(seconds=seconds)).timestamp()


def test_steps_are_named_by_heading_timed_by_papermill_and_given_their_peak(tmp_path):
    nb = executed_notebook(tmp_path / "03_candidates.ipynb", NOTEBOOK)
    timeline = MemoryTimeline()
    # the fit (0.51 s to 10.51 s) climbs to 900 MB; the table cell stays at 300; recall at 500
    for t, mb in [
        (0.0, 100),
        (0.4, 120),
        (1.0, 400),
        (6.0, 900),
        (10.3, 300),
        (11.0, 300),
        (12.0, 300),
        (13.0, 500),
        (15.0, 200),
    ]:
        timeline.add(at(t), mb * MB)
    steps = notebook_steps(nb, timeline)
    assert [s["step"] for s in steps] == [
        "parameters",
        "3. Candidates",
        "Fit on history",
        "Fit on history: show the times",
        "Recall",
    ]
    assert [s["cell"] for s in steps] == [1, 2, 4, 6, 8]
    assert [s["seconds"] for s in steps] == [0.01, 0.5, 10.0, 2.0, 3.0]
    assert [s["trivial"] for s in steps] == [True, True, False, False, False]
    by_name = {s["step"]: s for s in steps}
    assert by_name["Fit on history"]["peak_rss_mb"] == 900
    # 10.51 s to 12.51 s: the last sample before it (300 MB at 10.3 s) and those inside
    assert by_name["Fit on history: show the times"]["peak_rss_mb"] == 300
    assert by_name["Recall"]["peak_rss_mb"] == 500
    # a cell between two samples gets the memory it started with
    assert by_name["parameters"]["peak_rss_mb"] == 100
    assert by_name["Recall"]["code"] == "recall = candidate_recall(paths)"
    assert notebook_steps(nb)[2]["peak_rss_mb"] is None  # no timeline, no peak


def test_steps_of_a_real_papermill_run(tmp_path):
    """papermill's own metadata (with the injected-parameters cell) reads the same way."""
    pm = pytest.importorskip("papermill")
    source = executed_notebook(
        tmp_path / "source.ipynb",
        [
            ("md", "# Title", None, []),
            ("code", "n = 1", None, ["parameters"]),
            ("md", "## Sleep", None, []),
            ("code", "import time\ntime.sleep(1.2)", None, []),
        ],
    )
    target = tmp_path / "out.ipynb"
    with PeakMemory(children=True, timeline=True, interval=0.05) as memory:
        pm.execute_notebook(
            str(source),
            str(target),
            parameters={"n": 2},
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
        )
    steps = notebook_steps(target, memory.timeline)
    assert [s["step"] for s in steps] == ["parameters", "parameters", "Sleep"]
    sleep = steps[-1]
    assert 1.2 <= sleep["seconds"] < 5 and not sleep["trivial"]
    assert sleep["peak_rss_mb"] > 20, "the kernel's memory"


def test_timeline_peak_between():
    timeline = MemoryTimeline()
    assert timeline.peak_between(0, 10) is None
    for t, rss in [(1.0, 10), (2.0, 50), (3.0, 20), (4.0, 30)]:
        timeline.add(t, rss)
    assert len(timeline) == 4
    assert timeline.peak_between(0.0, 0.5) is None  # before the first sample
    assert timeline.peak_between(1.5, 3.5) == 50
    assert timeline.peak_between(2.2, 2.8) == 50  # no sample inside: the one it started with
    assert timeline.peak_between(3.0, 3.9) == 20
    assert timeline.peak_between(5.0, 9.0) == 30


def test_peak_memory_keeps_a_timeline_of_this_process():
    with PeakMemory(interval=0.02, timeline=True) as memory:
        time.sleep(0.2)
        before = time.time()
        block = b"\x01" * (200 * MB)  # written, so resident
        time.sleep(0.2)
        during = time.time()
        del block
        time.sleep(0.2)
    timeline = memory.timeline
    assert len(timeline) >= 10
    assert list(timeline.times) == sorted(timeline.times)
    baseline = timeline.peak_between(timeline.times[0], before - 0.05)
    assert timeline.peak_between(before, during) >= baseline + 150 * MB
    assert memory.peak >= baseline + 150 * MB
    assert PeakMemory().timeline is None  # off unless asked


def stage_row(stage: str, seconds: float, peak_mb: float, steps: list[tuple[str, float]] = ()) -> dict:
    return {
        "stage": stage,
        "seconds": seconds,
        "peak_rss_mb": peak_mb,
        "notebook": f"{stage}.ipynb",
        "finished": "2026-12-01T12:00:00",
        "steps": [
            {
                "step": name,
                "cell": i,
                "code": name,
                "start": T0.isoformat(),
                "seconds": s,
                "peak_rss_mb": peak_mb,
                "trivial": s < 1,
            }
            for i, (name, s) in enumerate(steps)
        ],
    }


def test_write_bench_records_size_machine_commit_and_keeps_earlier_stages(tmp_path):
    paths = RunPaths(tmp_path, "r")
    paths.data.mkdir(parents=True)
    paths.data_summary.write_text(json.dumps({"rows": 4_769_276, "users": 30_000, "tracks": 20_000}))
    for folder, window in ((paths.candidates, "history+labels"), (paths.candidates / "history", "history")):
        folder.mkdir(parents=True)
        (folder / "runs.json").write_text(json.dumps([{"generator": "random", "window": window}]))
    paths.ranking.mkdir(parents=True)
    (paths.ranking / "summary.json").write_text(json.dumps({"steps": [{"step": "fit", "seconds": 3}]}))

    first = write_bench(
        paths,
        "params/r.yaml",
        [stage_row("03_candidates", 90, 900, [("Fit", 80)]), stage_row("01_data", 13, 400)],
    )
    assert [r["stage"] for r in first["stages"]] == ["01_data", "03_candidates"]
    assert first["size"] == {"listens": 4_769_276, "users": 30_000, "tracks": 20_000}
    assert first["machine"]["cpus"] >= 1 and first["machine"]["memory_gb"] > 0
    assert first["commit"] is None and first["dirty"] is None  # tmp_path is no git checkout
    assert [g["window"] for g in first["generators"]] == ["history", "history+labels"]
    assert first["ranking_steps"] == [], "the ranking stage did not run"
    dt.datetime.fromisoformat(first["date"])

    second = write_bench(
        paths, "params/r.yaml", [stage_row("04_ranking", 30, 700), stage_row("01_data", 14, 410)]
    )
    saved = json.loads((paths.outputs / "bench.json").read_text())
    assert saved == second
    assert [(r["stage"], r["seconds"]) for r in saved["stages"]] == [
        ("01_data", 14),
        ("03_candidates", 90),
        ("04_ranking", 30),
    ]
    assert saved["stages"][1]["steps"][0]["step"] == "Fit", "an earlier stage keeps its steps"
    assert len(saved["generators"]) == 2, "kept from the earlier call"
    assert saved["ranking_steps"] == [{"step": "fit", "seconds": 3}]


def test_write_bench_commit_of_a_git_checkout(tmp_path):
    import subprocess

    if subprocess.run(["git", "init", "-q", str(tmp_path)]).returncode != 0:
        pytest.skip("no git")
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "f").write_text("a")
    subprocess.run(["git", *env, "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", *env, "-C", str(tmp_path), "commit", "-qm", "x"], check=True)
    bench = write_bench(RunPaths(tmp_path, "r"), "p.yaml", [stage_row("01_data", 1, 1)])
    assert len(bench["commit"]) == 40 and bench["dirty"] is False
    assert bench["stages"][0]["commit"] == bench["commit"], "each stage says at which commit it ran"
    (tmp_path / "f").write_text("b")
    assert write_bench(RunPaths(tmp_path, "r"), "p.yaml", [])["dirty"] is True


def test_profile_size_falls_back_to_the_split(tmp_path):
    paths = RunPaths(tmp_path, "r")
    assert profile_size(paths) == {"listens": None, "users": None, "tracks": None}
    paths.data.mkdir(parents=True)
    paths.split.write_text(
        json.dumps({"windows": {"history": {"rows": 70}, "labels": {"rows": 20}, "test": {"rows": 10}}})
    )
    assert profile_size(paths)["listens"] == 100


def test_growth_per_10x_of_listens():
    assert per_10x(10, 100, 1e6, 1e7) == pytest.approx(10)  # linear
    assert per_10x(4.8, 22.0, 4.8e6, 22e6) == pytest.approx(10)  # linear over 4.6x
    assert per_10x(1, 100, 1e6, 1e7) == pytest.approx(100)  # quadratic
    assert per_10x(1, 2, 1e6, 1e8) == pytest.approx(2**0.5)
    assert per_10x(1, 2, 1e6, 1e6) is None and per_10x(0, 2, 1e6, 1e7) is None


def write_run(root, run: str, listens: int, stages: list[dict], generators: list[dict] = ()):
    folder = root / "outputs" / run
    folder.mkdir(parents=True)
    (folder / "bench.json").write_text(
        json.dumps(
            {
                "run": run,
                "date": "2026-12-01T12:00:00",
                "commit": "abcdef0123",
                "dirty": False,
                "machine": {"cpus": 2, "memory_gb": 24.0},
                "size": {"listens": listens, "users": 10, "tracks": 5},
                "stages": stages,
                "generators": list(generators),
                "ranking_steps": [],
            }
        )
    )


@pytest.fixture
def two_runs(tmp_path):
    write_run(
        tmp_path,
        "small",
        1_000_000,
        [
            {
                **stage_row("01_data", 10, 100, [("Build", 9.5), ("tiny", 0.1), ("quick", 0.5)]),
                "load_average": [2.5, 1.0, 0.5],
            },
            stage_row(
                "03_candidates", 100, 1024, [("Fit", 60), ("Recall", 3), ("Plot", 1.5), ("Names", 0.5)]
            ),
        ],
        [
            {
                "generator": "random",
                "window": "history",
                "fit_seconds": 0.0,
                "recommend_seconds": 12.3,
                "similar_seconds": 0.0,
                "peak_rss_gb": 1.5,
            }
        ],
    )
    write_run(
        tmp_path,
        "big",
        10_000_000,
        [stage_row("01_data", 100, 400), stage_row("03_candidates", 10_000, 2048)],
    )
    return tmp_path


def test_scaling_table_with_growth_per_10x(two_runs):
    text = bench_tables(["small", "big"], two_runs)
    lines = text.splitlines()
    assert lines[0] == "| stage | small (1.0M listens) | big (10.0M listens) | per 10x listens, small → big |"
    assert lines[2] == "| data | 10 s, 100 MB | 100 s, 400 MB | time ×10.0, memory ×4.0 |"
    assert lines[3] == "| candidates | 100 s, 1.0 GB | 10,000 s, 2.0 GB | time ×100.0, memory ×2.0 |"
    assert lines[4] == "| **all stages** | 110 s, 1.0 GB | 10,100 s, 2.0 GB | time ×91.8, memory ×2.0 |"
    assert "No `bench.json`" not in text


def test_steps_table_lists_only_slow_steps_and_the_generators(two_runs):
    text = bench_tables(["small", "big"], two_runs)
    small = text.split("**small**", 1)[1].split("**big**", 1)[0]
    assert (
        "1.0M listens, 10 users, 5 tracks; 2 cpus, 24.0 GB; load average up to 2.5 at a stage's end; "
        "2026-12-01, commit abcdef0"
    ) in small
    rows = [line for line in small.splitlines() if line.startswith("| ") and "step" not in line]
    steps = [line for line in rows if line.startswith(("| data", "| candidates"))]
    # Build (>= 5 s), Fit, Recall (>= 2% of the stage); not tiny (1%), quick (5% but trivial),
    # Plot (1.5%), Names
    assert steps == [
        "| data | Build | 9.5 s | 95% | 100 MB |",
        "| candidates | Fit | 60 s | 60% | 1.0 GB |",
        "| candidates | Recall | 3.0 s | 3% | 1.0 GB |",
    ]
    assert "| random | history | 0.0 s | 12 s | 0.0 s | 1.5 GB |" in small


def test_an_older_record_without_size_or_steps_takes_the_size_from_the_data(two_runs):
    write_run(
        two_runs,
        "old",
        0,
        [{"stage": "01_data", "seconds": 5, "peak_rss_mb": 50, "finished": "2026-12-01T10:00:00"}],
    )
    bench = two_runs / "outputs" / "old" / "bench.json"
    bench.write_text(
        json.dumps({k: v for k, v in json.loads(bench.read_text()).items() if k not in ("size", "date")})
    )
    data = two_runs / "data" / "old"
    data.mkdir(parents=True)
    (data / "summary.json").write_text(json.dumps({"rows": 100_000, "users": 7, "tracks": 3}))
    text = bench_tables(["old", "small"], two_runs)
    assert "| data | 5.0 s, 50 MB | 10 s, 100 MB | time ×2.0, memory ×2.0 |" in text
    assert "**old**: 100k listens, 7 users, 3 tracks" in text
    old = text.split("**old**", 1)[1].split("**small**", 1)[0]
    assert "No steps recorded" in old and "| stage | step |" not in old
    assert "2026-12-01, commit" in old, "the date of its last stage"


def test_missing_runs_are_left_out_with_a_note(two_runs):
    text = bench_tables(["small", "medium", "big", "huge"], two_runs)
    assert text.splitlines()[0] == (
        "No `bench.json` yet for `medium`, `huge` (`make bench PARAMS=params/<profile>.yaml`): left out."
    )
    assert "| stage | small (1.0M listens) | big (10.0M listens) | per 10x listens, small → big |" in text
    assert "medium (" not in text
    assert bench_tables(["nope"], two_runs).startswith("No `bench.json` yet for `nope`")


def test_bench_tables_rewrite_the_readme_block_only_and_idempotently(two_runs, capsys):
    readme = two_runs / "README.md"
    head = "# x\n\n<!-- results:start -->\nresults\n<!-- results:end -->\n\n## Benchmarks\n\nintro\n"
    tail = "\n\nafter\n## Development\n"
    readme.write_text(f"{head}{START}\nold, hand-typed\n{END}{tail}")
    argv = ["bench-tables", "small", "big", "--readme", str(readme), "--root", str(two_runs)]
    assert main(argv) == 0
    once = readme.read_text()
    assert once.startswith(head + START + "\n| stage | small") and once.endswith(f"\n{END}{tail}")
    assert "hand-typed" not in once
    assert main(argv) == 0
    assert readme.read_text() == once
    capsys.readouterr()
    assert main([*argv, "--print"]) == 0
    assert capsys.readouterr().out.strip() == once.split(START)[1].split(END)[0].strip()
    (two_runs / "other.md").write_text("no markers")
    other = ["bench-tables", "small", "--readme", str(two_runs / "other.md"), "--root", str(two_runs)]
    assert main(other) == 1
    assert "no <!-- bench:start -->" in capsys.readouterr().err


def test_the_readme_has_the_bench_block_in_its_benchmarks_section():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("\n## Benchmarks\n", 1)[1].split("\n## ", 1)[0]
    assert section.count(START) == 1 and section.index(START) < section.index(END)


def test_bench_command_records_every_stage_with_its_steps(tmp_path, monkeypatch, capsys):
    """``musicrec bench`` (stages faked) writes each stage's steps and the time outside them."""
    import musicrec.cli as cli

    params = Path(__file__).resolve().parents[1] / "params" / "tiny.yaml"
    nb = executed_notebook(tmp_path / "nb.ipynb", NOTEBOOK)

    def fake_stage(name, params, data_path, root, progress=False, engine=None):
        return cli.StageRun(name, 17.0, 300.0, nb, notebook_steps(nb))

    monkeypatch.setattr(cli, "run_stage", fake_stage)
    assert (
        main(["bench", "--params", str(params), "--root", str(tmp_path), "--stages", "01_data", "02_eda"])
        == 0
    )
    bench = json.loads((tmp_path / "outputs" / "tiny" / "bench.json").read_text())
    assert [r["stage"] for r in bench["stages"]] == ["01_data", "02_eda"]
    row = bench["stages"][0]
    assert [s["step"] for s in row["steps"]][-1] == "Recall"
    assert row["outside_cells_seconds"] == pytest.approx(17.0 - 15.51)
    assert len(row["load_average"]) == 3
    out = capsys.readouterr().out
    assert "Fit on history" in out and "peak RSS" in out


def test_stage_command_records_its_row_like_bench(tmp_path, monkeypatch):
    """``musicrec stage`` (what ``make all`` calls) merges its stage's row into bench.json, so one
    ``make all`` leaves the same record as ``make bench``; a run with --param overrides does not."""
    import musicrec.cli as cli

    params = Path(__file__).resolve().parents[1] / "params" / "tiny.yaml"
    nb = executed_notebook(tmp_path / "nb.ipynb", NOTEBOOK)

    def fake_stage(name, params, data_path, root, progress=False, overrides=None, engine=None):
        return cli.StageRun(name, 17.0, 300.0, nb, notebook_steps(nb))

    monkeypatch.setattr(cli, "run_stage", fake_stage)
    for stage in ("01_data", "02_eda"):
        assert main(["stage", stage, "--params", str(params), "--root", str(tmp_path)]) == 0
    bench_file = tmp_path / "outputs" / "tiny" / "bench.json"
    bench = json.loads(bench_file.read_text())
    assert [r["stage"] for r in bench["stages"]] == ["01_data", "02_eda"]
    assert bench["stages"][1]["steps"] and bench["stages"][1]["outside_cells_seconds"] == pytest.approx(1.49)
    before = bench_file.read_text()
    assert (
        main(
            [
                "stage",
                "06_ab_test",
                "--params",
                str(params),
                "--root",
                str(tmp_path),
                "--param",
                "max_users=10",
            ]
        )
        == 0
    )
    assert bench_file.read_text() == before
