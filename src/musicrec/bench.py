"""The benchmark record (``outputs/<run>/bench.json``) and the README tables made from it.

``musicrec bench`` (``make bench``) runs stages afresh; :func:`write_bench` records each
stage's wall time and peak memory, each **step** (code cell) of its executed notebook with
the cell's time from papermill's metadata and its peak from the memory timeline sampled
while the stage ran, the candidate generators' ``runs.json``, the ranking stage's steps,
the profile's size, the machine, the date and the git commit.

``musicrec bench-tables RUN...`` (``make bench-readme``) rewrites the block between
``<!-- bench:start -->`` and ``<!-- bench:end -->`` of ``README.md`` from the runs'
``bench.json``: a scaling table (each stage at every run, with its growth per 10x of
listens) and, per run, its slow steps and its generators.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nbformat
import psutil

from musicrec.io import RunPaths, read_json, write_json
from musicrec.monitor import MemoryTimeline
from musicrec.stages import STAGES

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
TRIVIAL_SECONDS = 1.0  # a step shorter than this is kept in bench.json but marked trivial
SLOW_SHARE, SLOW_SECONDS = 0.02, 5.0  # the README lists steps at >= 2% of their stage or >= 5 s
STAGE_NAMES = {s.name: s.short for s in STAGES}


# -- recording -------------------------------------------------------------------------------


def _heading(markdown: str) -> str | None:
    """The first heading line of a markdown cell, without its ``#`` marks."""
    for line in markdown.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip() or None
    return None


def _first_line(code: str, width: int = 60) -> str:
    """The first non-blank line of a code cell (a comment without its ``#``), cut to ``width``."""
    line = next((s.strip() for s in code.splitlines() if s.strip()), "")
    line = line.lstrip("#").strip() if line.startswith("#") else line
    return line if len(line) <= width else line[: width - 1] + "…"


def _timestamp(value: str | None) -> float | None:
    return dt.datetime.fromisoformat(value).timestamp() if value else None


def notebook_steps(
    notebook: str | Path, timeline: MemoryTimeline | None = None, trivial_seconds: float = TRIVIAL_SECONDS
) -> list[dict[str, Any]]:
    """Each executed code cell of a papermill-run notebook as a step.

    A step is named by the markdown heading above it; a second cell under the same heading
    is named ``heading: first line``. ``seconds`` comes from papermill's cell metadata,
    ``peak_rss_mb`` from ``timeline`` (``None`` without one); cells under
    ``trivial_seconds`` are kept with ``trivial: true``. Cells never run are left out.
    """
    nb = nbformat.read(str(notebook), as_version=4)
    steps: list[dict[str, Any]] = []
    heading, cells_under_heading = "(top)", 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            found = _heading(cell.source)
            if found:
                heading, cells_under_heading = found, 0
            continue
        if cell.cell_type != "code":
            continue
        meta = cell.metadata.get("papermill", {})
        start, end = _timestamp(meta.get("start_time")), _timestamp(meta.get("end_time"))
        if start is None or end is None:
            continue
        if set(cell.metadata.get("tags", [])) & {"parameters", "injected-parameters"}:
            name = "parameters"
        else:
            name = heading if cells_under_heading == 0 else f"{heading}: {_first_line(cell.source, 40)}"
            cells_under_heading += 1
        seconds = meta.get("duration")
        seconds = end - start if seconds is None else seconds
        peak = timeline.peak_between(start, end) if timeline is not None else None
        steps.append(
            {
                "step": name,
                "cell": index,
                "code": _first_line(cell.source),
                "start": meta["start_time"],
                "seconds": round(seconds, 2),
                "peak_rss_mb": None if peak is None else round(peak / 2**20, 1),
                "trivial": seconds < trivial_seconds,
            }
        )
    return steps


def profile_size(paths: RunPaths) -> dict[str, int | None]:
    """Listens, users and tracks of the run's data (``summary.json``, else ``split.json``)."""
    size: dict[str, int | None] = {"listens": None, "users": None, "tracks": None}
    if paths.data_summary.is_file():
        summary = read_json(paths.data_summary)
        size.update(listens=summary.get("rows"), users=summary.get("users"), tracks=summary.get("tracks"))
    if size["listens"] is None and paths.split.is_file():
        size["listens"] = sum(w["rows"] for w in read_json(paths.split)["windows"].values())
    return size


