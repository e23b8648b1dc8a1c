"""The candidates stage: fit every generator on a window and stream its lists to parquet.

``fit_window(profile, paths, "history")`` fits on the history window and writes
``outputs/<run>/candidates/history/``, the ranker's training candidates;
``fit_window(profile, paths, "history+labels")`` fits on everything before the
test window and writes ``outputs/<run>/candidates/``, which the test window and
the service use.
"""

from __future__ import annotations

import datetime as dt
import importlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm import tqdm

from musicrec.candidates.als import AlsGenerator
from musicrec.candidates.base import (
    SIMILAR_SCHEMA,
    USER_RECS_SCHEMA,
    FitData,
    batches,
    to_similar_frame,
    to_user_frame,
)
from musicrec.candidates.i2i import i2i_from_history, last_listens
from musicrec.candidates.popular import top_popular
from musicrec.candidates.random import RandomGenerator
from musicrec.config import Profile
from musicrec.io import ParquetStream, RunPaths, read_json, write_json, write_parquet
from musicrec.monitor import PeakMemory
from musicrec.schema import C

WINDOWS = ("history", "history+labels")


@dataclass
class GeneratorRun:
    """What one generator did on one window: times, sizes, where its files are."""

    generator: str
    window: str
    fit_seconds: float = 0.0
    recommend_seconds: float = 0.0
    similar_seconds: float = 0.0
    peak_rss_gb: float = 0.0
    rows: int = 0
    files: list[str] = field(default_factory=list)
    note: str = ""


def window_interactions(paths: RunPaths, window: str) -> pl.DataFrame:
    """The interactions a window's generators are fitted on (before labels, or before test)."""
    split = read_json(paths.split)
    end = split["label_start"] if window == "history" else split["test_start"]
    return (pl.scan_parquet(paths.interactions)
            .filter(pl.col(C.started_at) < pl.lit(dt.date.fromisoformat(end)).cast(pl.Datetime("ns")))
            .collect())


def labels_targets(paths: RunPaths) -> pl.DataFrame:
    """Listens in the labels window of users seen in history: what candidates should contain."""
    return window_targets(paths, "labels")


def window_targets(paths: RunPaths, window: str, warm: bool | None = True,
                   timestamps: bool = False) -> pl.DataFrame:
    """``user_id, track_id`` listens of the ``labels`` or ``test`` window.

    ``warm=True``: of users seen before the window (what recommendations are judged
    on); ``warm=False``: of the users first seen in it (the cold segment); ``None``: all.
    ``timestamps=True`` adds ``started_at`` (the A/B replay needs when each listen happened).
    """
    split = read_json(paths.split)
    bounds = {"labels": (split["label_start"], split["test_start"]), "test": (split["test_start"], None)}
    if window not in bounds:
        raise ValueError(f"window must be 'labels' or 'test', got {window!r}")
    start, end = (None if b is None else pl.lit(dt.date.fromisoformat(b)).cast(pl.Datetime("ns"))
                  for b in bounds[window])
    lf = pl.scan_parquet(paths.interactions)
    seen = lf.filter(pl.col(C.started_at) < start).select(C.user_id).unique()
    inside = lf.filter(pl.col(C.started_at) >= start)
    if end is not None:
        inside = inside.filter(pl.col(C.started_at) < end)
    inside = inside.select(C.user_id, C.track_id, *([C.started_at] if timestamps else []))
    if warm is not None:
        inside = inside.join(seen, on=C.user_id, how="semi" if warm else "anti")
    return inside.collect(engine="streaming")


def output_dir(paths: RunPaths, window: str) -> Path:
    return paths.candidates / "history" if window == "history" else paths.candidates


def _stream_users(path: Path, data: FitData, recommend: Callable, n: int, batch: int,
                  desc: str, progress: bool) -> int:
    """Write ``recommend(rows, n)`` for every user of the window, batch by batch."""
    with ParquetStream(path, USER_RECS_SCHEMA) as out:
        for rows in tqdm(list(batches(len(data.user_ids), batch)), desc=desc, disable=not progress):
            index = np.arange(rows.start, rows.stop)
            cols, scores = recommend(index, n)
            out.write(to_user_frame(data.user_ids[index], cols, scores, data.track_ids))
    return out.rows


def _stream_similar(path: Path, data: FitData, similar: Callable, n: int, batch: int,
                    desc: str, progress: bool) -> int:
    """Write ``similar(columns, n)`` for every track of the catalogue, batch by batch."""
    with ParquetStream(path, SIMILAR_SCHEMA) as out:
        for cols_slice in tqdm(list(batches(len(data.track_ids), batch)), desc=desc,
                               disable=not progress):
            cols = np.arange(cols_slice.start, cols_slice.stop)
            neighbours, scores = similar(cols, n)
            out.write(to_similar_frame(cols, neighbours, scores, data.track_ids))
    return out.rows


