"""The figures the notebooks share; each returns a matplotlib figure."""

from __future__ import annotations

import datetime as dt
import math

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import polars as pl
import seaborn as sns

#: The saved figures' resolution (plots/<run>/*.png, and so the index page's).
DPI = 150


def use_theme() -> None:
    """seaborn's white-grid theme and colour-blind-safe palette for every figure; PNGs saved at
    :data:`DPI`; in a notebook, figures drawn at twice the screen's density and shown at their
    size (sharp, not enlarged). Applied when this module is imported."""
    sns.set_theme(style="whitegrid", palette="colorblind", rc={"figure.dpi": 100, "savefig.dpi": DPI})
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("retina")


use_theme()

WINDOW_COLOURS = {"history": "#4c72b0", "labels": "#dd8452", "test": "#55a868"}


def log_histogram(values: pl.Series, title: str, xlabel: str, bins: int = 50):
    """Counts on log-log axes, with the median and mean marked."""
    v = values.to_numpy()
    v = v[v > 0]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    edges = np.unique(np.logspace(0, np.log10(max(v.max(), 2)), bins).round())
    ax.hist(v, bins=edges, color="#4c72b0", alpha=0.85)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for stat, style in ((np.median(v), "--"), (v.mean(), ":")):
        ax.axvline(stat, color="black", linestyle=style, linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count (log)")
    ax.legend([f"median {np.median(v):,.0f}", f"mean {v.mean():,.0f}"], frameon=False)
    fig.tight_layout()
    return fig


def events_over_time(daily: pl.DataFrame, split: dict | None = None):
    """Listens and active users per day, with the window boundaries shaded."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    days = daily.get_column("day").to_list()
    ax.plot(days, daily.get_column("listens").to_numpy(), color="#4c72b0", label="listens")
    ax.set_ylabel("listens per day")
    ax2 = ax.twinx()
    ax2.plot(days, daily.get_column("users").to_numpy(), color="#c44e52", alpha=0.7, label="active users")
    ax2.set_ylabel("active users per day")
    if split:
        for name, w in split["windows"].items():
            ax.axvspan(
                dt.date.fromisoformat(w["start"]),
                dt.date.fromisoformat(w["end"]) + dt.timedelta(days=1),
                color=WINDOW_COLOURS[name],
                alpha=0.12,
                label=f"{name} window",
            )
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", frameon=False, fontsize=8)
    ax.set_title("Activity over time")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def share_bars(table: pl.DataFrame, label: str, value: str, title: str):
    """Horizontal bars of ``value`` by ``label``, largest on top."""
    fig, ax = plt.subplots(figsize=(7, 0.3 * table.height + 1.2))
    labels = table.get_column(label).to_list()[::-1]
    values = table.get_column(value).to_numpy()[::-1]
    ax.barh(labels, values, color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel(value)
    if value == "share":
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.tight_layout()
    return fig


def window_sizes(split: dict):
    """Rows and users per window, warm and cold users stacked."""
    names = list(split["windows"])
    w = [split["windows"][n] for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.bar(names, [x["rows"] for x in w], color=[WINDOW_COLOURS[n] for n in names])
    ax1.set_title("listens per window")
    ax1.set_yscale("log")
    warm = [x["warm_users"] for x in w]
    ax2.bar(names, warm, color="#4c72b0", label="warm (seen before)")
    ax2.bar(names, [x["cold_users"] for x in w], bottom=warm, color="#c44e52", label="cold (first seen here)")
    ax2.set_title("users per window")
    ax2.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def calibration_ratios(table: pl.DataFrame):
    """Generated over real for each calibration statistic (1 = a perfect match)."""
    t = table.filter(pl.col("ratio").is_finite())
    fig, ax = plt.subplots(figsize=(7, 0.28 * t.height + 1.2))
    ratios = t.get_column("ratio").to_numpy()[::-1]
    colours = ["#55a868" if 0.67 <= r <= 1.5 else "#c44e52" for r in ratios]
    ax.barh(t.get_column("statistic").to_list()[::-1], ratios, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    # a handful of labelled ratios: the default log ticks crowd into each other between decades
    low, high = min(ratios.min(), 0.5), max(ratios.max(), 2.0)
    ticks = [t for t in (0.01, 0.03, 0.1, 0.25, 0.5, 1, 2, 4, 10, 30, 100) if low / 1.5 <= t <= high * 1.5]
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("generated / Yandex Music (log; green within 1.5x)")
    ax.set_title("Calibration against the real data")
    fig.tight_layout()
    return fig


MISSING = "–"  # an en dash: what a report shows for a missing value


def cell_text(value: object, digits: int = 3) -> str:
    """One value as a report shows it: thousands separators, whole numbers without a decimal
    point, ``digits`` significant decimals for fractions, a dash for missing, dicts as
    ``key: value``, lists joined, text in full.

    >>> [cell_text(v) for v in (4116496, 1703.0, 0.12345, None, float("nan"), {"a": 1}, [1, 2])]
    ['4,116,496', '1,703', '0.123', '–', '–', 'a: 1', '1, 2']
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{value:,}"
    if isinstance(value, float | np.floating):
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == int(value) and abs(value) >= 1:
            return f"{int(value):,}"
        return f"{value:,.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.{digits}g}"
    if isinstance(value, dict):
        # a None entry is a key the value lacks (polars gives a struct column every row's keys)
        shown = [f"{k}: {cell_text(v, digits)}" for k, v in value.items() if v is not None]
        return ", ".join(shown) or MISSING
    if isinstance(value, list | tuple | pl.Series | np.ndarray):
        return ", ".join(cell_text(v, digits) for v in value) or MISSING
    if isinstance(value, dt.datetime | dt.date):
        return (
            value.isoformat(sep=" ", timespec="minutes")
            if isinstance(value, dt.datetime)
            else value.isoformat()
        )
    return str(value)


def table(df: pl.DataFrame | dict | list[dict], digits: int = 3):
    """A frame (or records, or columns) as a report table: every notebook's one formatter.

    No index column; the values as :func:`cell_text` writes them; numbers right-aligned. Returns
    a pandas ``Styler``, which Jupyter and the HTML reports show as a table.
    """
    if isinstance(df, dict) and df and all(isinstance(v, list) for v in df.values()):
        df = pl.DataFrame(df, strict=False)  # columns
    elif not isinstance(df, pl.DataFrame):
        df = pl.DataFrame(df if isinstance(df, list) else [df], strict=False)  # records, or one record
    numeric = [c for c, t in df.schema.items() if t.is_numeric()]
    import pandas as pd

    shown = pd.DataFrame({c: [cell_text(v, digits) for v in df.get_column(c).to_list()] for c in df.columns})
    styler = shown.style.hide(axis="index")
    text = [c for c in df.columns if c not in numeric]
    styler = styler.set_table_styles([{"selector": "th", "props": [("text-align", "left")]}])
    if text:
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    if numeric:
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
        styler = styler.set_properties(subset=numeric, **{"font-variant-numeric": "tabular-nums"})
    return styler


def settings_table(section) -> object:
    """A profile section (a pydantic model or a dict) as a two-column ``parameter, value`` table,
    every value written out in full (nested settings as ``key: value``)."""
    values = section.model_dump(mode="json") if hasattr(section, "model_dump") else dict(section)
    return table({"parameter": list(values), "value": [cell_text(v) for v in values.values()]})


def stage_times(runs: pl.DataFrame):
    """Seconds spent fitting, recommending and finding similar tracks, per generator and window."""
    parts = ["fit_seconds", "recommend_seconds", "similar_seconds"]
    labels = [
        f"{g}\n({w})" for g, w in zip(runs.get_column("generator"), runs.get_column("window"), strict=True)
    ]
    fig, ax = plt.subplots(figsize=(8, 0.35 * runs.height + 1.4))
    left = np.zeros(runs.height)
    for part, colour in zip(parts, ("#4c72b0", "#dd8452", "#55a868"), strict=True):
        values = runs.get_column(part).to_numpy()
        ax.barh(labels, values, left=left, color=colour, label=part.removesuffix("_seconds"))
        left += values
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Where the candidates stage spends its time")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def candidate_recall(recall: pl.DataFrame):
    """Recall of the labels window by list length, one line per generator (and their union)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name,), part in recall.sort("n").group_by("generator", maintain_order=True):
        style = {"linewidth": 3, "color": "black"} if name == "union" else {}
        ax.plot(part.get_column("n"), part.get_column("recall"), marker="o", label=name, **style)
    ax.set_xlabel("candidates per user (N)")
    ax.set_ylabel("share of labels-window listens found")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set_title("Candidate recall")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(curves: pl.DataFrame, best_iteration: int | None = None):
    """The ranker's metric by iteration on its training users and on held-out users."""
    fig, ax = plt.subplots(figsize=(7, 4))
    metric = curves.get_column("metric")[0] if curves.height else ""
    for (which,), part in curves.filter(pl.col("metric") == metric).group_by("set", maintain_order=True):
        ax.plot(
            part.get_column("iteration"),
            part.get_column("value"),
            label=which,
            marker="o" if which == "learn" else None,
            markersize=3,
        )
    if best_iteration is not None:
        ax.axvline(best_iteration, color="grey", linestyle="--", linewidth=1, label="best iteration")
    ax.set_xlabel("iteration (trees)")
    ax.set_ylabel(metric)
    ax.set_title("Ranker learning curves")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _error_bars(frame: pl.DataFrame, value: str, low: str, high: str) -> np.ndarray:
    """``xerr`` of ``barh``: from ``value`` down to ``low`` and up to ``high`` (0 where missing)."""

    def column(name: str) -> np.ndarray:
        return frame.get_column(name).fill_null(np.nan).to_numpy()

    y = column(value)
    return np.nan_to_num(np.vstack([y - column(low), column(high) - y]))


def metric_bars(values: pl.DataFrame, label: str, value: str, title: str, highlight: str | None = None):
    """Bars of ``value`` by ``label`` with the ``lower``/``upper`` interval where present."""
    fig, ax = plt.subplots(figsize=(7, 0.4 * values.height + 1.3))
    y = values.get_column(value).to_numpy()
    names = values.get_column(label).to_list()
    colours = ["#dd8452" if n == highlight else "#4c72b0" for n in names]
    err = _error_bars(values, value, "lower", "upper") if {"lower", "upper"} <= set(values.columns) else None
    ax.barh(names, y, xerr=err, color=colours, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(value)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def metric_curves(curves: pl.DataFrame):
    """Recall@k and NDCG@k against k, one line per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("recall", "ndcg"), strict=True):
        part = curves.filter(pl.col("metric") == metric).sort("k")
        for (name,), one in part.group_by("model", maintain_order=True):
            style = (
                {"linewidth": 3, "color": "black"}
                if name == "final"
                else {"linestyle": ":", "color": "grey"}
                if name == "oracle"
                else {}
            )
            ax.plot(one.get_column("k"), one.get_column("value"), label=name, **style)
        ax.set_xscale("log")
        ax.set_xlabel("k (list length)")
        ax.set_title(f"{metric}@k")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), frameon=False, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 * ((len(labels) + 3) // 4) + 0.02, 1, 1))
    return fig


def box_stats(frame: pl.DataFrame, group: str, value: str) -> list[dict]:
    """Per ``group`` (in order of appearance), matplotlib's box statistics of ``value``: quartiles,
    and whiskers at the furthest values within 1.5 IQR of the box (seaborn's and matplotlib's
    rule), computed in polars so that tens of millions of values never become a pandas frame."""
    v = pl.col(value)
    q1, q3 = v.quantile(0.25, "linear"), v.quantile(0.75, "linear")
    quartiles = frame.group_by(group, maintain_order=True).agg(
        q1.alias("q1"), v.median().alias("med"), q3.alias("q3")
    )
    low = pl.col("q1") - 1.5 * (pl.col("q3") - pl.col("q1"))
    high = pl.col("q3") + 1.5 * (pl.col("q3") - pl.col("q1"))
    whiskers = (
        frame.join(quartiles, on=group)
        .group_by(group, maintain_order=True)
        .agg(v.filter(v >= low).min().alias("whislo"), v.filter(v <= high).max().alias("whishi"))
    )
    rows = quartiles.join(whiskers, on=group, maintain_order="left")
    return [
        {"label": str(row[group]), **{k: row[k] for k in ("q1", "med", "q3", "whislo", "whishi")}}
        for row in rows.iter_rows(named=True)
    ]


def popularity_bias(bias: pl.DataFrame):
    """Box plots of the popularity of recommended tracks by model, beside what users heard (the
    statistics from :func:`box_stats`: at full scale the frame has some 80M rows)."""
    frame = bias.select(
        pl.col("model").cast(pl.Utf8), (pl.col("listeners").cast(pl.Float64) + 1).log10().alias("popularity")
    )
    stats = box_stats(frame, "model", "popularity")
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(stats) + 1.4))
    boxes = ax.bxp(stats[::-1], vert=False, showfliers=False, patch_artist=True, widths=0.6)
    for box, one in zip(boxes["boxes"], stats[::-1], strict=True):
        box.set_facecolor("#dd8452" if one["label"] == "test listens" else "#a1c9f4")
    ax.set_ylabel("")
    ax.set_xlabel("log10(1 + listeners before the test window) of a recommended top-10 track")
    ax.set_title("Popularity bias: what models recommend against what users heard")
    fig.tight_layout()
    return fig


def coverage_against_ndcg(points: pl.DataFrame):
    """Each model as a point: catalogue coverage of its top 10 against its NDCG@10, each named
    in a legend-like column on the right (labels beside the points collide)."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    rows = points.sort("ndcg", descending=True).to_dicts()
    palette = sns.color_palette("colorblind", len(rows))
    for colour, row in zip(palette, rows, strict=True):
        marker = "*" if row["model"] == "final" else "o"
        size = 160 if row["model"] == "final" else 55
        label = f"{row['model']}: NDCG {row['ndcg']:.3f}, coverage {row['coverage']:.1%}"
        ax.scatter(row["coverage"], row["ndcg"], s=size, color=colour, marker=marker, label=label, zorder=3)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=1))
    ax.set_xlabel("catalogue coverage of the top 10 (log)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Accuracy against coverage")
    ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def recall_candidates_final(rows: pl.DataFrame):
    """Grouped bars: each generator's candidate recall (labels window) beside its recall on test."""
    names = rows.get_column("model").to_list()
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 1.4))
    ax.barh(
        y - 0.2,
        rows.get_column("candidate recall (labels)").fill_null(0).to_numpy(),
        0.4,
        label="candidate recall, labels window (candidates stage)",
        color="#c6d4e8",
    )
    ax.barh(
        y + 0.2,
        rows.get_column("recall (test)").fill_null(0).to_numpy(),
        0.4,
        label="recall on the test window",
        color="#4c72b0",
    )
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title("Candidate recall beside the final recall (at the same list length)")
    fig.tight_layout()
    return fig


