"""HTML reports: every executed notebook without code, and an index page for the run."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import yaml

from musicrec.config import load_profile
from musicrec.io import RunPaths, atomic_path, read_json
from musicrec.results import interval_cell
from musicrec.stages import STAGES

STAGE_TITLES = {s.name: s.title for s in STAGES}
KEY_FIGURES = (
    "evaluation_ndcg",
    "evaluation_curves",
    "evaluation_popularity_bias",
    "evaluation_coverage",
    "events_over_time",
    "window_sizes",
    "listens_per_user",
    "calibration",
    "candidate_recall",
    "ranking_importance",
    "ab_success",
)

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1050px;margin:2rem auto;
padding:0 1.2rem;color:#1f2328;line-height:1.5}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}
.sub{color:#59636e;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.3rem .7rem;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:.8rem;border-radius:6px;overflow-x:auto;font-size:.85rem}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:1rem}
.figs img{width:100%;border:1px solid #d0d7de;border-radius:6px}
a{color:#0969da}
"""


def render_notebook(notebook: Path, target: Path) -> Path:
    """One executed notebook as HTML without code cells; a progress bar shows its last state only."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.CoalesceStreamsPreprocessor.enabled = True  # merges a cell's stream outputs, applies \r
    exporter = HTMLExporter(
        config=config, exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_path(target) as tmp:
        tmp.write_text(body)
    return target


def _table(rows: list[dict], markup: tuple[str, ...] = ()) -> str:
    """Rows as an HTML table; values of the ``markup`` columns are HTML already (links)."""
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = ""
    for r in rows:
        cells = ""
        for k, v in r.items():
            if k in markup:
                cells += f"<td>{v}</td>"
            elif isinstance(v, int | float) and not isinstance(v, bool):
                text = f"{v:,.2f}" if isinstance(v, float) else f"{v:,}"
                cells += f'<td class="num">{text}</td>'
            else:
                cells += f"<td>{html.escape(str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def headline_rows(paths: RunPaths, k: int = 10) -> list[dict]:
    """Models by NDCG@k, with recall@k and coverage, each with its interval (segment: all warm users)."""
    if not paths.metrics_json.is_file():
        return []
    metrics = ("ndcg", "recall", "coverage")
    cells: dict[str, dict[str, str]] = {}
    ndcg: dict[str, float] = {}
    for r in read_json(paths.metrics_json):
        if r["segment"] != "all" or r["k"] != k or r["metric"] not in metrics or r["value"] is None:
            continue
        cells.setdefault(r["model"], {})[f"{r['metric']}@{k}"] = interval_cell(
            r["value"], r["lower"], r["upper"], digits=4
        )
        if r["metric"] == "ndcg":
            ndcg[r["model"]] = r["value"]
    return [
        {"model": model, **{f"{m}@{k}": cells[model].get(f"{m}@{k}", "") for m in metrics}}
        for model in sorted(cells, key=lambda model: -ndcg.get(model, 0.0))
    ]


def ab_rows(abtest: dict) -> list[dict]:
    """Per variant of an A/B replay (``outputs/<run>/service/abtest.json``): users, lists, success rates."""

    def rate(value: float | None, low: float | None, high: float | None) -> str:
        return "" if value is None else f"{value:.1%} [{low:.1%}, {high:.1%}]"

    return [
        {
            "variant": r["variant"],
            "users": r["users"],
            "lists": r["lists"],
            "successful lists": rate(r["success_rate"], r["lower"], r["upper"]),
            "users with a successful list": rate(r["user_success_rate"], r["user_lower"], r["user_upper"]),
        }
        for r in abtest.get("table", [])
    ]


def ab_section(paths: RunPaths) -> str:
    """The index page's A/B section, from the run's last replay (empty when there is none)."""
    file = paths.abtest
    if not file.is_file():
        return ""
    abtest = read_json(file)
    exp, counts = abtest["experiment"], abtest["replay"]
    return f"""<h2>A/B test: the test window replayed through the service</h2>
