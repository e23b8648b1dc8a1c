"""The candidates stage: fit every generator on a window and stream its lists to parquet.

``fit_window(profile, paths, "history")`` fits on the history window and writes
``outputs/<run>/candidates/history/``, the ranker's training candidates;
``fit_window(profile, paths, "history+labels")`` fits on everything before the
test window and writes ``outputs/<run>/candidates/``, which the test window and
the service use.
"""

from __future__ import annotations

import importlib
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

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
from musicrec.candidates.itemknn import ItemKnnGenerator
from musicrec.candidates.popular import top_popular, top_popular_of_matrix
from musicrec.candidates.random import RandomGenerator
from musicrec.config import Profile
from musicrec.io import ParquetStream, RunPaths, atomic_path, write_json, write_parquet
from musicrec.monitor import PeakMemory
from musicrec.parallel import WORKERS, in_order
from musicrec.progress import bar, step
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
    return paths.windows().fit_listens(pl.scan_parquet(paths.interactions), window).collect()


def typical_user(paths: RunPaths, latest: int = 10) -> tuple[int, int, pl.DataFrame]:
    """The median user by listens before the test window (ties by user id), for the notebook.

    Returns ``(user_id, listens, latest)``: ``latest`` holds their ``latest`` newest listens as
    ``started_at, track_id``, newest first. Lazy: at the full scale the history is 200M rows.
    """
    history = paths.windows().fit_listens(pl.scan_parquet(paths.interactions), "history+labels")
    sizes = history.group_by(C.user_id).len().sort("len", C.user_id).collect(engine="streaming")
    user, n_listens = sizes.row(sizes.height // 2)
    recent = (
        history.filter(pl.col(C.user_id) == user)
        .sort(C.started_at, C.track_seq, descending=True)
        .head(latest)
        .select(C.started_at, C.track_id)
        .collect()
    )
    return user, n_listens, recent


def labels_targets(paths: RunPaths, users: np.ndarray | None = None) -> pl.DataFrame:
    """Listens in the labels window of users seen in history (of ``users`` only, when given):
    what candidates should contain."""
    targets = window_targets(paths, "labels")
    if users is not None:
        targets = targets.join(
            pl.DataFrame({C.user_id: users}).cast(targets.schema[C.user_id]), on=C.user_id, how="semi"
        )
    return targets


def training_users(targets: pl.DataFrame, sample: int | None, seed: int) -> np.ndarray:
    """Users with a labels-window listen (sorted), or a seeded sample of ``sample`` of them."""
    users = np.unique(targets.get_column(C.user_id).to_numpy())
    if sample is not None and sample < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, sample, replace=False))
    return users


def list_users(profile: Profile, paths: RunPaths) -> np.ndarray | None:
    """The users who get lists from the history fit: the ranker's training users, or None for all.

    The history fit's lists serve only to train the ranker (and to measure candidate recall), and
    the ranker trains on a seeded sample of ``ranking.train_users`` users with a labels-window
    listen: lists for the other users would never be read. Every user still counts in the fit.
    """
    if profile.ranking.train_users is None:
        return None
    return training_users(labels_targets(paths), profile.ranking.train_users, profile.seed)


def window_targets(
    paths: RunPaths, window: str, warm: bool | None = True, timestamps: bool = False
) -> pl.DataFrame:
    """``user_id, track_id`` listens of the ``labels`` or ``test`` window.

    ``warm=True``: of users seen before the window (what recommendations are judged
    on); ``warm=False``: of the users first seen in it (the cold segment); ``None``: all.
    ``timestamps=True`` adds ``started_at`` (the A/B replay needs when each listen happened).
    """
    windows = paths.windows()
    lf = pl.scan_parquet(paths.interactions)
    seen = windows.users_before(lf, window)
    inside = windows.target_listens(lf, window).select(
        C.user_id, C.track_id, *([C.started_at] if timestamps else [])
    )
    if warm is not None:
        inside = inside.join(seen, on=C.user_id, how="semi" if warm else "anti")
    return inside.collect(engine="streaming")


