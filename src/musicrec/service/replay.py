"""An offline A/B test: a run's test window replayed through the service, in process.

>>> result = replay("params/default.yaml", max_users=5000, progress=True)   # doctest: +SKIP
>>> print(result.verdict())                                                 # doctest: +SKIP

The service (:func:`~musicrec.service.app.create_app`, lifespan running, under FastAPI's
``TestClient``) serves the run's artefacts with an experiment configured, against a fresh
SQLite store (``outputs/<run>/service/abtest.sqlite``, deleted first). The test window's
listens play the traffic:

- **Sessions**: a user's listens on one calendar day (UTC) of the test window are one
  session. Each session makes one request, ``GET /recommendations/{user}?k=&at=``, with
  ``at`` one microsecond before the session's first listen: the list is logged as served
  then, and only the events before it count (its online i2i sees the user's earlier days).
- **Events**: the listens are posted (``POST /events``, in batches of up to 10,000, in time
  order) with their own timestamps, a day at a time after that day's requests. A user's
  list depends only on their own events, and their session starts the day, so the store
  never holds a listen from the future of a request; ``at`` filters the store anyway.
- **Results**: ``GET /ab/{experiment}/results`` with the experiment's success window: a list
  succeeds when its user listens to one of its tracks within the window after it was
  served. On data with daily timestamps (the synthetic and Yandex data) a 24 h window means
  "listened to one of the day's recommendations that day".

Every user of the test window takes part (warm ones get the ranker's list, cold ones the
top-popular list); ``max_users`` replays a seeded sample of them instead.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from musicrec.config import Profile, load_profile
from musicrec.io import RunPaths, write_json
from musicrec.progress import counter
from musicrec.schema import C
from musicrec.service import ab
from musicrec.service.events import EventStore, to_micros
from musicrec.service.settings import ExperimentConfig, ServiceConfig

#: The experiment replayed unless told otherwise: the service's blending against the ranker's list alone.
DEFAULT_EXPERIMENT = ExperimentConfig(
    name="blend_vs_offline",
    success_window_hours=24.0,
    variants=[
        {"name": "blended", "share": 0.5},
        {"name": "offline", "share": 0.5, "blending": {"strategy": "offline"}},
    ],
)
SESSION_RULE = (
    "one session per user per calendar day (UTC) of the test window: one request 1 µs before "
    "the day's first listen, then the day's listens posted as events"
)
MAX_POST = 10_000  # the service's limit of events per POST


class ReplayError(RuntimeError):
    """A replay that cannot run (an artefact missing, the service refusing); the message says what to do."""


# the traffic -------------------------------------------------------------------------------------


def window_listens(paths: RunPaths) -> pl.DataFrame:
    """``user_id, track_id, started_at`` of every test-window listen (warm and cold users), in time order."""
    from musicrec.candidates.stage import window_targets

    if not paths.split.is_file():
        raise ReplayError(f"{paths.split}: missing; run `make data` for run {paths.run} first")
    listens = window_targets(paths, "test", warm=None, timestamps=True)
    return listens.sort(C.started_at, C.user_id, C.track_id)


def sample_users(listens: pl.DataFrame, max_users: int | None, seed: int) -> pl.DataFrame:
    """The listens of ``max_users`` users drawn without replacement with ``seed`` (all when ``None``)."""
    users = np.sort(listens.get_column(C.user_id).unique().to_numpy())
    if max_users is None or max_users >= len(users):
        return listens
    if max_users < 1:
        raise ValueError(f"max_users must be at least 1 (got {max_users})")
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return listens.filter(pl.col(C.user_id).is_in(pl.Series(chosen).implode()))


def build_sessions(listens: pl.DataFrame) -> pl.DataFrame:
    """Sessions of ``user_id, track_id, started_at`` listens, by :data:`SESSION_RULE`.

    Returns ``day, user_id, start`` (the first listen), ``at`` (1 µs before it: the
    request's time) and ``listens``, sorted by day, ``at`` and user.

    >>> import datetime as dt
    >>> t = dt.datetime(2022, 12, 16, 10)
    >>> frame = pl.DataFrame({"user_id": [1, 1, 2], "track_id": [5, 6, 5], "started_at": [t, t, t]})
    >>> build_sessions(frame).select("user_id", "listens").rows()
    [(1, 2), (2, 1)]
    """
    return (
        listens.group_by(C.user_id, pl.col(C.started_at).dt.date().alias("day"))
        .agg(pl.col(C.started_at).min().alias("start"), pl.len().alias("listens"))
        .with_columns((pl.col("start") - pl.duration(microseconds=1)).alias("at"))
        .select("day", C.user_id, "start", "at", pl.col("listens").cast(pl.Int64))
        .sort("day", "at", C.user_id)
    )


def event_batches(listens: pl.DataFrame, size: int = MAX_POST) -> Iterator[list[dict]]:
    """``POST /events`` bodies of at most ``size`` listens each, in the listens' order."""
    rows = listens.select(C.user_id, C.track_id, C.started_at).rows()
    for lo in range(0, len(rows), size):
        yield [{"user_id": u, "track_id": t, "timestamp": s.isoformat()} for u, t, s in rows[lo : lo + size]]


def resolve_experiment(experiment: ExperimentConfig | dict | None, profile: Profile) -> ExperimentConfig:
    """``experiment`` validated; when ``None``: the profile's ``service.experiment``, else the default."""
    if experiment is None:
        return profile.service.experiment or DEFAULT_EXPERIMENT
    if isinstance(experiment, ExperimentConfig):
        return experiment
    return ExperimentConfig.model_validate(experiment)


def describe_variants(experiment: ExperimentConfig, config: ServiceConfig) -> list[dict[str, Any]]:
    """One row per variant: its share and the blending it serves (its overrides, or the service's)."""
    own = config.blending
    return [
        {
            "variant": v.name,
            "share": v.share,
            "blending": ", ".join(f"{key}={value}" for key, value in v.blending.items())
            or f"the service's: {own.strategy}, online_share={own.online_share}",
        }
        for v in experiment.variants
    ]


# the replay --------------------------------------------------------------------------------------


@dataclass
class ReplayResult:
    """What a replay measured: the results endpoint's answer, the replay's counts, success by day."""

    run: str
    experiment: ExperimentConfig
    k: int
    results: dict[str, Any]
    counts: dict[str, Any]
    by_day: pl.DataFrame
    path: Path | None = None

    def table(self) -> pl.DataFrame:
        return variant_table(self.results)

    def significance(self) -> pl.DataFrame:
        return significance_table(self.results)

    def verdict(self, metric: str = "user_success") -> str:
        return verdict(self.results, metric)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "experiment": self.experiment.model_dump(),
            "k": self.k,
            "session_rule": SESSION_RULE,
            "replay": self.counts,
            "results": self.results,
            "table": self.table().to_dicts(),
            "by_day": self.by_day.to_dicts(),
            "verdict": self.verdict("user_success"),
            "verdict_per_list": self.verdict("recommendation_success"),
        }