def machine() -> dict[str, Any]:
    """The machine the bench ran on: logical cpus, memory, platform, Python."""
    return {
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def git_commit(root: str | Path = ".") -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the project at ``root``."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def write_bench(paths: RunPaths, params: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the stage ``rows`` just run into ``outputs/<run>/bench.json`` and return it.

    Stages benched in an earlier call keep their rows (each says when and at which commit it
    ran), so a long profile can be benched a stage at a time. The generators and ranking
    steps are read afresh when their stage ran, else kept from the earlier record.
    """
    bench_file = paths.bench
    earlier = read_json(bench_file) if bench_file.is_file() else {}
    ran = {row["stage"] for row in rows}
    commit = git_commit(paths.root)
    rows = [{**row, "commit": commit["commit"]} for row in rows]
    stages = sorted(
        [r for r in earlier.get("stages", []) if r["stage"] not in ran] + rows, key=lambda r: r["stage"]
    )
    generators = earlier.get("generators", [])
    if "03_candidates" in ran:
        generators = [
            run
            for folder in (paths.candidate_dir("history"), paths.candidate_dir())
            if (folder / "runs.json").is_file()
            for run in read_json(folder / "runs.json")
        ]
    ranking_steps = earlier.get("ranking_steps", [])
    if "04_ranking" in ran and paths.ranking_summary.is_file():
        ranking_steps = read_json(paths.ranking_summary)["steps"]
    bench = {
        "run": paths.run,
        "profile": str(params),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        **commit,
        "machine": machine(),
        "size": profile_size(paths),
        "stages": stages,
        "generators": generators,
        "ranking_steps": ranking_steps,
    }
    write_json(bench, bench_file)
    return bench


# -- the README tables -----------------------------------------------------------------------


def _count(n: float | None) -> str:
    """4.8M, 22.0M, 137k, 950."""
    if n is None:
        return "?"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:,.0f}"


def _seconds(s: float) -> str:
    return f"{s:,.0f} s" if s >= 10 else f"{s:.1f} s"


def _memory(mb: float | None) -> str:
    return "" if mb is None else f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:,.0f} MB"


def per_10x(before: float, after: float, listens_before: float, listens_after: float) -> float | None:
    """The factor ``after / before`` scaled to a 10x growth of listens (10.0 = linear).

    With ``after / before = (listens ratio) ** b``, the factor is ``10 ** b``.
    """
    if not (before > 0 and after > 0 and listens_before and listens_after) or listens_after == listens_before:
        return None
    exponent = math.log(after / before) / math.log(listens_after / listens_before)
    return 10**exponent


def load_benches(runs: Iterable[str], root: str | Path = ".") -> tuple[dict[str, dict], list[str]]:
    """The runs' ``bench.json`` by run, and the runs that have none.

    A record written before sizes were kept takes its size from the run's data folder.
    """
    found, missing = {}, []
    for run in runs:
        path = Path(root) / "outputs" / run / "bench.json"
        if path.is_file():
            found[run] = bench = read_json(path)
            if not bench.get("size"):
                bench["size"] = profile_size(RunPaths(Path(root).resolve(), run))
        else:
            missing.append(run)
    return found, missing


def scaling_table(benches: dict[str, dict]) -> str:
    """One row per stage: time and peak memory at each run, and growth per 10x of listens."""
    runs = list(benches)
    by_stage = {run: {r["stage"]: r for r in b["stages"]} for run, b in benches.items()}
    stages = sorted({stage for rows in by_stage.values() for stage in rows})
    listens = {run: b.get("size", {}).get("listens") for run, b in benches.items()}
    pairs = list(itertools.pairwise(runs))
    header = [
        "stage",
        *(f"{run} ({_count(listens[run])} listens)" for run in runs),
        *(f"per 10x listens, {a} → {b}" for a, b in pairs),
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]

    def cells(rows: dict[str, dict | None]) -> list[str]:
        out = [f"{_seconds(r['seconds'])}, {_memory(r['peak_rss_mb'])}" if r else "" for r in rows.values()]
        for a, b in pairs:
            ra, rb = rows[a], rows[b]
            if not (ra and rb):
                out.append("")
                continue
            time = per_10x(ra["seconds"], rb["seconds"], listens[a], listens[b])
            memory = per_10x(ra["peak_rss_mb"], rb["peak_rss_mb"], listens[a], listens[b])
            out.append(
                ", ".join(
                    f"{what} ×{f:.1f}" for what, f in (("time", time), ("memory", memory)) if f is not None
                )
            )
        return out

    for stage in stages:
        row = {run: by_stage[run].get(stage) for run in runs}
        lines.append(f"| {STAGE_NAMES.get(stage, stage)} | " + " | ".join(cells(row)) + " |")
    if len(stages) > 1:  # the whole pipeline, where a run has every stage
        total = {
            run: (
                {
                    "seconds": sum(r["seconds"] for r in by_stage[run].values()),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in by_stage[run].values()),
                }
                if set(by_stage[run]) >= set(stages)
                else None
            )
            for run in runs
        }
        lines.append("| **all stages** | " + " | ".join(cells(total)) + " |")
    return "\n".join(lines)


def slow_steps(bench: dict, share: float = SLOW_SHARE, seconds: float = SLOW_SECONDS) -> list[dict]:
    """Steps at ``share`` of their stage's time or more, or ``seconds`` or more, stage by stage
    (never a trivial one)."""
    slow = []
    for stage in bench["stages"]:
        for step in stage.get("steps", []):
            if step.get("trivial"):
                continue
            if step["seconds"] >= seconds or step["seconds"] >= share * stage["seconds"]:
                slow.append({**step, "stage": stage["stage"], "share": step["seconds"] / stage["seconds"]})
    return slow


def steps_table(bench: dict) -> str:
    """The slow steps of a run: stage, step, wall time, share of the stage, peak memory."""
    lines = ["| stage | step | wall time | share | peak memory |", "|---|---|---|---|---|"]
    for s in slow_steps(bench):
        step = s["step"].replace("|", "\\|")
        lines.append(
            f"| {STAGE_NAMES.get(s['stage'], s['stage'])} | {step} | {_seconds(s['seconds'])} "
            f"| {s['share']:.0%} | {_memory(s['peak_rss_mb'])} |"
        )
    return "\n".join(lines)


def generators_table(bench: dict) -> str:
    """Each candidate generator per window: fit, recommend, similar seconds and peak memory."""
    lines = ["| generator | window | fit | recommend | similar | peak memory |", "|---|---|---|---|---|---|"]
    for g in bench.get("generators", []):
        lines.append(
            f"| {g['generator']} | {g['window']} | {_seconds(g['fit_seconds'])} "
            f"| {_seconds(g['recommend_seconds'])} | {_seconds(g['similar_seconds'])} "
            f"| {_memory(g['peak_rss_gb'] * 1024)} |"
        )
    return "\n".join(lines)


def _run_heading(run: str, bench: dict) -> str:
    size, host = bench.get("size", {}), bench.get("machine", {})
    commit = (bench.get("commit") or "?")[:7] + (" (uncommitted changes)" if bench.get("dirty") else "")
    date = bench.get("date") or max((r.get("finished", "") for r in bench["stages"]), default="") or "?"
    loads = [r["load_average"][0] for r in bench["stages"] if r.get("load_average")]
    load = f"; load average up to {max(loads):.1f} at a stage's end" if loads else ""

    def whole(n: int | None) -> str:
        return "?" if n is None else f"{n:,}"

    return (
        f"**{run}**: {_count(size.get('listens'))} listens, {whole(size.get('users'))} users, "
        f"{whole(size.get('tracks'))} tracks; {host.get('cpus', '?')} cpus, "
        f"{host.get('memory_gb', '?')} GB{load}; {date[:10]}, commit {commit}"
    )


def bench_tables(runs: list[str], root: str | Path = ".") -> str:
    """The README's benchmark block: the scaling table, then each run's slow steps and generators."""
    benches, missing = load_benches(runs, root)
    parts = []
    if missing:
        parts.append(
            "No `bench.json` yet for "
            + ", ".join(f"`{run}`" for run in missing)
            + " (`make bench PARAMS=params/<profile>.yaml`): left out."
        )
    if not benches:
        return "\n\n".join(parts)
    parts.append(scaling_table(benches))
    for run, bench in benches.items():
        parts.append(_run_heading(run, bench))
        if not any("steps" in stage for stage in bench["stages"]):
            parts.append("No steps recorded (benched before `bench.json` kept them).")
        elif slow_steps(bench):
            parts.append(
                f"Steps of {TRIVIAL_SECONDS:.0f} s or more that take {SLOW_SECONDS:.0f} s or "
                f"{SLOW_SHARE:.0%} of their stage:\n\n" + steps_table(bench)
            )
        if bench.get("generators"):
            parts.append(
                "Candidate generators (seconds; peak memory of the kernel while each ran):\n\n"
                + generators_table(bench)
            )
    return "\n\n".join(parts)
