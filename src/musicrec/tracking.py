"""Optional experiment tracking: each stage run logged to a local MLflow store.

With ``tracking: mlflow`` in a profile, ``musicrec stage`` (``make data``, ``make all``, ...)
logs every stage that succeeds as one MLflow run, named after the stage, in an experiment
named after the profile's run (``default``, ``tiny``). The store is the MLflow file store
``mlruns/`` at the project root (:func:`store_path`): one store for every run name, so that
MLflow's UI lists the runs of ``default`` and ``scale10`` side by side, and kept by
``make clean``, which removes a run's artefacts but not the record of how they were made. No
server is involved, and MLflow's usage telemetry is off.

A stage's MLflow run holds

- **params**: the profile sections the stage reads (:attr:`musicrec.stages.Stage.sections`),
  flattened to dotted keys (``candidates.als.factors``); values as JSON text;
- **metrics**: ``stage.seconds`` and ``stage.peak_rss_mb``, and every number in the stage's JSON
  artefacts (``data/<run>/summary.json`` -> ``summary.rows``, ``outputs/<run>/ranking/summary.json``
  -> ``ranking.summary.sampling.users``; list items keyed by their names:
  ``candidates.history.runs.personal_als.history.fit_seconds``);
  for the evaluation stage, the headline metrics of ``metrics.json`` instead of its 600 rows:
  NDCG, recall and coverage at 10 of every model on all warm users, with their interval
  (``final.ndcg_at_10``, ``final.ndcg_at_10.lower``, ``final.ndcg_at_10.upper``);
- **artefacts**: the figures the stage drew (``plots/<run>/*.png`` written while it ran, under
  ``plots/``), ``artefacts.json`` (the paths of the stage's artefacts, relative to the project
  root, with their sizes) and ``provenance.json`` (:func:`musicrec.provenance.provenance`);
- **tags**: ``musicrec.stage``, ``musicrec.run``, ``musicrec.<provenance key>`` and MLflow's own
  ``mlflow.source.git.commit``.

mlflow-skinny is an optional dependency (``pip install -e '.[tracking]'``); :func:`require` says
so before a stage starts, rather than after it ran. MLflow 3 keeps its file store in
maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is true; this module sets
that (unless set already), since a store that is plain files beside the run needs no database.
Browse the store with the full ``mlflow`` package:
``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri mlruns``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from musicrec.config import Profile
from musicrec.io import RunPaths, read_json
from musicrec.stages import Stage, artefact_paths, section_values
from musicrec.stages import stage as declared_stage

STORE = "mlruns"
INSTALL_HINT = "pip install -e '.[tracking]'"
#: The evaluation stage's headline: these metrics at :data:`HEADLINE_K`, segment ``all``.
HEADLINE_METRICS = ("ndcg", "recall", "coverage")
HEADLINE_K = 10
#: Fields that name an item of a list in a stage's JSON (``{"generator": "random", ...}``),
#: used in the metric's key instead of the item's position.
LABEL_KEYS = ("generator", "window", "step", "variant", "metric", "k", "model_a", "model_b")
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")
_MAX_PARAM = 6000  # MLflow's longest parameter value


class TrackingError(RuntimeError):
    """Tracking is asked for and cannot be done; the message says what to do."""


def store_path(root: str | Path) -> Path:
    """The local MLflow file store of the project at ``root``."""
    return Path(root).resolve() / STORE


def require(profile: Profile) -> None:
    """Raise :class:`TrackingError` when the profile asks for tracking and MLflow is not installed."""
    if profile.tracking != "mlflow":
        return
    try:
        _client_class()
    except ImportError:
        raise TrackingError(
            f"the profile sets tracking: mlflow, and MLflow is not installed: run `{INSTALL_HINT}` "
            "(or drop tracking from the profile)"
        ) from None


def _client_class():
    """MLflow's ``MlflowClient``, imported with the file store allowed and telemetry off."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient


def client(root: str | Path):
    """An ``MlflowClient`` on the project's store (:func:`store_path`); for reading it back, too."""
    return _client_class()(tracking_uri=store_path(root).as_uri())


# --------------------------------------------------------------------------- what is logged
def _key(text: str) -> str:
    """A valid MLflow key: characters it refuses become ``_``."""
    return _BAD_KEY_CHARS.sub("_", text)


def _label_keys(item: dict) -> list[str]:
    return [k for k in LABEL_KEYS if isinstance(item.get(k), str | int) and not isinstance(item.get(k), bool)]


def flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf)`` of nested dicts and lists; a list of dicts keyed by each item's
    :data:`LABEL_KEYS` values (else its position; the naming fields are no leaves then), any other
    list kept whole as a leaf.

    >>> dict(flatten({"a": {"b": 1}, "steps": [{"step": "fit", "seconds": 2.0}], "ks": [5, 10]}))
    {'a.b': 1, 'steps.fit.seconds': 2.0, 'ks': [5, 10]}
    """
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list) and obj and all(isinstance(item, dict) for item in obj):
        seen: set[str] = set()
        for i, item in enumerate(obj):
            names = _label_keys(item)
            label = ".".join(str(item[k]) for k in names) if names else str(i)
            label = label if label not in seen else f"{label}.{i}"
            seen.add(label)
            rest = {k: v for k, v in item.items() if k not in names}
            yield from flatten(rest, f"{prefix}.{label}" if prefix else label)
    else:
        yield prefix, obj


def stage_params(profile: Profile, s: Stage) -> dict[str, str]:
    """The profile sections ``s`` reads, flattened, as MLflow params (JSON text, strings as they are)."""
    params = {}
    for key, value in flatten(section_values(profile, s.sections)):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[_key(key)] = text[:_MAX_PARAM]
    return params


def _numbers(pairs: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """The finite numbers among ``pairs`` (booleans are not numbers here)."""
    return {
        _key(key): float(value)
        for key, value in pairs
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def headline_metrics(rows: list[dict], k: int = HEADLINE_K) -> dict[str, float]:
    """``{model}.{metric}_at_{k}`` (and ``.lower``, ``.upper``) of ``metrics.json`` rows, segment ``all``."""
    out = {}
    for row in rows:
        if row["segment"] != "all" or row["k"] != k or row["metric"] not in HEADLINE_METRICS:
            continue
        name = f"{row['model']}.{row['metric']}_at_{k}"
        for suffix, field in (("", "value"), (".lower", "lower"), (".upper", "upper")):
            out[name + suffix] = row.get(field)
    return _numbers(out.items())


def summary_files(s: Stage, paths: RunPaths) -> dict[str, Path]:
    """The stage's JSON artefacts by metric prefix: a declared file by its stem (``summary``), a
    file in a declared folder by the folder's name and its path in it (``ranking.summary``,
    ``candidates.history.runs``)."""
    found = {}
    for path, _ in artefact_paths(s, paths):
        if path.is_dir():
            for file in sorted(path.rglob("*.json")):
                found[".".join((path.name, *file.relative_to(path).with_suffix("").parts))] = file
        elif path.suffix == ".json" and path.is_file():
            found[path.stem] = path
    return found


def stage_metrics(s: Stage, paths: RunPaths, seconds: float, peak_rss_mb: float) -> dict[str, float]:
    """Every metric logged for a run of ``s`` (module docstring)."""
    metrics = {"stage.seconds": float(seconds), "stage.peak_rss_mb": float(peak_rss_mb)}
    for prefix, file in summary_files(s, paths).items():
        content = read_json(file)
        if file == paths.metrics_json:
            metrics.update(headline_metrics(content))
        else:
            metrics.update(_numbers(flatten(content, prefix)))
    return metrics


def stage_figures(paths: RunPaths, since: float) -> list[Path]:
    """The PNGs in ``plots/<run>/`` written at or after ``since`` (seconds since the epoch)."""
    if not paths.plots.is_dir():
        return []
    return sorted(p for p in paths.plots.glob("*.png") if p.stat().st_mtime >= since)


def stage_artefacts(s: Stage, paths: RunPaths) -> list[dict[str, Any]]:
    """``{"path", "bytes"}`` of the stage's artefacts that exist (a folder: the sum of its files)."""
    out = []
    for path, _ in artefact_paths(s, paths):
        if not path.exists():
            continue
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        relative = path.relative_to(paths.root) if path.is_relative_to(paths.root) else path
        out.append({"path": str(relative), "bytes": sum(f.stat().st_size for f in files)})
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- logging
def log_stage(
    profile: Profile,
    stage: str,
    paths: RunPaths,
    *,
    started: float,
    seconds: float,
    peak_rss_mb: float,
    provenance: dict[str, Any],
) -> str:
    """Log a run of ``stage`` that succeeded (started at ``started``, seconds since the epoch) as one
    MLflow run in the experiment named after the run; return its MLflow run id."""
    from mlflow.entities import Metric, Param

    s = declared_stage(stage)
    mlflow = client(paths.root)
    experiment = mlflow.get_experiment_by_name(paths.run)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(paths.run, tags={"musicrec.run": paths.run})
    )
    tags = {
        "musicrec.stage": stage,
        "musicrec.run": paths.run,
        **{f"musicrec.{k}": json.dumps(v) if not isinstance(v, str) else v for k, v in provenance.items()},
    }
    if provenance.get("git_commit", "unknown") != "unknown":
        tags["mlflow.source.git.commit"] = provenance["git_commit"]
    run = mlflow.create_run(experiment_id, start_time=int(started * 1000), tags=tags, run_name=stage)
    run_id = run.info.run_id
    try:
        now = int((started + seconds) * 1000)
        params = [Param(k, v) for k, v in stage_params(profile, s).items()]
        metrics = [Metric(k, v, now, 0) for k, v in stage_metrics(s, paths, seconds, peak_rss_mb).items()]
        for batch in _chunks(params, 100):
            mlflow.log_batch(run_id, params=batch)
        for batch in _chunks(metrics, 900):
            mlflow.log_batch(run_id, metrics=batch)
        for figure in stage_figures(paths, started):
            mlflow.log_artifact(run_id, str(figure), artifact_path="plots")
        mlflow.log_dict(run_id, {"artefacts": stage_artefacts(s, paths)}, "artefacts.json")
        mlflow.log_dict(run_id, provenance, "provenance.json")
    except BaseException:
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    mlflow.set_terminated(run_id, status="FINISHED", end_time=now)
    return run_id