def _remove_store(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _check(response, what: str) -> Any:
    if response.status_code >= 300:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ReplayError(f"{what}: the service answered {response.status_code}: {detail}")
    return response.json()


def replay(
    params: str | Path | Profile,
    root: str | Path = ".",
    experiment: ExperimentConfig | dict | None = None,
    max_users: int | None = None,
    seed: int | None = None,
    k: int = 10,
    data_path: str | None = None,
    db_path: str | Path | None = None,
    out: str | Path | None = None,
    write: bool = True,
    progress: bool = False,
) -> ReplayResult:
    """Replay the run's test window through the service and read the experiment's results.

    Parameters
    ----------
    params
        The profile (a path or a loaded :class:`Profile`); its ``service:`` section configures
        the service, with ``experiment`` put in.
    experiment
        The experiment to replay (:class:`ExperimentConfig` or its dict); ``None``: the
        profile's ``service.experiment``, else :data:`DEFAULT_EXPERIMENT`.
    max_users, seed
        Replay a sample of that many test-window users (``seed``: the profile's when ``None``).
    k
        The length of each requested list.
    db_path
        The store, deleted first; ``outputs/<run>/service/abtest.sqlite`` by default.
    out, write
        Where the result goes as JSON (atomically; ``outputs/<run>/service/abtest.json`` by
        default), unless ``write`` is false.
    progress
        Show a tqdm bar over the sessions.
    """

    with warnings.catch_warnings():  # starlette's notice about httpx on import: nothing to act on here
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from musicrec.service.app import create_app

    profile = params if isinstance(params, Profile) else load_profile(params, data_path=data_path)
    paths = RunPaths.for_profile(profile, root)
    if not paths.recommendations.is_file():
        raise ReplayError(
            f"{paths.recommendations}: missing; the service needs the ranker's lists: "
            f"run `make ranking PARAMS=...` for run {paths.run} first"
        )
    exp = resolve_experiment(experiment, profile)
    config = ServiceConfig.model_validate(
        {**profile.service.model_dump(), "experiment": exp.model_dump(), "log_recommendations": True}
    )
    if not 1 <= k <= config.max_k:
        raise ValueError(f"k must be between 1 and service.max_k ({config.max_k}), got {k}")
    window = window_listens(paths)
    listens = sample_users(window, max_users, profile.seed if seed is None else seed)
    sessions = build_sessions(listens)
    listens_of_day = listens.with_columns(pl.col(C.started_at).dt.date().alias("day")).partition_by(
        "day", as_dict=True, include_key=False
    )
    db = Path(db_path) if db_path is not None else paths.abtest_db
    _remove_store(db)

    requests = posts = posted = 0
    started = time.perf_counter()
    # replay mode: the requests carry the replayed day's time (at=), the listens their own timestamps
    app = create_app(
        profile, root=root, db_path=db, admin_token="", config=config.model_copy(update={"replay_mode": True})
    )
    with TestClient(app) as client:
        ready = client.get("/ready")
        if ready.status_code != 200:
            raise ReplayError(f"the service could not load run {paths.run}: {ready.json().get('detail')}")
        loaded = time.perf_counter()
        bar = counter(sessions.height, "replay", "sessions", enabled=progress)
        with bar:
            for (day,), today in sessions.group_by("day", maintain_order=True):
                for user, at in today.select(C.user_id, "at").iter_rows():
                    _check(
                        client.get(f"/recommendations/{user}", params={"k": k, "at": at.isoformat()}),
                        f"GET /recommendations/{user} at {at}",
                    )
                    requests += 1
                    bar.update()
                for body in event_batches(listens_of_day[(day,)]):
                    stored = _check(client.post("/events", json=body), f"POST /events of {day}")["stored"]
                    posts, posted = posts + 1, posted + stored
                bar.set_postfix_str(f"{day} events={posted:,}", refresh=False)
        replayed = time.perf_counter()
        results = _check(
            client.get(f"/ab/{exp.name}/results", params={"window_hours": exp.success_window_hours}),
            "GET /ab results",
        )
    counts = {
        "test_window_users": window.get_column(C.user_id).n_unique(),
        "test_window_listens": window.height,
        "users": listens.get_column(C.user_id).n_unique(),
        "max_users": max_users,
        "seed": profile.seed if seed is None else seed,
        "sessions": sessions.height,
        "requests": requests,
        "event_posts": posts,
        "events_posted": posted,
        "load_seconds": round(loaded - started, 2),
        "replay_seconds": round(replayed - loaded, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
    by_day = success_by_day(db, exp, sessions)
    result = ReplayResult(paths.run, exp, k, results, counts, by_day)
    if write:
        result.path = write_json(result.as_dict(), out or paths.abtest)
    return result


def success_by_day(db: Path, experiment: ExperimentConfig, sessions: pl.DataFrame) -> pl.DataFrame:
    """``day, variant, lists, successes, success_rate, lower, upper`` from the store's log of the replay.

    A logged list is matched to its session by user and serving time (``at``).
    """
    store = EventStore(db)
    try:
        outcomes = store.outcomes(experiment.name, int(experiment.success_window_hours * 3600 * 1e6), by="ts")
    finally:
        store.close()
    logged = pl.DataFrame(
        outcomes,
        schema={"variant": pl.Utf8, C.user_id: pl.Int64, "success": pl.Boolean, "served_at": pl.Int64},
        orient="row",
    )
    keys = sessions.select(
        "day",
        pl.col(C.user_id).cast(pl.Int64),
        pl.Series("served_at", [to_micros(at) for at in sessions.get_column("at")], pl.Int64),
    )
    per_day = (
        logged.join(keys, on=[C.user_id, "served_at"], how="inner")
        .group_by("day", "variant")
        .agg(pl.len().alias("lists"), pl.col("success").sum().alias("successes"))
        .sort("day", "variant")
    )
    bounds = [
        ab.wilson_interval(s, n, experiment.confidence) or (None, None)
        for s, n in per_day.select("successes", "lists").iter_rows()
    ]
    return per_day.with_columns(
        (pl.col("successes") / pl.col("lists")).alias("success_rate"),
        pl.Series("lower", [b[0] for b in bounds], pl.Float64),
        pl.Series("upper", [b[1] for b in bounds], pl.Float64),
    )


# reading the results ----------------------------------------------------------------------------


def variant_table(results: dict) -> pl.DataFrame:
    """One row per variant: users, lists, success rate of lists and of users, each with its interval."""
    rows = []
    for v in results["variants"]:
        ci, user_ci = v["ci"] or (None, None), v["user_ci"] or (None, None)
        rows.append(
            {
                "variant": v["variant"],
                "share": v["share"],
                "users": v["users"],
                "lists": v["recommendations"],
                "successes": v["successes"],
                "success_rate": v["success_rate"],
                "lower": ci[0],
                "upper": ci[1],
                "user_success_rate": v["user_success_rate"],
                "user_lower": user_ci[0],
                "user_upper": user_ci[1],
            }
        )
    schema = {
        "variant": pl.Utf8,
        "share": pl.Float64,
        "users": pl.Int64,
        "lists": pl.Int64,
        "successes": pl.Int64,
        "success_rate": pl.Float64,
        "lower": pl.Float64,
        "upper": pl.Float64,
        "user_success_rate": pl.Float64,
        "user_lower": pl.Float64,
        "user_upper": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def significance_table(results: dict) -> pl.DataFrame:
    """The z-tests against the first variant: difference (b - a) with its interval, z, p-value."""
    rows = [
        {
            "metric": t["metric"],
            "a": t["a"],
            "b": t["b"],
            "difference": t["difference"],
            "lower": (t["ci"] or (None, None))[0],
            "upper": (t["ci"] or (None, None))[1],
            "z": t["z"],
            "p_value": t["p_value"],
            "significant": t["significant"],
        }
        for t in results["tests"]
    ]
    schema = {
        "metric": pl.Utf8,
        "a": pl.Utf8,
        "b": pl.Utf8,
        "difference": pl.Float64,
        "lower": pl.Float64,
        "upper": pl.Float64,
        "z": pl.Float64,
        "p_value": pl.Float64,
        "significant": pl.Boolean,
    }
    return pl.DataFrame(rows, schema=schema)


_METRICS = {
    "user_success": ("the share of users with a successful list", "user_success_rate", "user_ci"),
    "recommendation_success": ("the share of successful lists", "success_rate", "ci"),
}


def _rate(variant: dict, rate: str, ci: str) -> str:
    lo, hi = variant[ci]
    return f"{variant['variant']} {variant[rate]:.1%} [{lo:.1%}, {hi:.1%}]"


def _p(p: float) -> str:
    if p == 0:
        return "p < 1e-300"  # beyond double precision
    return f"p = {p:.4f}" if p >= 1e-4 else f"p = {p:.1e}"


def verdict(results: dict, metric: str = "user_success") -> str:
    """One sentence per variant tested against the control: significant or not, and who wins.

    ``metric``: ``user_success`` (the sound test: users are what is assigned) or
    ``recommendation_success`` (per list; optimistic when users get many lists).

    >>> res = ab.summarize([("a", u, u % 10 == 0) for u in range(1000)]
    ...                    + [("b", u, u % 5 == 0) for u in range(1000, 2000)], ["a", "b"])
    >>> verdict(res)[:60]
    'At 95% confidence, b beats a on the share of users with a su'
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    label, rate, ci = _METRICS[metric]
    variants = {v["variant"]: v for v in results["variants"]}
    level = f"{results['confidence']:.0%}"
    sentences = []
    for test in (t for t in results["tests"] if t["metric"] == metric):
        a, b = variants[test["a"]], variants[test["b"]]
        if test["p_value"] is None:
            reason = (
                "a variant has nothing logged"
                if not (a[rate] is not None and b[rate] is not None)
                else "both rates are 0 or both 1, nothing varies"
            )
            sentences.append(f"{b['variant']} and {a['variant']} cannot be compared on {label}: {reason}.")
            continue
        diff, (lo, hi) = test["difference"], test["ci"]  # b - a
        if test["significant"]:
            winner, loser = (b, a) if diff > 0 else (a, b)
            sign = 1 if diff > 0 else -1
            gap, (gap_lo, gap_hi) = sign * diff, sorted((sign * lo, sign * hi))
            sentences.append(
                f"At {level} confidence, {winner['variant']} beats {loser['variant']} on {label}: "
                f"{_rate(winner, rate, ci)} against {_rate(loser, rate, ci)}, {gap * 100:+.1f} points "
                f"[{gap_lo * 100:+.1f}, {gap_hi * 100:+.1f}] (two-proportion z-test, {_p(test['p_value'])})."
            )
        else:
            sentences.append(
                f"At {level} confidence, the difference between {b['variant']} and {a['variant']} on {label} "
                f"is not significant: {_rate(b, rate, ci)} against {_rate(a, rate, ci)}, {diff * 100:+.1f} "
                f"points [{lo * 100:+.1f}, {hi * 100:+.1f}] (two-proportion z-test, {_p(test['p_value'])}); "
                "the replay cannot tell them apart."
            )
    return " ".join(sentences) if sentences else "No variant to compare against the control."