AB_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def ab_success(table: pl.DataFrame, title: str = "A/B replay: success by variant"):
    """Success rate per variant with its interval: of lists (left) and of users (right).

    ``table``: :func:`musicrec.service.replay.variant_table` (``success_rate, lower, upper``,
    ``user_success_rate, user_lower, user_upper`` by ``variant``).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * table.height + 2.2))
    names = table.get_column("variant").to_list()
    colours = [AB_COLOURS[i % len(AB_COLOURS)] for i in range(len(names))]
    panels = (
        ("success_rate", "lower", "upper", "lists that led to a listen"),
        ("user_success_rate", "user_lower", "user_upper", "users with a successful list"),
    )
    for ax, (value, low, high, label) in zip(axes, panels, strict=True):
        y = table.get_column(value).fill_null(np.nan).to_numpy()
        err = _error_bars(table, value, low, high)
        ax.barh(names, np.nan_to_num(y), xerr=err, color=colours, capsize=4)
        for i, v in enumerate(y):
            if not np.isnan(v):
                ax.text(v + err[1, i], i, f"  {v:.1%}", va="center", fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, min(1.0, np.nanmax(np.append(y + err[1], 0.01)) * 1.25))
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
        ax.set_title(label, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def ab_success_by_day(
    by_day: pl.DataFrame,
    order: list[str] | None = None,
    title: str = "A/B replay: share of successful lists by day",
):
    """One line per variant over the days, with the interval as a band (``day, variant, success_rate,
    lower, upper``: :func:`musicrec.service.replay.success_by_day`); ``order``: the variants' colours
    in :func:`ab_success`'s order."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = order or sorted(by_day.get_column("variant").unique().to_list())
    for i, name in enumerate(names):
        part = by_day.filter(pl.col("variant") == name).sort("day")
        days = part.get_column("day").to_list()
        colour = AB_COLOURS[i % len(AB_COLOURS)]
        ax.plot(
            days,
            part.get_column("success_rate").to_numpy(),
            marker="o",
            markersize=3,
            color=colour,
            label=name,
        )
        ax.fill_between(
            days,
            part.get_column("lower").to_numpy(),
            part.get_column("upper").to_numpy(),
            color=colour,
            alpha=0.2,
            linewidth=0,
        )
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    ax.set_ylabel("successful lists")
    ax.legend(frameon=False)
    ax.set_title(title)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig
