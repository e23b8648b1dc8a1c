"""The README's results table, regenerated from the runs' ``metrics.json`` (nothing typed by hand).

``python -m musicrec results default ium movielens lastfm`` (``make results``) reads
``outputs/<run>/metrics.json`` of each run and rewrites the block between the
``<!-- results:start -->`` and ``<!-- results:end -->`` markers of ``README.md``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from musicrec.io import RunPaths, atomic_path, read_json

START, END = "<!-- results:start -->", "<!-- results:end -->"
HEADLINE = (("ndcg", 10), ("recall", 10))


def interval_cell(value: float | None, lower: float | None, upper: float | None, digits: int = 3) -> str:
    """``value [lower, upper]`` with ``digits`` decimals; no interval when ``lower`` is missing, ``""`` when
    ``value`` is (a NaN metric is ``null`` in ``metrics.json``)."""
    if value is None:
        return ""
    interval = "" if lower is None else f" [{lower:.{digits}f}, {upper:.{digits}f}]"
    return f"{value:.{digits}f}{interval}"


def run_metrics(root: Path, run: str) -> pl.DataFrame:
    """One run's metrics (segment ``all``), or a clear error naming the missing file."""
    path = RunPaths(Path(root).resolve(), run).metrics_json
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics for run {run!r}; run `make evaluate` on its profile")
    return pl.DataFrame(read_json(path)).filter(pl.col("segment") == "all")


def run_label(root: Path, run: str) -> str:
    """The run's name in a column header, with ``(per-user)`` when its ``split.json`` used the
    per-user protocol: its numbers are not comparable with a global split's."""
    split = RunPaths(Path(root).resolve(), run).split
    per_user = split.is_file() and read_json(split).get("protocol") == "per_user"
    return f"{run} (per-user)" if per_user else run


def results_table(runs: list[str], root: str | Path = ".") -> str:
    """A markdown table: one row per model, NDCG@10 and recall@10 [95% interval] per run."""
    cells: dict[str, dict[str, str]] = {}
    labels = {run: run_label(Path(root), run) for run in runs}
    for run in runs:
        frame = run_metrics(Path(root), run)
        for metric, k in HEADLINE:
            part = frame.filter((pl.col("metric") == metric) & (pl.col("k") == k))
            for row in part.iter_rows(named=True):
                cells.setdefault(row["model"], {})[f"{labels[run]} {metric}@{k}"] = interval_cell(
                    row["value"], row["lower"], row["upper"]
                )
    columns = [f"{labels[run]} {metric}@{k}" for run in runs for metric, k in HEADLINE]
    order = sorted(cells, key=lambda m: (m != "oracle", m != "final", m))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model in order:
        lines.append(f"| {model} | " + " | ".join(cells[model].get(c, "") for c in columns) + " |")
    return "\n".join(lines)


def update_readme(readme: str | Path, table: str, start: str = START, end: str = END) -> Path:
    """Replace the block between the ``start`` and ``end`` markers of ``readme`` (the results
    markers by default) with ``table``; the rest of the file is kept byte for byte."""
    readme = Path(readme)
    text = readme.read_text()
    if start not in text or end not in text.split(start, 1)[1]:
        raise ValueError(f"{readme}: no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with atomic_path(readme) as tmp:
        tmp.write_text(f"{head}{start}\n{table}\n{end}{tail}")
    return readme
