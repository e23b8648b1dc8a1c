"""HTML reports: every executed notebook without code, and an index page for the run."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import yaml

from musicrec.config import load_profile
from musicrec.io import RunPaths, atomic_path, read_json
from musicrec.plots import MISSING, cell_text
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

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1050px;margin:2rem auto;
padding:0 1.2rem;color:#1f2328;line-height:1.5}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2rem}
.sub{color:#59636e;margin-top:0}
table{border-collapse:collapse;margin:.6rem 0;font-size:.88rem}
th,td{border:1px solid #d0d7de;padding:.3rem .7rem;text-align:left}
th{background:#f6f8fa}td{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:.8rem;border-radius:6px;overflow-x:auto;font-size:.85rem}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(640px,1fr));gap:1rem}
.figs img{width:100%;border:1px solid #d0d7de;border-radius:6px}
a{color:#0969da}
.note{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.6rem .9rem}
details{margin:.6rem 0}summary{cursor:pointer;color:#0969da}
details table{font-size:.8rem}.toc a{margin-right:.7rem}
"""


_PAGE_STYLE = """<style>
.mr-nav{font:14px/1.5 system-ui,sans-serif;background:#f6f8fa;border-bottom:1px solid #d0d7de;
padding:.5rem 1rem;margin:0 0 1rem}.mr-nav a{color:#0969da;margin-right:.8rem}
.mr-nav .mr-contents{display:block;margin-top:.2rem;color:#59636e}
</style>"""


def _contents(body: str) -> list[tuple[str, str]]:
    """The (anchor, text) of every second-level heading nbconvert wrote."""
    found = re.findall(r'<h2 id="([^"]+)">(.*?)(?:<a class="anchor-link"|</h2>)', body, flags=re.S)
    return [(anchor, re.sub(r"<[^>]+>", "", text).strip()) for anchor, text in found]


def render_notebook(notebook: Path, target: Path, title: str | None = None, run: str = "") -> Path:
    """One executed notebook as HTML without code cells, titled, with a bar on top: a link back
    to the run's index page and the page's contents (its sections)."""
    import nbformat
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config()
    config.CoalesceStreamsPreprocessor.enabled = True  # merges a cell's stream outputs, applies \r
    exporter = HTMLExporter(
        config=config, exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True
    )
    title = title or notebook.stem
    page_title = f"{title} · musicrec {run}".strip()
    body, _ = exporter.from_notebook_node(
        nbformat.read(notebook, as_version=4), resources={"metadata": {"name": page_title}}
    )
    links = " ".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in _contents(body))
    nav = (
        f'{_PAGE_STYLE}<nav class="mr-nav"><a href="index.html">&larr; run {html.escape(run)}: index</a>'
        f"<strong>{html.escape(title)}</strong>"
        + (f'<span class="mr-contents">Contents: {links}</span>' if links else "")
        + "</nav>"
    )
    body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
    with atomic_path(target) as tmp:
        tmp.write_text(body)
    return target


def html_table(rows: list[dict], markup: tuple[str, ...] = (), numeric: tuple[str, ...] = ()) -> str:
    """Rows as an HTML table, values as :func:`musicrec.plots.cell_text` writes them; values of the
    ``markup`` columns are HTML already (links); ``numeric`` columns (and numbers) right-aligned."""
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = ""
    for r in rows:
        cells = ""
        for k, v in r.items():
            text = v if k in markup else html.escape(cell_text(v, digits=2) if v != "" else MISSING)
            number = k in numeric or (isinstance(v, int | float) and not isinstance(v, bool))
            cells += f'<td class="num">{text}</td>' if number else f"<td>{text}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


REFERENCE = ("oracle",)  # models that are not candidates for the winner: the synthetic ceiling
GENERATORS_EXCLUDED = ("final", "oracle")  # the lift is over the best of the other models


def _metrics(paths: RunPaths) -> list[dict]:
    return read_json(paths.metrics_json) if paths.metrics_json.is_file() else []


def _pick(rows: list[dict], metric: str, k: int, segment: str = "all") -> dict[str, dict]:
    """model -> its row for ``metric@k`` on ``segment`` (rows with a value only)."""
    return {
        r["model"]: r
        for r in rows
        if r["metric"] == metric and r["k"] == k and r["segment"] == segment and r["value"] is not None
    }


def _percent(value: float, digits: int = 0) -> str:
    return f"{value:+.{digits}%}"


def headline_rows(paths: RunPaths, k: int = 10) -> list[dict]:
    """The run card's table: models by NDCG@k (the winner marked), each value with its 95%
    interval: NDCG@k, recall@k, the lift in NDCG@k over the best other model (the final list's,
    from the paired comparison), the share of the oracle's NDCG@k, and catalogue coverage@k (a
    count over every warm user's list: exact, see :data:`COVERAGE_NOTE`)."""
    rows = _metrics(paths)
    ndcg, recall, coverage = (_pick(rows, m, k) for m in ("ndcg", "recall", "coverage"))
    if not ndcg:
        return []
    winner = max((m for m in ndcg if m not in REFERENCE), key=lambda m: ndcg[m]["value"], default=None)
    oracle = ndcg.get("oracle")
    comparison = read_json(paths.evaluation).get("comparison", []) if paths.evaluation.is_file() else []
    paired = {(c["model_a"], c["model_b"]): c for c in comparison if c["metric"] == "ndcg" and c["k"] == k}
    bases = {b for (_, b) in paired}
    lift_column = f"lift over {'/'.join(sorted(bases))} (NDCG)" if bases else "lift (NDCG)"
    out = []
    for model in sorted(ndcg, key=lambda m: -ndcg[m]["value"]):
        r = ndcg[model]
        lift = ""
        against = next((c for (a, _), c in paired.items() if a == model), None)
        if against is not None and against["mean_b"]:
            base = against["mean_b"]
            lift = (
                f"{_percent(against['diff'] / base)} "
                f"[{_percent(against['lower'] / base)}, {_percent(against['upper'] / base)}]"
            )
        share = ""
        if oracle is not None and model != "oracle" and oracle["value"]:
            o = oracle["value"]
            share = f"{r['value'] / o:.0%} [{r['lower'] / o:.0%}, {r['upper'] / o:.0%}]"
        cov = coverage.get(model)
        out.append(
            {
                "model": f"{model} ★ winner"
                if model == winner
                else f"{model} (reference: true taste)"
                if model in REFERENCE
                else model,
                f"NDCG@{k}": interval_cell(r["value"], r["lower"], r["upper"], digits=4),
                f"recall@{k}": interval_cell(
                    *(recall[model][x] for x in ("value", "lower", "upper")), digits=4
                )
                if model in recall
                else "–",
                lift_column: lift or "–",
                "share of the oracle (NDCG)": share or "–",
                f"coverage@{k} (exact)": f"{cov['value']:.1%}" if cov else "–",
            }
        )
    return out


COVERAGE_NOTE = (
    "Coverage counts the distinct tracks in the top-10 lists of every warm user: it is a count over "
    "all of them, not an estimate from a sample, so it is shown without an interval (a bootstrap of a "
    "distinct count is biased low: a resample holds about 63% of the users)."
)


ORACLE_NOTE = (
    "The oracle ranks by the synthetic users' true taste, not by what they went on to play, so it is "
    "no ceiling where a model learns the listening itself (repeats, popularity, recency)."
)


def oracle_caveats(paths: RunPaths) -> list[str]:
    """Where the oracle is not a ceiling: each metric@k (all warm users) on which a model scores
    above it, as ``recall@100: final 0.363 against 0.339``."""
    rows = _metrics(paths)
    notes = []
    for metric, k in sorted({(r["metric"], r["k"]) for r in rows if r["model"] == "oracle"}):
        picked = _pick(rows, metric, k)
        if "oracle" not in picked or metric in ("coverage", "novelty", "diversity"):
            continue
        ceiling = picked["oracle"]["value"]
        above = [m for m, r in picked.items() if m != "oracle" and r["value"] > ceiling]
        if above:
            shown = ", ".join(f"{m} {picked[m]['value']:.3f}" for m in above)
            notes.append(f"{metric}@{k}: {shown} against {ceiling:.3f}")
    return notes


def metric_grid(paths: RunPaths) -> str:
    """Every metric, k and segment: one row per (segment, model), one column per metric@k."""
    rows = _metrics(paths)
    if not rows:
        return ""
    columns = sorted({(r["metric"], r["k"]) for r in rows})
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        key = (r["segment"], r["model"])
        cells.setdefault(key, {})[f"{r['metric']}@{r['k']}"] = (
            interval_cell(r["value"], r["lower"], r["upper"], digits=4) or "–"
        )
    segment_order = {s: i for i, s in enumerate(("all", "light", "medium", "heavy", "cold"))}
    ordered = sorted(cells, key=lambda key: (segment_order.get(key[0], 9), key[0], key[1]))
    table_rows = [
        {
            "segment": seg,
            "model": model,
            **{f"{m}@{k}": cells[(seg, model)].get(f"{m}@{k}", "–") for m, k in columns},
        }
        for seg, model in ordered
    ]
    return html_table(table_rows)


def _provenance(paths: RunPaths) -> dict[str, dict]:
    """Stage -> its record in ``outputs/<run>/provenance.json`` (empty before any stage ran)."""
    return read_json(paths.provenance) if paths.provenance.is_file() else {}


def provenance_rows(records: dict[str, dict]) -> list[dict]:
    """What made the run: per stage, the commit (and a dirty tree) and the time."""
    rows = [
        {
            "stage": STAGE_TITLES.get(stage, stage),
            "commit": str(r.get("git_commit", ""))[:12]
            + (" (uncommitted changes)" if r.get("git_dirty") else ""),
            "ran at": r.get("time", ""),
        }
        for stage, r in records.items()
    ]
    return rows


def environment_rows(records: dict[str, dict]) -> list[dict]:
    """The packages and the machine of the run's latest stage."""
    latest = max(records.values(), key=lambda r: r.get("time", ""), default={})
    keys = [k for k in latest if k.endswith("_version")] + ["cpu_count", "memory_gb", "platform", "machine"]
    return [{"what": k.removesuffix("_version"), "value": str(latest.get(k))} for k in keys if k in latest]


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
intervals.</p>{html_table(ab_rows(abtest))}
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
        title = STAGE_TITLES.get(nb.stem, nb.stem)
        page = render_notebook(nb, paths.reports / f"{nb.stem}.html", title=title, run=paths.run)
        t = timings.get(nb.stem, {})
        stage_rows.append(
            {
                "stage": f'<a href="{page.name}">{html.escape(STAGE_TITLES.get(nb.stem, nb.stem))}</a>',
                "wall time (s)": t.get("seconds", ""),
                "peak memory (GB)": round(t["peak_rss_mb"] / 1024, 2) if "peak_rss_mb" in t else "",
                "finished": t.get("finished", ""),
            }
        )
    stages_html = html_table(stage_rows, markup=("stage",))

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
    caveats = oracle_caveats(paths)
    caveat_html = (
        f"""<p class="note"><strong>The oracle is not a ceiling everywhere.</strong> {ORACLE_NOTE}
Above it: {html.escape("; ".join(caveats))}.</p>"""
        if caveats
        else ""
    )
    grid = metric_grid(paths)
    results_html = (
        f"""<h2>Results on the test window</h2>
<p class="sub">Warm users (seen before the test window). Every sampled value with its 95% bootstrap
interval over users; the lift is the paired bootstrap of the final list's NDCG@10 minus the best other
model's, relative to it; the share of the oracle is the model's NDCG@10 over the oracle's (its interval
the model's). {html.escape(COVERAGE_NOTE)}</p>{html_table(headline)}
{f"<ul>{verdicts}</ul>" if verdicts else ""}{caveat_html}
<details><summary>Every metric, k and segment</summary>{grid}</details>"""
        if headline
        else ""
    )
    ab_html = ab_section(paths)
    records = _provenance(paths)  # read once for both tables
    made = provenance_rows(records)
    commits = sorted({r["commit"] for r in made})
    made_by = f"; commit {html.escape(', '.join(commits))}" if commits else ""
    provenance_html = (
        f"""<h2>How it was made</h2>{html_table(made)}
<details><summary>Packages and machine</summary>{html_table(environment_rows(records))}</details>"""
        if made
        else ""
    )

    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>musicrec: {html.escape(paths.run)}</title><style>{STYLE}</style></head><body>
<h1>musicrec run <code>{html.escape(paths.run)}</code></h1>
<p class="sub">profile {html.escape(str(params))}; source {html.escape(profile.data.source)}{made_by}</p>
<nav class="toc">Contents: <a href="#results">Results</a> <a href="#stages">Stages</a>
<a href="#data">Data</a> <a href="#figures">Key figures</a> <a href="#made">How it was made</a>
<a href="#profile">Profile</a></nav>
<div id="results">{results_html}</div>
{ab_html}
<h2 id="stages">Stages</h2>{stages_html}
<h2 id="data">Data</h2>{html_table(data_rows)}
<h3>Time windows</h3>{html_table(window_rows)}
<h3>Rows dropped on purpose</h3>{html_table(dropped)}
{f"<h3>Notes</h3><ul>{notes}</ul>" if notes else ""}
<h2 id="figures">Key figures</h2><div class="figs">{figures or "<p>(no figures yet)</p>"}</div>
<div id="made">{provenance_html}</div>
<h2 id="profile">Profile</h2><details><summary>{html.escape(str(params))} as the run read it</summary>
<pre>{html.escape(profile_yaml)}</pre></details>
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
