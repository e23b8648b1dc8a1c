"""Command line of the pipeline, called by the Makefile.

``musicrec stage NAME``   runs ``notebooks/NAME.ipynb`` with papermill on a profile (``--param
                          NAME=VALUE`` sets other names of its parameters cell),
                          writes the executed notebook to ``outputs/<run>/notebooks/``
                          and records its wall time and peak memory. NAME is a pipeline
                          stage (STAGES) or an on-demand one (ON_DEMAND: the A/B replay).
``musicrec report``       renders the executed notebooks to HTML with an index page.
``musicrec bench``        runs stages afresh and writes ``outputs/<run>/bench.json`` (each
                          stage and each of its notebook's steps: see ``musicrec.bench``).
``musicrec bench-tables RUN..`` rewrites the README's benchmark tables from the runs' bench.json.
``musicrec run-name``     prints the run name of a profile.
``musicrec plan``         prints the stale stages (``--why``: and why), which make reruns.
``musicrec makefile-rules`` prints the Makefile's stage rules (from ``musicrec.stages``).
``musicrec results RUN..`` rewrites the README's results table from the runs' metrics.
``musicrec compare RUN..`` writes one HTML page comparing the runs' metrics (``musicrec.compare``).

A failing stage prints one paragraph (the error and where the full traceback is),
not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from musicrec.config import Profile, ProfileError, load_profile
from musicrec.io import RunPaths, atomic_path, read_json, write_json
from musicrec.monitor import PeakMemory
from musicrec.stages import ON_DEMAND, PIPELINE, RunLocked, makefile_rules, plan, run_lock, transaction
from musicrec.stages import stage as declared_stage

# declared in musicrec.stages. ON_DEMAND runs only when asked (`make abtest`), never by `make all`
# nor by default in `bench`: the A/B replay drives the service through the whole test window.
STAGES = PIPELINE
KERNEL = "musicrec"


class StageError(RuntimeError):
    """A stage that failed; the message is the one paragraph to show."""


@dataclass
class StageRun:
    stage: str
    seconds: float
    peak_rss_mb: float
    notebook: Path
    steps: list[dict] = field(default_factory=list)  # the notebook's cells: musicrec.bench.notebook_steps

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "notebook": str(self.notebook),
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
        }


def _kernel_name() -> str:
    from jupyter_client.kernelspec import find_kernel_specs

    return KERNEL if KERNEL in find_kernel_specs() else "python3"


class _Prefixed:
    """A text stream writing each line of what it gets to ``out`` behind ``prefix`` (a stage's
    progress lines on the console of ``make all``, as the cells print them)."""

    def __init__(self, out, prefix: str):
        self.out, self.prefix, self.pending = out, prefix, ""

    def write(self, text: str) -> None:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.out.write(f"{self.prefix}{line}\n")
        if lines:
            self.out.flush()

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def _stderr_to(log: Path):
    """Send this process's and the kernel's stderr (Jupyter's chatter) to a log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


#: Set from the command line's own options; ``scratch=""``: make's run, not a scratch one (musicrec.lab)
RESERVED = ("params_path", "data_path", "root", "scratch", "engine")


def notebook_parameters(notebook: Path, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` checked against the names in the notebook's ``parameters`` cell."""
    import papermill as pm

    known = set(pm.inspect_notebook(str(notebook))) - set(RESERVED)
    reserved = sorted(set(given) & set(RESERVED))
    if reserved:
        raise StageError(
            f"--param {', '.join(reserved)}: set these with --params, --data-path, --engine and --root"
        )
    unknown = sorted(set(given) - known)
    if unknown:
        raise StageError(
            f"--param {', '.join(unknown)}: not a parameter of {notebook.name} "
            f"(its parameters: {', '.join(sorted(known)) or 'none'})"
        )
    return given


def parse_param(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` with VALUE read as YAML (``5000``, ``null``, ``{a: 1}``, text)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE, for example max_users=20000")
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not valid YAML ({exc})") from None


def run_stage(
    stage: str,
    params: str | Path,
    data_path: str | None = None,
    root: str | Path = ".",
    progress: bool = False,
    overrides: dict[str, Any] | None = None,
    engine: str | None = None,
) -> StageRun:
    """Execute one stage notebook on a profile; raise :class:`StageError` on failure.

    ``progress``: what the cells print (their progress lines) is copied to this process's stdout
    as it comes, each line behind the stage's name. ``overrides``: values for other names of the
    notebook's ``parameters`` cell. ``engine`` (make's ``ENGINE``): overrides the profile's ``engine``,
    here and in the notebook (its ``engine`` parameter, read by :func:`musicrec.lab.open_run`), and
    is part of the stage's stamp (another engine reruns it). The run
    holds the run folder's lock and is all or nothing
    (:func:`musicrec.stages.transaction`): after a failure the previous artefacts are back in place.
    """
    root = Path(root).resolve()
    profile = load_profile(params, data_path=data_path, engine=engine)
    paths = RunPaths.for_profile(profile, root)
    source = root / "notebooks" / f"{stage}.ipynb"
    if not source.is_file():
        raise StageError(f"stage {stage}: no notebook {source}")
    target = paths.notebook(stage)
    parameters = {
        "params_path": str(Path(params).resolve()),
        "data_path": data_path or "",
        "root": str(root),
        "scratch": "",
        "engine": engine or "",
        **notebook_parameters(source, overrides or {}),
    }
    if profile.tracking:  # said before the stage runs, not after
        from musicrec.tracking import TrackingError, require

        try:
            require(profile)
        except TrackingError as exc:
            raise StageError(f"stage {stage}: {exc}") from None
    started = time.time()
    try:
        with run_lock(paths, f"musicrec stage {stage}"):
            with transaction(declared_stage(stage), profile, paths, data_path):
                run = _execute(stage, params, source, target, parameters, paths, progress)
            _record(run, profile, params, paths, started)
            return run
    except RunLocked as exc:
        raise StageError(f"stage {stage}: {exc}") from None


def _record(run: StageRun, profile: Profile, params: str | Path, paths: RunPaths, started: float) -> None:
    """After a stage succeeded: its provenance to ``outputs/<run>/provenance.json`` and, with
    ``tracking: mlflow``, the run to the local MLflow store (``musicrec.tracking``)."""
    from musicrec.provenance import record_stage

    entry = record_stage(paths, run.stage, params, engine=profile.engine)
    if profile.tracking == "mlflow":
        from musicrec.tracking import log_stage

        try:
            log_stage(
                profile,
                run.stage,
                paths,
                started=started,
                seconds=run.seconds,
                peak_rss_mb=run.peak_rss_mb,
                provenance=entry,
            )
        except Exception as exc:  # the stage's artefacts are in place: tracking does not undo them
            print(f"musicrec stage {run.stage}: done; logging it to MLflow failed: {exc}", file=sys.stderr)


def _execute(
    stage: str,
    params: str | Path,
    source: Path,
    target: Path,
    parameters: dict[str, Any],
    paths: RunPaths,
    progress: bool,
) -> StageRun:
    """Run the notebook with papermill (see :func:`run_stage`)."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    failed = paths.failed_notebook(stage)
    log = paths.kernel_log(stage)
    start = time.perf_counter()
    with PeakMemory(children=True, timeline=True) as memory, atomic_path(target) as tmp, _stderr_to(log):
        try:
            pm.execute_notebook(
                str(source),
                str(tmp),
                parameters=parameters,
                kernel_name=_kernel_name(),
                cwd=str(paths.root),
                progress_bar=False,  # a redrawn bar; the cells' own lines say more
                log_output=False,
                stdout_file=_Prefixed(sys.stdout, f"{stage} | ") if progress else None,
                request_save_on_cell_execute=False,
            )
        except pm.PapermillExecutionError as exc:
            tmp.replace(failed)
            raise StageError(
                f"stage {stage} failed on {params}: {exc.ename}: {exc.evalue}\n"
                f"(the executed notebook with the full traceback: {failed}; kernel log: {log})"
            ) from None
        except DeadKernelError:
            if tmp.is_file():
                tmp.replace(failed)
            raise StageError(
                f"stage {stage} failed on {params}: the notebook's kernel died, most likely "
                f"out of memory (peak {memory.peak / 2**30:.1f} GB seen; the machine has "
                f"{psutil.virtual_memory().total / 2**30:.0f} GB). Kernel log: {log}"
            ) from None
    failed.unlink(missing_ok=True)
    from musicrec.bench import notebook_steps

    run = StageRun(
        stage,
        time.perf_counter() - start,
        memory.peak / 2**20,
        target,
        notebook_steps(target, memory.timeline),
    )
    timings = read_json(paths.timings) if paths.timings.is_file() else {}
    timings[stage] = run.as_dict()
    write_json(timings, paths.timings)
    return run


def bench_row(run: StageRun) -> dict:
    """A stage run as a ``bench.json`` row: times, memory, steps, and the load it ran under."""
    # what no cell's time covers: the kernel's start and shutdown, papermill's own work
    outside = run.seconds - sum(step["seconds"] for step in run.steps)
    return {
        **run.as_dict(),
        "outside_cells_seconds": round(outside, 2),
        # above the cpu count: other work shared the machine, times are upper bounds
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "steps": run.steps,
    }


def _print_table(rows: list[dict]) -> None:
    print(f"{'stage':<15}{'wall time':>12}{'peak RSS':>14}")
    for r in rows:
        print(f"{r['stage']:<15}{r['seconds']:>10.1f} s{r['peak_rss_mb'] / 1024:>11.2f} GB")


def _print_steps(steps: list[dict]) -> None:
    if not steps:
        return
    print(f"\n{'stage':<15}{'step':<50}{'wall time':>11}{'peak RSS':>11}")
    for s in steps:
        peak = "" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb'] / 1024:.2f} GB"
        print(f"{s['stage']:<15}{s['step'][:48]:<50}{s['seconds']:>9.1f} s{peak:>11}")


def _print_generators(runs: list[dict]) -> None:
    if not runs:
        return
    print(f"\n{'generator':<14}{'window':<16}{'fit':>9}{'recommend':>11}{'similar':>9}{'peak RSS':>10}")
    for r in runs:
        print(
            f"{r['generator']:<14}{r['window']:<16}{r['fit_seconds']:>8.1f}s{r['recommend_seconds']:>10.1f}s"
            f"{r['similar_seconds']:>8.1f}s{r['peak_rss_gb']:>8.2f} GB"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="musicrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params/default.yaml", help="profile YAML")
    common.add_argument("--data-path", default="", help="raw data folder of a real source")
    common.add_argument("--root", default=".", help="project root (data/, outputs/, plots/)")
    common.add_argument("--engine", default="", help="local or spark: overrides the profile's engine")
    stage = sub.add_parser("stage", parents=[common], help="run one stage notebook")
    stage.add_argument("name", choices=STAGES + ON_DEMAND)
    stage.add_argument(
        "--param",
        dest="overrides",
        action="append",
        type=parse_param,
        default=[],
        metavar="NAME=VALUE",
        help="set a name of the notebook's parameters cell (VALUE as "
        "YAML), for example --param max_users=20000; repeatable",
    )
    report = sub.add_parser("report", parents=[common], help="render the HTML reports")
    report.add_argument(
        "--screenshot",
        action="store_true",
        help="also save reports/index.png as headless Chromium renders it",
    )
    bench = sub.add_parser("bench", parents=[common], help="time stages afresh")
    bench.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES + ON_DEMAND)
    sub.add_parser("run-name", parents=[common], help="print the profile's run name")
    plan_cmd = sub.add_parser("plan", parents=[common], help="print the stale stages (what make would run)")
    plan_cmd.add_argument("--why", action="store_true", help="one line per stale stage with the reasons")
    sub.add_parser("makefile-rules", help="print the Makefile's stage rules, generated from musicrec.stages")
    tables = sub.add_parser("bench-tables", help="rewrite the README's benchmark tables from bench.json")
    tables.add_argument("runs", nargs="+", help="run names (outputs/<run>/bench.json), smallest first")
    tables.add_argument("--readme", default="README.md")
    tables.add_argument("--root", default=".")
    tables.add_argument(
        "--print", dest="stdout", action="store_true", help="print the tables instead of rewriting the README"
    )
    results = sub.add_parser("results", help="rewrite the README's results table from runs' metrics.json")
    results.add_argument("runs", nargs="+", help="run names (outputs/<run>/metrics.json)")
    results.add_argument("--readme", default="README.md")
    results.add_argument("--root", default=".")
    compare = sub.add_parser("compare", help="one HTML page comparing runs' metrics (outputs/compare-*.html)")
    compare.add_argument("runs", nargs="+", help="run names (outputs/<run>/metrics.parquet)")
    compare.add_argument("--metric", default="ndcg", help="the metric the charts open on (ndcg, recall, ...)")
    compare.add_argument("--k", type=int, default=10, help="list length of the coverage and segment charts")
    compare.add_argument("--out", default=None, help="the page (default: outputs/compare-<run>-<run>.html)")
    compare.add_argument("--root", default=".")
    args = parser.parse_args(argv)

    try:
        if args.command == "run-name":
            print(load_profile(args.params).run)
        elif args.command == "plan":
            profile = load_profile(args.params, args.data_path or None, engine=args.engine or None)
            stale = plan(profile, RunPaths.for_profile(profile, args.root), args.data_path or None)
            if args.why:
                for name, why in stale.items():
                    print(f"{name}: {'; '.join(why)}")
                if not stale:
                    print("every stage is fresh")
            else:
                print(" ".join(stale) or "none")
        elif args.command == "makefile-rules":
            print(makefile_rules(), end="")
        elif args.command == "stage":
            from musicrec.bench import write_bench

            run = run_stage(
                args.name,
                args.params,
                args.data_path or None,
                args.root,
                progress=True,
                overrides=dict(args.overrides),
                engine=args.engine or None,
            )
            print(
                f"{args.name}: done in {run.seconds:.1f} s, peak memory "
                f"{run.peak_rss_mb / 1024:.2f} GB -> {run.notebook}"
            )
            if args.name in STAGES and not args.overrides:
                # `make all` records what `make bench` would: the last run of each stage, with its steps
                profile = load_profile(args.params, args.data_path or None)
                write_bench(RunPaths.for_profile(profile, args.root), str(args.params), [bench_row(run)])
        elif args.command == "report":
            from musicrec.report import build_report

            index = build_report(args.params, args.data_path or None, args.root)
            print(f"report: {index}")
            if args.screenshot:
                from musicrec.report import screenshot

                print(f"report: {screenshot(index)}")
        elif args.command == "results":
            from musicrec.results import results_table, update_readme

            print(f"results: {update_readme(args.readme, results_table(args.runs, args.root))}")
        elif args.command == "compare":
            from musicrec.compare import write_compare

            print(f"compare: {write_compare(args.runs, args.root, args.out, args.metric, args.k)}")
        elif args.command == "bench":
            from musicrec.bench import slow_steps, write_bench

            profile = load_profile(args.params, args.data_path or None)
            paths = RunPaths.for_profile(profile, args.root)
            rows = []
            for name in args.stages:
                print(f"bench: running {name} ...", flush=True)
                run = run_stage(
                    name,
                    args.params,
                    args.data_path or None,
                    args.root,
                    progress=True,
                    engine=args.engine or None,
                )
                rows.append(bench_row(run))
                # recorded after every stage: a long run that fails later keeps what it measured
                bench = write_bench(paths, str(args.params), rows)
            _print_table(bench["stages"])
            _print_steps(slow_steps({"stages": rows}))
            _print_generators(bench["generators"])
            if bench["ranking_steps"]:
                print(f"\n{'ranking step':<16}{'wall time':>12}{'peak RSS':>12}")
                for r in bench["ranking_steps"]:
                    print(f"{r['step']:<16}{r['seconds']:>10.1f} s{r['peak_rss_gb']:>9.2f} GB")
            print(f"bench: {paths.bench}")
        elif args.command == "bench-tables":
            from musicrec.bench import END as BENCH_END
            from musicrec.bench import START as BENCH_START
            from musicrec.bench import bench_tables
            from musicrec.results import update_readme

            text = bench_tables(args.runs, args.root)
            if args.stdout:
                print(text)
            else:
                print(f"bench-tables: {update_readme(args.readme, text, BENCH_START, BENCH_END)}")
    except (ProfileError, StageError, FileNotFoundError, ValueError) as exc:
        print(f"musicrec {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
