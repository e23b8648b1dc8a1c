"""One self-contained HTML page comparing the metrics of several runs.

``python -m musicrec compare default scale10 lastfm`` (``make compare RUNS="default scale10 lastfm"``)
reads each run's ``outputs/<run>/metrics.parquet`` (``model, k, metric, segment, value, lower,
upper``; ``metrics.json`` where the parquet file is missing) and writes
``outputs/compare-<run>-<run>....html`` (:func:`default_output`): a table of the runs (profile,
git commit, whether the tree was dirty, when the metrics were computed: from
``outputs/<run>/provenance.json``), the headline tables, and three interactive charts with the
95% bootstrap intervals as error bars:

- the metric at k against catalogue coverage, per run and model;
- the metric per user segment (``all`` warm users, light, medium, heavy, ``cold``), per run;
- the metric per k, per run.

A menu above each chart switches the metric (NDCG, recall, precision, MAP, hit rate).
plotly.js is embedded once, inline: the page works offline, and can be mailed as it is.

The tables are built by pure functions (:func:`headline_table`, :func:`segment_table`,
:func:`k_table`, :func:`wide_table`) on the combined metrics (:func:`load_metrics`); the
figures and the page from them (:func:`compare_page`); :func:`write_compare` writes it
atomically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from musicrec.io import RunPaths, atomic_path, read_json
from musicrec.report import STYLE, html_table
from musicrec.results import interval_cell

#: User segments in display order (others follow alphabetically).
SEGMENTS = ("all", "light", "medium", "heavy", "cold")
#: The metrics the charts' menus offer (each with a bootstrap interval at every k).
ACCURACY = ("ndcg", "recall", "precision", "map", "hitrate")
METRIC_NAMES = {
    "ndcg": "NDCG",
    "recall": "recall",
    "precision": "precision",
    "map": "MAP",
    "hitrate": "hit rate",
}
COLUMNS = ("model", "k", "metric", "segment", "value", "lower", "upper")
EVALUATION_STAGE = "05_evaluation"
_RUN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CompareError(ValueError):
    """A run that cannot be compared; the message names it and the command that makes it."""


# --------------------------------------------------------------------------- the runs
def profile_for_run(root: str | Path, run: str) -> Path | None:
    """The profile in ``params/`` whose run is ``run``: its ``run_name``, else its file name."""
    params = Path(root) / "params"
    named, by_stem = None, None
    for file in sorted(params.glob("*.yaml")):
        try:
            raw = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError):
            continue
        run_name = raw.get("run_name") if isinstance(raw, dict) else None
        if run_name == run:
            named = named or file
        elif run_name is None and file.stem == run:
            by_stem = file
    return named or by_stem


def make_command(root: str | Path, run: str) -> str:
    """The make command that produces ``run``'s metrics."""
    profile = profile_for_run(root, run)
    if profile is None:
        return (
            f"no profile in params/ makes a run named {run!r}: add params/{run}.yaml, then "
            f"`make evaluate PARAMS=params/{run}.yaml`"
        )
    return f"`make evaluate PARAMS=params/{profile.name}` makes it"


def metrics_file(root: str | Path, run: str) -> Path | None:
    """``metrics.parquet`` of the run, else its ``metrics.json``, else ``None``."""
    paths = RunPaths(Path(root).resolve(), run)
    for path in (paths.metrics, paths.metrics_json):
        if path.is_file():
            return path
    return None


def check_runs(root: str | Path, runs: Sequence[str]) -> list[str]:
    """One line per run that cannot be compared (empty: all can)."""
    problems = []
    for run in runs:
        if not _RUN_NAME.match(run) or run in (".", ".."):
            problems.append(f"{run!r} is not a run name (letters, digits, _ . - only)")
            continue
        outputs = RunPaths(Path(root).resolve(), run).outputs
        if not outputs.is_dir():
            problems.append(f"run {run!r} does not exist (no outputs/{run}/); {make_command(root, run)}")
        elif metrics_file(root, run) is None:
            problems.append(
                f"run {run!r} has no metrics yet (no outputs/{run}/metrics.parquet: its evaluation "
                f"stage has not run); {make_command(root, run)}"
            )
    return problems