def output_dir(paths: RunPaths, window: str) -> Path:
    return paths.candidate_dir(window)


def _write_batches(
    path: Path,
    schema: dict,
    work: Callable[[np.ndarray], pl.DataFrame],
    parts: list[np.ndarray],
    workers: int,
    desc: str = "",
    progress: bool = False,
) -> int:
    """Write ``work(part)`` for every part to one parquet file, in order, ``workers`` computed at a
    time (:func:`musicrec.parallel.in_order`); return the rows written."""
    with ParquetStream(path, schema) as out:
        for frame in bar(in_order(work, parts, workers), total=len(parts), desc=desc, enabled=progress):
            out.write(frame)
    return out.rows


def _stream_users(
    path: Path,
    data: FitData,
    recommend: Callable,
    n: int,
    batch: int,
    desc: str,
    progress: bool,
    workers: int = 1,
    rows: np.ndarray | None = None,
) -> int:
    """Write ``recommend(rows, n)`` for the users at matrix ``rows`` (all when None), batch by batch."""
    rows = np.arange(len(data.user_ids)) if rows is None else rows

    def work(index: np.ndarray) -> pl.DataFrame:
        return to_user_frame(data.user_ids[index], *recommend(index, n), data.track_ids)

    return _write_batches(
        path,
        USER_RECS_SCHEMA,
        work,
        [rows[part] for part in batches(len(rows), batch)],
        workers,
        desc,
        progress,
    )


def _stream_similar(
    path: Path,
    data: FitData,
    similar: Callable,
    n: int,
    batch: int,
    desc: str,
    progress: bool,
    workers: int = 1,
) -> int:
    """Write ``similar(columns, n)`` for every track of the catalogue, batch by batch."""

    def work(cols: np.ndarray) -> pl.DataFrame:
        return to_similar_frame(cols, *similar(cols, n), data.track_ids)

    cols = np.arange(len(data.track_ids))
    return _write_batches(
        path,
        SIMILAR_SCHEMA,
        work,
        [cols[part] for part in batches(len(cols), batch)],
        workers,
        desc,
        progress,
    )


def _copy_from_history(name: str, out: Path) -> int:
    """Copy the history window's ``name`` list (atomically); return its rows."""
    source = out / "history" / name
    with atomic_path(out / name) as tmp:
        shutil.copyfile(source, tmp)
    return pl.scan_parquet(source).select(pl.len()).collect().item()


def _timed(progress: bool, run: GeneratorRun, attr: str, fn: Callable):
    """``fn()``, adding its wall time to ``run.<attr>`` and its peak memory to the run's (and
    saying when it starts and ends, with ``progress``)."""
    start = time.perf_counter()
    what = f"{run.generator} ({run.window}): {attr.removesuffix('_seconds')}"
    with step(what, enabled=progress), PeakMemory() as memory:
        result = fn()
    setattr(run, attr, getattr(run, attr) + time.perf_counter() - start)
    run.peak_rss_gb = round(max(run.peak_rss_gb, memory.peak_gb), 2)
    return result