def fit_window(profile: Profile, paths: RunPaths, window: str, progress: bool = False
               ) -> list[GeneratorRun]:
    """Fit every generator on ``window`` and write its lists; return what each did."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    cfg = profile.candidates
    out = output_dir(paths, window)
    out.mkdir(parents=True, exist_ok=True)
    interactions = window_interactions(paths, window)
    tracks = pl.read_parquet(paths.tracks)
    features = pl.read_parquet(paths.track_features) if paths.track_features.is_file() else None
    data = FitData.build(interactions, tracks, features)
    runs: list[GeneratorRun] = []

    def timed(run: GeneratorRun, attr: str, fn: Callable):
        start = time.perf_counter()
        with PeakMemory() as memory:
            result = fn()
        setattr(run, attr, getattr(run, attr) + time.perf_counter() - start)
        run.peak_rss_gb = round(max(run.peak_rss_gb, memory.peak_gb), 2)
        return result

    # top-popular: one global list
    run = GeneratorRun("top_popular", window)
    popular = timed(run, "fit_seconds", lambda: top_popular(interactions, cfg.top_popular.n,
                                                            cfg.top_popular.days))
    write_parquet(popular, out / "top_popular.parquet")
    run.rows, run.files = popular.height, ["top_popular.parquet"]
    runs.append(run)

    # random: the floor
    run = GeneratorRun("random", window)
    rnd = RandomGenerator(profile.seed).fit(data)
    run.rows = timed(run, "recommend_seconds", lambda: _stream_users(
        out / "random.parquet", data, rnd.recommend, cfg.random.n, cfg.als.batch_users,
        f"random ({window})", progress))
    run.files = ["random.parquet"]
    runs.append(run)

    # ALS: user-to-item and item-to-item from one model
    run = GeneratorRun("personal_als", window)
    als = timed(run, "fit_seconds", lambda: AlsGenerator(cfg.als, profile.seed).fit(data))
    run.rows = timed(run, "recommend_seconds", lambda: _stream_users(
        out / "personal_als.parquet", data, als.recommend, cfg.als.n_users, cfg.als.batch_users,
        f"ALS top-{cfg.als.n_users} ({window})", progress))
    similar_rows = timed(run, "similar_seconds", lambda: _stream_similar(
        out / "similar.parquet", data, als.similar, cfg.als.n_similar, cfg.als.batch_tracks,
        f"ALS similar ({window})", progress))
    run.files = ["personal_als.parquet", "similar.parquet"]
    run.note = f"{similar_rows:,} similar pairs" + (
        f"; item pool: the {cfg.als.item_pool:,} most listened tracks" if als.items is not None else "")
    als.save(paths.models / ("history" if window == "history" else ""))
    runs.append(run)

    # i2i from history: the similar lists of each user's last listens
    run = GeneratorRun("i2i_history", window)
    similar = pl.scan_parquet(out / "similar.parquet")
    recent = last_listens(interactions, cfg.i2i_history.last_k).collect()

    def i2i_batches() -> int:
        with ParquetStream(out / "i2i_history.parquet", USER_RECS_SCHEMA) as stream:
            users = data.user_ids
            for part in batches(len(users), cfg.als.batch_users * 5):
                chunk = pl.Series(C.user_id, users[part]).implode()
                stream.write(i2i_from_history(
                    recent.filter(pl.col(C.user_id).is_in(chunk)), similar, cfg.i2i_history.n,
                    heard=interactions.lazy().filter(pl.col(C.user_id).is_in(chunk))))
        return stream.rows

    run.rows = timed(run, "recommend_seconds", i2i_batches)
    run.files = ["i2i_history.parquet"]
    run.note = f"from the ALS similar lists of each user's last {cfg.i2i_history.last_k} listens"
    runs.append(run)

    runs += _optional_generators(profile, data, out, window, progress, timed)
    write_json([asdict(r) for r in runs], out / "runs.json")
    return runs


def _optional_generators(profile: Profile, data: FitData, out: Path, window: str, progress: bool,
                         timed: Callable) -> list[GeneratorRun]:
    """Content-based and audio generators, where enabled and possible."""
    cfg = profile.candidates
    return [
        _optional_generator("content", "ContentGenerator", cfg.content, profile, data, out, window,
                            progress, timed),
        _optional_generator("audio", "AudioGenerator", cfg.audio, profile, data, out, window,
                            progress, timed),
    ]


def _optional_generator(name: str, class_name: str, gen_cfg, profile: Profile, data: FitData, out: Path,
                        window: str, progress: bool, timed: Callable) -> GeneratorRun:
    """Fit one optional generator and stream its user lists and similar lists (or say why not)."""
    run = GeneratorRun(name, window)
    for stale in (out / f"{name}.parquet", out / f"{name}_similar.parquet"):
        stale.unlink(missing_ok=True)
    if not gen_cfg.enabled:
        run.note = "disabled in the profile"
        return run
    make = getattr(importlib.import_module(f"musicrec.candidates.{name}"), class_name)
    try:
        gen = timed(run, "fit_seconds", lambda: make(gen_cfg, seed=profile.seed).fit(data))
    except ValueError as exc:
        run.note = f"skipped: {exc}"
        return run
    batch = getattr(gen_cfg, "batch_users", profile.candidates.als.batch_users)
    run.rows = timed(run, "recommend_seconds", lambda: _stream_users(
        out / f"{name}.parquet", data, gen.recommend, gen_cfg.n, batch, f"{name} ({window})", progress))
    timed(run, "similar_seconds", lambda: _stream_similar(
        out / f"{name}_similar.parquet", data, gen.similar, gen_cfg.n_similar,
        profile.candidates.als.batch_tracks, f"{name} similar ({window})", progress))
    run.files = [f"{name}.parquet", f"{name}_similar.parquet"]
    run.note = str(getattr(gen, "fit_report", "") or "")
    return run


def parameters_table(profile: Profile) -> pl.DataFrame:
    """One row per generator with its parameters from the profile, for display."""
    rows = []
    for name, section in profile.candidates:
        if hasattr(section, "model_dump"):
            params = ", ".join(f"{k}={v}" for k, v in section.model_dump(mode="json").items())
            rows.append({"generator": name, "parameters": params})
    return pl.DataFrame(rows)


def run_table(runs: list[GeneratorRun]) -> pl.DataFrame:
    """The runs as a table for display."""
    return pl.DataFrame([asdict(r) for r in runs]).drop("files")