def _read(path: Path) -> pl.DataFrame:
    frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.DataFrame(read_json(path))
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise CompareError(f"{path}: no column {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    return frame.select(
        pl.col("model").cast(pl.String),
        pl.col("k").cast(pl.Int64),
        pl.col("metric").cast(pl.String),
        pl.col("segment").cast(pl.String),
        *(pl.col(c).cast(pl.Float64) for c in ("value", "lower", "upper")),
    )


def load_metrics(root: str | Path, runs: Sequence[str]) -> pl.DataFrame:
    """Every run's metrics in one frame with a ``run`` column first; :class:`CompareError` naming
    every run that does not exist or has no metrics yet."""
    runs = list(dict.fromkeys(runs))
    if not runs:
        raise CompareError('name at least one run, for example: make compare RUNS="default scale10"')
    problems = check_runs(root, runs)
    if problems:
        raise CompareError("cannot compare:\n  " + "\n  ".join(problems))
    frames = []
    for run in runs:
        path = metrics_file(root, run)
        assert path is not None  # check_runs said so
        frames.append(_read(path).with_columns(run=pl.lit(run)))
    return pl.concat(frames).select("run", *COLUMNS)


@dataclass(frozen=True)
class RunLabel:
    """How a run is named on the page: its profile, the code's commit, and when its metrics were made."""

    run: str
    profile: str | None
    commit: str
    dirty: bool | None
    time: str | None
    metrics_file: str

    @property
    def short_commit(self) -> str:
        """The commit's first 8 digits, ``+dirty`` when the tree had changes (``unknown`` kept)."""
        short = self.commit[:8] if self.commit != "unknown" else "unknown"
        return short + ("+dirty" if self.dirty else "")

    @property
    def when(self) -> str:
        """The time as ``YYYY-MM-DD HH:MM`` (its offset dropped), or ``unknown``."""
        if not self.time:
            return "unknown"
        try:
            return dt.datetime.fromisoformat(self.time).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            return self.time

    def text(self) -> str:
        """``default: params/default.yaml, 5d00bec1+dirty, 2026-12-01 19:45``."""
        return f"{self.run}: {self.profile or 'profile unknown'}, {self.short_commit}, {self.when}"


def run_label(root: str | Path, run: str) -> RunLabel:
    """The run's :class:`RunLabel`, from the provenance of its evaluation stage (else of its latest
    stage); without ``provenance.json`` (a run made before it was kept): commit ``unknown``, the
    profile found in ``params/`` and the evaluation's finishing time from ``timings.json``."""
    paths = RunPaths(Path(root).resolve(), run)
    file = metrics_file(root, run)
    metrics_name = str(file.relative_to(paths.root)) if file is not None else ""
    recorded: dict[str, Any] = {}
    if paths.provenance.is_file():
        try:
            recorded = read_json(paths.provenance)
        except ValueError:
            recorded = {}
    entries = [e for e in recorded.values() if isinstance(e, dict)] if isinstance(recorded, dict) else []
    entry = recorded.get(EVALUATION_STAGE) if isinstance(recorded.get(EVALUATION_STAGE), dict) else None
    if entry is None and entries:
        entry = max(entries, key=lambda e: str(e.get("time", "")))
    if entry is not None:
        return RunLabel(
            run,
            entry.get("profile"),
            str(entry.get("git_commit") or "unknown"),
            entry.get("git_dirty"),
            entry.get("time"),
            metrics_name,
        )
    profile = profile_for_run(root, run)
    timings = read_json(paths.timings) if paths.timings.is_file() else {}
    finished = timings.get(EVALUATION_STAGE, {}).get("finished")
    if finished is None and file is not None:
        finished = dt.datetime.fromtimestamp(file.stat().st_mtime).isoformat(timespec="seconds")
    return RunLabel(
        run, f"params/{profile.name}" if profile else None, "unknown", None, finished, metrics_name
    )


# --------------------------------------------------------------------------- tables
def model_order(models: Sequence[str]) -> list[str]:
    """``final`` first, the generators by name, ``oracle`` (the ceiling) last."""
    return sorted(set(models), key=lambda m: (m != "final", m == "oracle", m))


def _segment_rank(segment: str) -> tuple[int, str]:
    return (SEGMENTS.index(segment), "") if segment in SEGMENTS else (len(SEGMENTS), segment)


def _ordered(frame: pl.DataFrame, runs: Sequence[str], by: Sequence[str] = ()) -> pl.DataFrame:
    """Rows by run (as given), model (:func:`model_order`), then ``by``."""
    models = model_order(frame["model"].to_list()) if frame.height else []
    return (
        frame.with_columns(
            _run=pl.col("run").replace_strict(list(runs), list(range(len(runs))), default=len(runs)),
            _model=pl.col("model").replace_strict(models, list(range(len(models))), default=len(models)),
        )
        .sort(["_run", "_model", *by])
        .drop("_run", "_model")
    )


def headline_table(
    metrics: pl.DataFrame, metric: str = "ndcg", k: int = 10, segment: str = "all"
) -> pl.DataFrame:
    """One row per run and model: ``metric`` at ``k`` on ``segment`` with its interval, and the
    catalogue coverage of the same lists (at ``k``, or at the one list length it was measured at).

    Columns: ``run, model, value, lower, upper, coverage, coverage_k``.
    """
    runs = list(dict.fromkeys(metrics["run"].to_list()))
    picked = metrics.filter(
        (pl.col("metric") == metric) & (pl.col("k") == k) & (pl.col("segment") == segment)
    )
    coverage = (
        metrics.filter((pl.col("metric") == "coverage") & (pl.col("segment") == segment))
        .with_columns(_exact=pl.col("k") != k)
        .sort("run", "model", "_exact", "k")
        .group_by("run", "model", maintain_order=True)
        .first()
        .select("run", "model", coverage="value", coverage_k="k")
    )
    table = picked.select("run", "model", "value", "lower", "upper").join(
        coverage, on=["run", "model"], how="left"
    )
    return _ordered(table, runs)


def segment_table(metrics: pl.DataFrame, metric: str = "ndcg", k: int = 10) -> pl.DataFrame:
    """``metric`` at ``k`` per run, model and user segment (segments in :data:`SEGMENTS` order).

    Columns: ``run, model, segment, value, lower, upper``.
    """
    runs = list(dict.fromkeys(metrics["run"].to_list()))
    picked = metrics.filter((pl.col("metric") == metric) & (pl.col("k") == k))
    segments = sorted(set(picked["segment"].to_list()), key=_segment_rank)
    table = picked.select("run", "model", "segment", "value", "lower", "upper").with_columns(
        _segment=pl.col("segment").replace_strict(segments, list(range(len(segments))), default=0)
    )
    return _ordered(table, runs, ["_segment"]).drop("_segment")


def k_table(metrics: pl.DataFrame, metric: str = "ndcg", segment: str = "all") -> pl.DataFrame:
    """``metric`` at every k per run and model, on ``segment``.

    Columns: ``run, model, k, value, lower, upper``.
    """
    runs = list(dict.fromkeys(metrics["run"].to_list()))
    picked = metrics.filter((pl.col("metric") == metric) & (pl.col("segment") == segment))
    return _ordered(picked.select("run", "model", "k", "value", "lower", "upper"), runs, ["k"])


def wide_table(headline: pl.DataFrame, digits: int = 4) -> list[dict[str, str]]:
    """A :func:`headline_table` as rows of ``model`` and one ``value [lower, upper]`` cell per run
    (empty where the run has no such model): the page's headline table."""
    runs = list(dict.fromkeys(headline["run"].to_list()))
    cells: dict[str, dict[str, str]] = {}
    for row in headline.iter_rows(named=True):
        cells.setdefault(row["model"], {})[row["run"]] = interval_cell(
            row["value"], row["lower"], row["upper"], digits
        )
    return [{"model": m, **{r: cells[m].get(r, "") for r in runs}} for m in model_order(list(cells))]


def available_metrics(metrics: pl.DataFrame, k: int) -> list[str]:
    """The :data:`ACCURACY` metrics that the runs have at ``k``, in that order."""
    present = set(metrics.filter(pl.col("k") == k)["metric"].to_list())
    return [m for m in ACCURACY if m in present]


# --------------------------------------------------------------------------- figures
_PALETTE = (
    "#0969da",
    "#cf222e",
    "#1a7f37",
    "#8250df",
    "#bc4c00",
    "#1b7c83",
    "#bf3989",
    "#6e7781",
    "#4d2d00",
    "#953800",
)
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "pentagon")


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """One colour per model, the same in every chart."""
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(model_order(models))}


def _errors(frame: pl.DataFrame) -> dict[str, Any]:
    """plotly ``error_y`` from ``value``, ``lower``, ``upper`` (no bar where there is no interval)."""
    bars = frame.select(
        up=(pl.col("upper") - pl.col("value")).fill_null(0.0),
        down=(pl.col("value") - pl.col("lower")).fill_null(0.0),
    )
    return {
        "type": "data",
        "array": bars["up"].to_list(),
        "arrayminus": bars["down"].to_list(),
        "visible": True,
        "thickness": 1.2,
    }


def _label_html(label: RunLabel) -> str:
    return (
        f"<b>{html.escape(label.run)}</b><br><sup>{html.escape(label.profile or 'profile unknown')} · "
        f"{html.escape(label.short_commit)} · {html.escape(label.when)}</sup>"
    )


def _metric_menu(fig, groups: list[tuple[str, int]], chosen: str, axis_titles: dict[str, str]) -> None:
    """A menu switching which metric's traces show; ``groups``: ``(metric, trace count)`` in the
    order the traces were added; ``axis_titles``: layout key -> title with ``{metric}`` in it."""
    metrics = [m for m, _ in groups]
    buttons = []
    for metric in metrics:
        visible = [m == metric for m, n in groups for _ in range(n)]
        titles = {
            key: text.format(metric=METRIC_NAMES.get(metric, metric)) for key, text in axis_titles.items()
        }
        buttons.append(
            {
                "label": METRIC_NAMES.get(metric, metric),
                "method": "update",
                "args": [{"visible": visible}, titles],
            }
        )
    fig.update_layout(
        updatemenus=[
            {
                "buttons": buttons,
                "active": metrics.index(chosen),
                "x": 0,
                "xanchor": "left",
                "y": 1.0,
                "yanchor": "bottom",
                "pad": {"b": 36},
                "showactive": True,
            }
        ]
    )
    titles = {key: text.format(metric=METRIC_NAMES.get(chosen, chosen)) for key, text in axis_titles.items()}
    fig.update_layout(titles)


def coverage_figure(metrics: pl.DataFrame, labels: dict[str, RunLabel], chosen: str = "ndcg", k: int = 10):
    """The metric at ``k`` against catalogue coverage: one point per run and model (colour: model,
    symbol: run), error bars from the metric's interval."""
    import plotly.graph_objects as go

    runs = list(labels)
    colors = model_colors(metrics["model"].to_list())
    fig = go.Figure()
    groups = []
    coverage_k = None
    for metric in available_metrics(metrics, k):
        table = headline_table(metrics, metric, k).filter(pl.col("coverage").is_not_null())
        coverage_k = coverage_k or (table["coverage_k"][0] if table.height else None)
        for i, run in enumerate(runs):
            part = table.filter(pl.col("run") == run)
            fig.add_trace(
                go.Scatter(
                    x=part["coverage"].to_list(),
                    y=part["value"].to_list(),
                    mode="markers+text",
                    text=part["model"].to_list(),
                    textposition="top center",
                    textfont={"size": 10, "color": "#59636e"},
                    name=f"{run} ({labels[run].short_commit})",
                    marker={
                        "size": 11,
                        "symbol": _SYMBOLS[i % len(_SYMBOLS)],
                        "color": [colors[m] for m in part["model"]],
                        "line": {"width": 1, "color": "#1f2328"},
                    },
                    error_y=_errors(part) | {"color": "#8c959f"},
                    customdata=[
                        [run, m, interval_cell(v, lo, up, 4)]
                        for m, v, lo, up in part.select("model", "value", "lower", "upper").iter_rows()
                    ],
                    hovertemplate="%{customdata[0]} / %{customdata[1]}<br>"
                    + f"{METRIC_NAMES.get(metric, metric)}@{k}"
                    + " %{customdata[2]}<br>coverage %{x:.4f}<extra></extra>",
                    visible=metric == chosen,
                )
            )
        groups.append((metric, len(runs)))
    fig.update_layout(
        template="plotly_white",
        height=560,
        margin={"t": 90},
        legend_title_text="run (symbol)",
        xaxis_title=f"catalogue coverage@{coverage_k or k} (share of the catalogue in the lists)",
    )
    if groups:
        _metric_menu(fig, groups, chosen, {"yaxis.title.text": f"{{metric}}@{k}, warm users"})
    return fig


def _per_run_figure(
    tables: dict[str, pl.DataFrame],
    labels: dict[str, RunLabel],
    x: str,
    chosen: str,
    kind: str,
    y_title: str,
    x_title: str,
):
    """One column per run, one trace per model (bars or lines), a metric menu over ``tables``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    runs = list(labels)
    models = model_order([m for t in tables.values() for m in t["model"].to_list()])
    colors = model_colors(models)
    fig = make_subplots(
        rows=1,
        cols=len(runs),
        shared_yaxes=False,
        subplot_titles=[_label_html(labels[r]) for r in runs],
        horizontal_spacing=0.06 if len(runs) > 1 else 0.0,
    )
    groups = []
    for metric, table in tables.items():
        count = 0
        for col, run in enumerate(runs, start=1):
            for model in models:
                part = table.filter((pl.col("run") == run) & (pl.col("model") == model))
                if not part.height:
                    continue
                common = {
                    "x": [str(v) for v in part[x].to_list()],
                    "y": part["value"].to_list(),
                    "name": model,
                    "legendgroup": model,
                    "showlegend": col == 1,
                    "error_y": _errors(part),
                    "visible": metric == chosen,
                    "customdata": [
                        [run, model, interval_cell(v, lo, up, 4)]
                        for v, lo, up in part.select("value", "lower", "upper").iter_rows()
                    ],
                    "hovertemplate": "%{customdata[0]} / %{customdata[1]}<br>"
                    + f"{x} %{{x}}: {METRIC_NAMES.get(metric, metric)}"
                    + " %{customdata[2]}<extra></extra>",
                }
                if kind == "bar":
                    trace = go.Bar(marker_color=colors[model], **common)
                else:
                    trace = go.Scatter(mode="lines+markers", line={"color": colors[model]}, **common)
                fig.add_trace(trace, row=1, col=col)
                count += 1
        groups.append((metric, count))
    fig.update_layout(template="plotly_white", height=520, margin={"t": 110}, barmode="group")
    fig.update_xaxes(type="category", title_text=x_title)
    if groups:
        _metric_menu(fig, groups, chosen, {"yaxis.title.text": y_title})
    return fig


def segment_figure(metrics: pl.DataFrame, labels: dict[str, RunLabel], chosen: str = "ndcg", k: int = 10):
    """The metric at ``k`` per user segment, one column per run, bars per model with intervals."""
    tables = {m: segment_table(metrics, m, k) for m in available_metrics(metrics, k)}
    return _per_run_figure(
        tables, labels, "segment", chosen, "bar", f"{{metric}}@{k}", "user segment (all: every warm user)"
    )


def k_figure(metrics: pl.DataFrame, labels: dict[str, RunLabel], chosen: str = "ndcg", segment: str = "all"):
    """The metric per list length k, one column per run, a line per model with intervals."""
    ks = sorted(set(metrics["k"].to_list()))
    names = [m for m in ACCURACY if any(m in available_metrics(metrics, k) for k in ks)]
    tables = {m: k_table(metrics, m, segment) for m in names}
    return _per_run_figure(tables, labels, "k", chosen, "line", "{metric}@k, warm users", "k (list length)")


# --------------------------------------------------------------------------- the page
_STYLE = STYLE + "body{max-width:1250px}code{font-size:.9em}td{white-space:normal}\n"


def runs_rows(labels: dict[str, RunLabel], metrics: pl.DataFrame) -> list[dict[str, Any]]:
    """The page's table of runs: profile, commit, dirty, time, metrics file, models."""
    rows = []
    for run, label in labels.items():
        models = metrics.filter(pl.col("run") == run)["model"].unique().to_list()
        rows.append(
            {
                "run": run,
                "profile": label.profile or "unknown",
                "git commit": label.commit,
                "tree dirty": {True: "yes", False: "no"}.get(label.dirty, "unknown"),
                "evaluated": label.when,
                "metrics": label.metrics_file,
                "models": ", ".join(model_order(models)),
            }
        )
    return rows


def compare_page(
    metrics: pl.DataFrame, labels: dict[str, RunLabel], metric: str = "ndcg", k: int = 10
) -> str:
    """The whole HTML page (plotly.js inline, once)."""
    import plotly.offline

    choices = available_metrics(metrics, k)
    if metric not in choices:
        raise CompareError(
            f"no {metric}@{k} in these runs' metrics (metrics at k={k}: {', '.join(choices) or 'none'})"
        )
    figures = [
        ("coverage", coverage_figure(metrics, labels, metric, k)),
        ("segments", segment_figure(metrics, labels, metric, k)),
        ("ks", k_figure(metrics, labels, metric)),
    ]
    divs = {
        name: fig.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"chart-{name}",
            default_height=f"{fig.layout.height}px",
            config={"displaylogo": False, "responsive": True},
        )
        for name, fig in figures
    }
    tables = ""
    for name in dict.fromkeys([metric, "recall" if metric != "recall" else "ndcg"]):
        if name not in choices:
            continue
        tables += f"<h3>{html.escape(METRIC_NAMES.get(name, name))}@{k}, warm users</h3>" + html_table(
            wide_table(headline_table(metrics, name, k)), numeric=tuple(labels)
        )
    coverage = headline_table(metrics, metric, k).filter(pl.col("coverage").is_not_null())
    if coverage.height:
        ck = coverage["coverage_k"][0]
        cells = coverage.select("run", "model", value="coverage", lower=pl.lit(None), upper=pl.lit(None))
        tables += f"<h3>catalogue coverage@{ck}</h3>" + html_table(wide_table(cells), numeric=tuple(labels))
    names = ", ".join(labels)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>musicrec: {html.escape(names)}</title><style>{_STYLE}</style>
<script>{plotly.offline.get_plotlyjs()}</script></head><body>
<h1>musicrec: comparing runs {html.escape(names)}</h1>
<p class="sub">Test window metrics of every model; 95% bootstrap intervals over users (error bars).
Warm users: seen before the test window; <code>cold</code>: first seen in it.
The menu above each chart switches the metric.</p>
<h2>Runs</h2>{html_table(runs_rows(labels, metrics))}
<h2>Headline</h2>{tables}
<h2>{html.escape(METRIC_NAMES.get(metric, metric))}@{k} against catalogue coverage</h2>
<p class="sub">One point per run (symbol) and model (colour): up is more accurate, right covers more
of the catalogue.</p>{divs["coverage"]}
<h2>Per user segment</h2>
<p class="sub">Warm users split by their history's length (light, medium, heavy), and the cold users.</p>
{divs["segments"]}
<h2>Per list length k</h2>{divs["ks"]}
<p class="sub">Written {dt.datetime.now().isoformat(timespec="seconds")} by
<code>python -m musicrec compare {html.escape(" ".join(labels))}</code>.</p>
</body></html>
"""


def default_output(root: str | Path, runs: Sequence[str]) -> Path:
    """``outputs/compare-<run>-<run>....html`` (a hash instead of the names when they are long)."""
    joined = "-".join(dict.fromkeys(runs))
    if len(joined) > 80:
        joined = f"{len(runs)}-runs-{hashlib.sha1(joined.encode()).hexdigest()[:10]}"
    return Path(root).resolve() / "outputs" / f"compare-{joined}.html"


def write_compare(
    runs: Sequence[str],
    root: str | Path = ".",
    out: str | Path | None = None,
    metric: str = "ndcg",
    k: int = 10,
) -> Path:
    """Compare ``runs`` (names under ``outputs/``) and write the page atomically; return its path."""
    metrics = load_metrics(root, runs)
    runs = list(dict.fromkeys(runs))
    labels = {run: run_label(root, run) for run in runs}
    page = compare_page(metrics, labels, metric, k)
    target = Path(out) if out is not None else default_output(root, runs)
    with atomic_path(target) as tmp:
        tmp.write_text(page)
    return target