class CandidateStage:
    """Fits every generator on a window and writes its lists; see the module docstring.

    Fitting ``history`` first keeps what does not depend on the window in memory for the
    ``history + labels`` fit: the ALS history model (for ``als.refit`` warm or users), the
    audio embeddings and their index, and the lists that come from the catalogue alone
    (content and audio similar tracks; ALS similar tracks when only users are refitted),
    which are copied instead of computed again. The history fit writes user lists only for
    :func:`list_users` (the ranker's training users). Fitted alone, ``history + labels`` loads
    the ALS history model from ``outputs/<run>/models/history/`` and computes the rest.
    """

    def __init__(self, profile: Profile, paths: RunPaths, progress: bool = False, workers: int = WORKERS):
        self.profile, self.paths, self.progress, self.workers = profile, paths, progress, workers
        self._history: dict[str, object] = {}

    def fit(self, window: str) -> list[GeneratorRun]:
        """Fit every generator on ``window`` and write its lists; return what each did."""
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
        profile, paths, progress, workers = self.profile, self.paths, self.progress, self.workers
        cfg = profile.candidates
        out = output_dir(paths, window)
        out.mkdir(parents=True, exist_ok=True)
        with step(f"candidates ({window}): the window's listens read", progress):
            interactions = window_interactions(paths, window)
            tracks = pl.read_parquet(paths.tracks)
            features = pl.read_parquet(paths.track_features) if paths.track_features.is_file() else None
        with step(f"candidates ({window}): the users-by-tracks matrix built", progress):
            data = FitData.build(interactions, tracks, features)
        if profile.engine == "spark":  # started (or found) here, so no generator's time counts it
            from musicrec.spark import spark_session

            with step(f"candidates ({window}): the Spark session started", progress):
                spark_session(profile)
        reuse = window == "history+labels" and bool(self._history)
        self.rows = np.arange(len(data.user_ids))
        if window == "history":
            users = list_users(profile, paths)
            if users is not None:
                self.rows = data.user_rows(users)
                self.rows = self.rows[self.rows >= 0]
        runs: list[GeneratorRun] = []

        # top-popular: one global list
        run = GeneratorRun("top_popular", window)
        popular = _timed(
            self.progress, run, "fit_seconds", lambda: self._top_popular(data, interactions, window)
        )
        write_parquet(popular, out / "top_popular.parquet")
        if profile.engine == "spark":
            run.note = "on Spark"
        run.rows, run.files = popular.height, ["top_popular.parquet"]
        runs.append(run)

        # random: the floor
        run = GeneratorRun("random", window)
        rnd = RandomGenerator(profile.seed).fit(data)
        run.rows = _timed(
            self.progress,
            run,
            "recommend_seconds",
            lambda: _stream_users(
                out / "random.parquet",
                data,
                rnd.recommend,
                cfg.random.n,
                cfg.als.batch_users,
                f"random ({window})",
                progress,
                workers,
                self.rows,
            ),
        )
        run.files = ["random.parquet"]
        runs.append(run)

        runs.append(self._als(data, out, window))
        runs.append(self._i2i(data, interactions, out, window))
        runs.append(self._item_knn(data, out, window))
        runs += [
            self._optional("content", "ContentGenerator", cfg.content, data, out, window, reuse),
            self._optional("audio", "AudioGenerator", cfg.audio, data, out, window, reuse),
        ]
        write_json([asdict(r) for r in runs], out / "runs.json")
        for kept in self._history.values():
            kept.data = None  # what is kept never needs the history window's listens again (~7 GB at full)
        return runs

    def _top_popular(self, data: FitData, interactions: pl.DataFrame, window: str) -> pl.DataFrame:
        """The window's top-popular list: on Spark with ``engine: spark``
        (:func:`musicrec.spark.popular.top_popular` of :func:`musicrec.spark.als.window_listens`),
        else locally (from the matrix's listeners when the whole window counts); the same list."""
        cfg = self.profile.candidates.top_popular
        if self.profile.engine == "spark":
            from musicrec.spark import popular, spark_session
            from musicrec.spark.als import window_listens

            listens = window_listens(spark_session(self.profile), self.paths, window)
            return popular.top_popular(listens, cfg.n, cfg.days)
        if cfg.days is not None:
            return top_popular(interactions, cfg.n, cfg.days)
        return top_popular_of_matrix(data.track_ids, data.listeners(), cfg.n)

    def _als(self, data: FitData, out: Path, window: str) -> GeneratorRun:
        """ALS user-to-item and item-to-item from one model (refitted from the history one)."""
        if self.profile.engine == "spark":
            return self._spark_als(data, out, window)
        cfg, paths = self.profile.candidates.als, self.paths
        run = GeneratorRun("personal_als", window)
        previous = None
        if window == "history+labels" and cfg.refit != "full":
            previous = self._history.get("als") or AlsGenerator.load(
                cfg, paths.model_dir("history"), self.profile.seed
            )
        als = _timed(
            self.progress,
            run,
            "fit_seconds",
            lambda: AlsGenerator(cfg, self.profile.seed).fit(data, previous, self.progress),
        )
        run.rows = _timed(
            self.progress,
            run,
            "recommend_seconds",
            lambda: _stream_users(
                out / "personal_als.parquet",
                data,
                als.recommend,
                cfg.n_users,
                cfg.batch_users,
                f"ALS top-{cfg.n_users} ({window})",
                self.progress,
                self.workers,
                self.rows,
            ),
        )
        kept_items = cfg.refit == "users" and previous is not None
        if kept_items and (out / "history" / "similar.parquet").is_file():
            similar_rows = _timed(
                self.progress, run, "similar_seconds", lambda: _copy_from_history("similar.parquet", out)
            )
            copied = "; similar lists: the history fit's (item factors kept)"
        else:
            similar_rows = _timed(
                self.progress,
                run,
                "similar_seconds",
                lambda: _stream_similar(
                    out / "similar.parquet",
                    data,
                    als.similar,
                    cfg.n_similar,
                    cfg.batch_tracks,
                    f"ALS similar ({window})",
                    self.progress,
                    self.workers,
                ),
            )
            copied = ""
        run.files = ["personal_als.parquet", "similar.parquet"]
        run.note = f"{similar_rows:,} similar pairs" + (
            f"; item pool: the {len(als.items):,} most listened tracks" if als.items is not None else ""
        )
        run.note += (f"; refit: {cfg.refit}" if previous is not None else "") + copied
        als.save(paths.model_dir(window))
        if window == "history":
            self._history["als"] = als
        return run

    def _spark_als(self, data: FitData, out: Path, window: str) -> GeneratorRun:
        """ALS on Spark (:mod:`musicrec.spark.als`, ``engine: spark``), the same two files as the
        local one: fitted on the history; on history + labels fitted afresh, or with ``refit: users``
        the history item factors kept and each user's factors solved (the similar lists copied from
        the history fit). ``refit: warm`` is a full fit here (Spark's ALS takes no initial factors)."""
        from musicrec.spark import spark_session
        from musicrec.spark.als import fit_and_write, window_listens

        cfg, paths = self.profile.candidates.als, self.paths
        run = GeneratorRun("personal_als", window)
        spark = spark_session(self.profile)
        users = data.user_ids[self.rows] if len(self.rows) < len(data.user_ids) else None
        history = paths.model_dir("history")
        refit = (
            window == "history+labels"
            and cfg.refit == "users"
            and (history / "als_spark").is_dir()
            and (out / "history" / "similar.parquet").is_file()
        )
        started = time.perf_counter()

        def fitted(_gen) -> None:
            run.fit_seconds = time.perf_counter() - started

        with PeakMemory() as memory:
            gen = fit_and_write(
                cfg,
                self.profile.seed,
                window_listens(spark, paths, window),
                out,
                users=users,
                on_fit=fitted,
                models=paths.model_dir(window),
                history=history if refit else None,
            )
        run.recommend_seconds = time.perf_counter() - started - run.fit_seconds
        run.peak_rss_gb = round(memory.peak_gb, 2)  # the driver's; the executors' are Spark's own
        run.note = (
            f"Spark ALS (refit: {'users' if refit else 'full'}); item pool: {len(gen.pool_ids):,} tracks"
        )
        if refit:
            _timed(self.progress, run, "similar_seconds", lambda: _copy_from_history("similar.parquet", out))
            run.note += "; similar lists: the history fit's (item factors kept)"
        run.rows = pl.scan_parquet(out / "personal_als.parquet").select(pl.len()).collect().item()
        run.files = ["personal_als.parquet", "similar.parquet"]
        return run

    def _i2i(self, data: FitData, interactions: pl.DataFrame, out: Path, window: str) -> GeneratorRun:
        """i2i from history: the similar lists of each user's last listens, users in batches."""
        cfg = self.profile.candidates
        run = GeneratorRun("i2i_history", window)
        if self.profile.engine == "spark":
            return self._spark_i2i(data, out, window, run)
        similar = pl.read_parquet(out / "similar.parquet", columns=[C.track_id, C.similar_track_id, C.score])
        # sorted by user: each batch is a slice, never a scan of the whole window
        recent = last_listens(interactions, cfg.i2i_history.last_k).collect()
        recent_users = recent.get_column(C.user_id).to_numpy()

        def work(part: np.ndarray) -> pl.DataFrame:
            users = data.user_ids[part]
            lo = np.searchsorted(recent_users, users[0], side="left")
            hi = np.searchsorted(recent_users, users[-1], side="right")
            block = data.matrix[part]
            heard = pl.DataFrame(
                {
                    C.user_id: np.repeat(users, np.diff(block.indptr)),
                    C.track_id: data.track_ids[block.indices],
                }
            )
            mine = recent.slice(lo, hi - lo)
            if hi - lo and mine.get_column(C.user_id).n_unique() > len(users):  # a sample of users
                mine = mine.filter(pl.col(C.user_id).is_in(pl.Series(users).implode()))
            return i2i_from_history(mine, similar, cfg.i2i_history.n, heard=heard)

        def i2i_batches() -> int:
            parts = [self.rows[part] for part in batches(len(self.rows), cfg.als.batch_users * 5)]
            # polars already uses both cores: one batch prepared ahead while the last is written
            return _write_batches(out / "i2i_history.parquet", USER_RECS_SCHEMA, work, parts, 1)

        run.rows = _timed(self.progress, run, "recommend_seconds", i2i_batches)
        run.files = ["i2i_history.parquet"]
        run.note = f"from the ALS similar lists of each user's last {cfg.i2i_history.last_k} listens"
        return run

    def _spark_i2i(self, data: FitData, out: Path, window: str, run: GeneratorRun) -> GeneratorRun:
        """i2i from history on Spark (:mod:`musicrec.spark.i2i`, ``engine: spark``): the window's
        listens read by Spark, the similar lists ALS just wrote, the same file as the local one."""
        from musicrec.spark import spark_session
        from musicrec.spark.als import window_listens
        from musicrec.spark.i2i import write_i2i_from_history

        cfg = self.profile.candidates.i2i_history
        listens = window_listens(spark_session(self.profile), self.paths, window)
        users = data.user_ids[self.rows] if len(self.rows) < len(data.user_ids) else None

        def write() -> int:
            path = write_i2i_from_history(
                listens, out / "similar.parquet", out / "i2i_history.parquet", cfg.last_k, cfg.n, users
            )
            return pl.scan_parquet(path).select(pl.len()).collect().item()

        run.rows = _timed(self.progress, run, "recommend_seconds", write)
        run.files = ["i2i_history.parquet"]
        run.note = f"on Spark, from the ALS similar lists of each user's last {cfg.last_k} listens"
        return run

    def _item_knn(self, data: FitData, out: Path, window: str) -> GeneratorRun:
        """Item-kNN, fitted afresh on each window (its neighbours come from the window's listens)."""
        cfg = self.profile.candidates.item_knn
        run = GeneratorRun("item_knn", window)
        (out / "item_knn.parquet").unlink(missing_ok=True)
        if not cfg.enabled:
            run.note = "disabled in the profile"
            return run
        knn = _timed(
            self.progress,
            run,
            "fit_seconds",
            lambda: ItemKnnGenerator(cfg, self.profile.seed, threads=self.workers).fit(data),
        )
        run.rows = _timed(
            self.progress,
            run,
            "recommend_seconds",
            lambda: _stream_users(
                out / "item_knn.parquet",
                data,
                knn.recommend,
                cfg.n,
                cfg.batch_users,
                f"item-kNN top-{cfg.n} ({window})",
                self.progress,
                self.workers,
                self.rows,
            ),
        )
        run.files = ["item_knn.parquet"]
        run.note = f"{cfg.kind}, {cfg.neighbours} neighbours per track" + (
            f", values decayed with a {cfg.half_life_days:g}-day half-life" if cfg.half_life_days else ""
        )
        return run

    def _optional(
        self, name: str, class_name: str, gen_cfg, data: FitData, out: Path, window: str, reuse: bool
    ) -> GeneratorRun:
        """Fit one optional generator and stream its user lists and similar lists (or say why not).

        Its similar lists come from the catalogue alone: with ``reuse``, the history fit's are copied.
        """
        profile = self.profile
        run = GeneratorRun(name, window)
        for stale in (out / f"{name}.parquet", out / f"{name}_similar.parquet"):
            stale.unlink(missing_ok=True)
        if not gen_cfg.enabled:
            run.note = "disabled in the profile"
            return run
        make = getattr(importlib.import_module(f"musicrec.candidates.{name}"), class_name)
        fitted = self._history.get(name) if reuse else None
        try:
            gen = _timed(
                self.progress,
                run,
                "fit_seconds",
                lambda: (
                    fitted.for_window(data)
                    if fitted is not None
                    else make(gen_cfg, seed=profile.seed).fit(data)
                ),
            )
        except ValueError as exc:
            run.note = f"skipped: {exc}"
            return run
        if window == "history":
            self._history[name] = gen
        batch = getattr(gen_cfg, "batch_users", profile.candidates.als.batch_users)
        run.rows = _timed(
            self.progress,
            run,
            "recommend_seconds",
            lambda: _stream_users(
                out / f"{name}.parquet",
                data,
                gen.recommend,
                gen_cfg.n,
                batch,
                f"{name} ({window})",
                self.progress,
                self.workers,
                self.rows,
            ),
        )
        if fitted is not None and (out / "history" / f"{name}_similar.parquet").is_file():
            _timed(
                self.progress,
                run,
                "similar_seconds",
                lambda: _copy_from_history(f"{name}_similar.parquet", out),
            )
        else:
            _timed(
                self.progress,
                run,
                "similar_seconds",
                lambda: _stream_similar(
                    out / f"{name}_similar.parquet",
                    data,
                    gen.similar,
                    gen_cfg.n_similar,
                    profile.candidates.als.batch_tracks,
                    f"{name} similar ({window})",
                    self.progress,
                    self.workers,
                ),
            )
        run.files = [f"{name}.parquet", f"{name}_similar.parquet"]
        run.note = str(getattr(gen, "fit_report", "") or "")
        return run


def fit_window(profile: Profile, paths: RunPaths, window: str, progress: bool = False) -> list[GeneratorRun]:
    """Fit every generator on ``window`` alone and write its lists (see :class:`CandidateStage`)."""
    return CandidateStage(profile, paths, progress).fit(window)


def parameters_table(profile: Profile) -> pl.DataFrame:
    """One row per generator with its parameters from the profile, for display."""
    rows = []
    for name, section in profile.candidates:
        if hasattr(section, "model_dump"):
            params = "; ".join(f"{k}: {v}" for k, v in section.model_dump(mode="json").items())
            rows.append({"generator": name, "parameters": params})
    return pl.DataFrame(rows)


def run_table(runs: list[GeneratorRun]) -> pl.DataFrame:
    """The runs as a table for display."""
    return pl.DataFrame([asdict(r) for r in runs]).drop("files")