<p class="sub">Experiment <code>{html.escape(exp["name"])}</code>: {counts["users"]:,} users,
{counts["sessions"]:,} sessions ({html.escape(abtest["session_rule"])}). A list succeeds when its user
listens to one of its tracks within {exp["success_window_hours"]:g} h; {exp["confidence"]:.0%} Wilson
intervals.</p>{_table(ab_rows(abtest))}
<ul><li><strong>{html.escape(abtest["verdict"])}</strong></li></ul>"""


def build_report(params: str | Path, data_path: str | None = None, root: str | Path = ".") -> Path:
    """Render every executed notebook of the run and write ``reports/index.html``."""
    profile = load_profile(params, data_path=data_path)
    paths = RunPaths.for_profile(profile, root)
    # the stages' executed notebooks only: never a failed run's copy nor a killed one's temporary file
    executed = [paths.notebook(s.name) for s in STAGES if paths.notebook(s.name).is_file()]
    if not executed:
        raise FileNotFoundError(
            f"report: no executed notebooks in {paths.notebooks}; run the stages first (make all)"
        )
    timings = read_json(paths.timings) if paths.timings.is_file() else {}
    stage_rows = []
    for nb in executed:
        page = render_notebook(nb, paths.reports / f"{nb.stem}.html")
        t = timings.get(nb.stem, {})
        stage_rows.append(
            {
                "stage": f'<a href="{page.name}">{html.escape(STAGE_TITLES.get(nb.stem, nb.stem))}</a>',
                "wall time (s)": t.get("seconds", ""),
                "peak memory (GB)": round(t["peak_rss_mb"] / 1024, 2) if "peak_rss_mb" in t else "",
                "finished": t.get("finished", ""),
            }
        )
    stages_html = _table(stage_rows, markup=("stage",))

    summary = read_json(paths.data_summary) if paths.data_summary.is_file() else {}
    split = read_json(paths.split) if paths.split.is_file() else {}
    data_rows = (
        [{k: v for k, v in summary.items() if k in ("source", "rows", "users", "tracks", "tracks_listened")}]
        if summary
        else []
    )
    window_rows = [{"window": k, **v} for k, v in split.get("windows", {}).items()]
    dropped = [{"reason": k, "rows": v} for k, v in summary.get("dropped", {}).items()]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("notes", []))
    figures = "".join(_figure(paths.plot(name)) for name in KEY_FIGURES if paths.plot(name).is_file())
    profile_yaml = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
    headline = headline_rows(paths)
    evaluation_file = paths.evaluation
    evaluation = read_json(evaluation_file) if evaluation_file.is_file() else {}
    verdicts = "".join(f"<li><strong>{html.escape(v)}</strong></li>" for v in evaluation.get("verdicts", []))
    results_html = (
        f"""<h2>Results on the test window</h2>
<p class="sub">Warm users (seen before the test window); 95% bootstrap intervals over users.
Coverage: share of the catalogue in the top 10 lists.</p>{_table(headline)}
{f"<ul>{verdicts}</ul>" if verdicts else ""}"""
        if headline
        else ""
    )
    ab_html = ab_section(paths)

    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>musicrec: {html.escape(paths.run)}</title><style>{_STYLE}</style></head><body>
<h1>musicrec run <code>{html.escape(paths.run)}</code></h1>
<p class="sub">profile {html.escape(str(params))}; source {html.escape(profile.data.source)}</p>
{results_html}
{ab_html}
<h2>Stages</h2>{stages_html}
<h2>Data</h2>{_table(data_rows)}
<h3>Time windows</h3>{_table(window_rows)}
<h3>Rows dropped on purpose</h3>{_table(dropped)}
{f"<h3>Notes</h3><ul>{notes}</ul>" if notes else ""}
<h2>Key figures</h2><div class="figs">{figures or "<p>(no figures yet)</p>"}</div>
<h2>Profile</h2><pre>{html.escape(profile_yaml)}</pre>
</body></html>
"""
    index = paths.reports / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page)
    return index


def screenshot(page: Path, target: Path | None = None, width: int = 1200, height: int = 3000) -> Path:
    """A PNG of ``page`` as headless Chromium renders it (Debian's ``chromium`` package).

    Raises ``FileNotFoundError`` with the install command when Chromium is missing.
    """
    import shutil
    import subprocess
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise FileNotFoundError(
            "no Chromium to take the screenshot with: `sudo apt-get install chromium` "
            "(Debian) or any Chrome on PATH"
        )
    target = target or page.with_suffix(".png")
    with tempfile.TemporaryDirectory() as profile, atomic_path(target) as tmp:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={tmp}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return target
