"""``make tune``: the models' parameters searched with optuna on the labels window.

For each model of ``tuning.models`` a study (TPE sampler seeded from the profile's ``seed``, a
median pruner) runs up to ``tuning.trials`` trials within ``tuning.timeout_seconds``. A trial
applies its parameters to a copy of the profile (:func:`apply_params`, validated like a profile),
fits the model with its own code on the **history** window, and scores its lists against the
listens of the **labels** window of a seeded sample of the warm users (``tuning.sample_users``)
with ``tuning.metric`` at ``tuning.k`` (:mod:`musicrec.metrics`). The test window is never read:
the history window ends at ``label_start`` and the targets end at ``test_start``.

The generators' trials fit on the history listens (read once); the ranker's trials train CatBoost
on the history candidates of ``make candidates`` (``outputs/<run>/candidates/history/``) for the
labels users outside the sample and rank the sample's candidates. The scored users are taken in
:data:`STEPS` parts; the metric over the parts so far is a trial's intermediate value, so the
pruner stops a trial whose first parts score below the median of the earlier trials.

The studies run in ``tuning.models`` order, each from the profile with the earlier studies' best
values applied: i2i from history, which starts from ALS's similar lists, is searched over the
lists of the best ALS, not of the profile's (searched over the latter, its best ``last_k`` no
longer suited the tuned ALS). The first trial of each study is that profile (where its values
lie in the space), so the best is never worse than it on the labels window. Every trial goes to
``outputs/<run>/tuning/trials.parquet`` and the best parameters to ``outputs/<run>/tuning/best.yaml``,
a profile overlay (``tuned: outputs/<run>/tuning/best.yaml`` in a profile applies it).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import optuna
import polars as pl
import yaml

from musicrec.candidates.als import AlsGenerator
from musicrec.candidates.base import FitData, to_similar_frame, to_user_frame
from musicrec.candidates.i2i import i2i_from_history, last_listens
from musicrec.candidates.itemknn import ItemKnnGenerator
from musicrec.candidates.popular import top_popular
from musicrec.candidates.stage import training_users, window_interactions, window_targets
from musicrec.config import TUNED_SECTIONS, Dimension, Profile, deep_merge
from musicrec.evaluation.lists import sample_of
from musicrec.io import RunPaths, atomic_path, write_parquet
from musicrec.metrics import MAP, NDCG, HitRate, Precision, RankingMetric, Recall
from musicrec.parallel import WORKERS
from musicrec.progress import say
from musicrec.schema import C

METRICS: dict[str, type[RankingMetric]] = {
    "ndcg": NDCG,
    "recall": Recall,
    "precision": Precision,
    "map": MAP,
    "hitrate": HitRate,
}
#: Parts of the scored users; the metric after each is a trial's intermediate value.
STEPS = 4
TRIALS_SCHEMA = {
    "model": pl.String,
    "trial": pl.Int32,
    "params": pl.String,
    "value": pl.Float64,
    "seconds": pl.Float64,
    "state": pl.String,
}


def tuning_dir(paths: RunPaths) -> Path:
    return paths.outputs / "tuning"


# --------------------------------------------------------------------------- parameters
def nested(section: str, params: dict[str, object]) -> dict:
    """``{"factors": 32}`` of ``candidates.als`` as ``{"candidates": {"als": {"factors": 32}}}``
    (dotted keys nest further: ``candidates.top_popular`` of ``ranking``)."""
    out: dict = {}
    for key, value in params.items():
        *parents, leaf = f"{section}.{key}".split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def apply_params(profile: Profile, model: str, params: dict[str, object]) -> Profile:
    """A copy of ``profile`` with a trial's ``params`` of ``model`` set, validated as a profile."""
    merged = deep_merge(profile.model_dump(), nested(TUNED_SECTIONS[model], params))
    return Profile.model_validate(merged)


def profile_value(profile: Profile, model: str, key: str) -> object:
    """The profile's own value of a search-space key."""
    value: object = profile.model_dump(mode="json")
    for part in f"{TUNED_SECTIONS[model]}.{key}".split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def suggest(trial: optuna.Trial, name: str, dim: Dimension) -> object:
    """The trial's value of one parameter, drawn from its :class:`~musicrec.config.Dimension`."""
    if dim.choices is not None:
        return trial.suggest_categorical(name, dim.choices)
    if dim.integer:
        step = int(dim.step or 1)
        return trial.suggest_int(name, int(dim.low), int(dim.high), step=step, log=dim.log)
    return trial.suggest_float(name, float(dim.low), float(dim.high), step=dim.step, log=dim.log)


def _inside(value: object, dim: Dimension) -> bool:
    if dim.choices is not None:
        return value in dim.choices
    if not isinstance(value, int | float) or isinstance(value, bool) or not dim.low <= value <= dim.high:
        return False
    if dim.integer and value != int(value):
        return False
    return dim.step is None or abs((value - dim.low) / dim.step - round((value - dim.low) / dim.step)) < 1e-9


def starting_point(profile: Profile, model: str, space: dict[str, Dimension]) -> dict[str, object]:
    """The profile's own values of the space's keys that lie inside it (the first trial)."""
    values = {key: profile_value(profile, model, key) for key in space}
    return {key: value for key, value in values.items() if _inside(value, space[key])}


# --------------------------------------------------------------------------- the data
@dataclass
class TuningData:
    """What every trial shares: the history window's listens and matrix, the labels targets of
    the warm users, and the sampled users scored (see the module docstring)."""

    profile: Profile
    paths: RunPaths
    interactions: pl.DataFrame
    data: FitData
    targets: pl.DataFrame
    users: np.ndarray
    _similar: pl.DataFrame | None = field(default=None, repr=False)

    @classmethod
    def load(cls, profile: Profile, paths: RunPaths) -> TuningData:
        """Read the history window (of the ``tuning.fit_users`` sample, if set) and the labels
        window's warm users among them (nothing of the test window)."""
        interactions = window_interactions(paths, "history")
        if profile.tuning.fit_users is not None:
            heard = interactions.get_column(C.user_id).unique().to_numpy()
            fitted = sample_of(heard, profile.tuning.fit_users, profile.seed)
            interactions = interactions.filter(pl.col(C.user_id).is_in(pl.Series(fitted).implode()))
        tracks = pl.read_parquet(paths.tracks)
        data = FitData.build(interactions, tracks)
        targets = window_targets(paths, "labels")
        users = sample_of(targets.get_column(C.user_id).to_numpy(), profile.tuning.sample_users, profile.seed)
        users = users[data.user_rows(users) >= 0]
        targets = targets.filter(pl.col(C.user_id).is_in(pl.Series(users).implode()))
        return cls(profile, paths, interactions, data, targets, users)

    def similar(self) -> pl.DataFrame:
        """The ALS similar lists of the profile's own ALS on history (what i2i starts from)."""
        if self._similar is None:
            cfg = self.profile.candidates.als
            als = AlsGenerator(cfg, self.profile.seed).fit(self.data)
            cols = np.arange(len(self.data.track_ids))
            self._similar = to_similar_frame(cols, *als.similar(cols, cfg.n_similar), self.data.track_ids)
        return self._similar


# --------------------------------------------------------------------------- scoring
#: Lists of a part of the users: ``(profile of the trial, data, user ids) -> user_id, track_id, rank``.
Lists = Callable[[np.ndarray], pl.DataFrame]


def _heard(td: TuningData, users: np.ndarray) -> pl.DataFrame:
    return td.interactions.filter(pl.col(C.user_id).is_in(pl.Series(users).implode())).select(
        C.user_id, C.track_id
    )


def generator_lists(model: str, profile: Profile, td: TuningData) -> Lists:
    """Fit ``model`` with the trial's ``profile`` on history; return its list maker for users."""
    k, seed, cfg = profile.tuning.k, profile.seed, profile.candidates
    data = td.data
    if model in ("personal_als", "item_knn"):
        gen = (
            AlsGenerator(cfg.als, seed).fit(data)
            if model == "personal_als"
            else ItemKnnGenerator(cfg.item_knn, seed, threads=WORKERS).fit(data)
        )

        def lists(users: np.ndarray) -> pl.DataFrame:
            rows = data.user_rows(users)
            return to_user_frame(data.user_ids[rows], *gen.recommend(rows, k), data.track_ids)

        return lists
    if model == "i2i_history":
        similar = td.similar()

        def lists(users: np.ndarray) -> pl.DataFrame:
            mine = td.interactions.filter(pl.col(C.user_id).is_in(pl.Series(users).implode()))
            recent = last_listens(mine, cfg.i2i_history.last_k).collect()
            return i2i_from_history(recent, similar, k, heard=mine.select(C.user_id, C.track_id))

        return lists
    if model == "top_popular":
        most_heard = int(np.diff(data.matrix[data.user_rows(td.users)].indptr).max(initial=0))
        popular = top_popular(td.interactions, k + most_heard, cfg.top_popular.days).select(
            C.track_id, C.rank
        )

        def lists(users: np.ndarray) -> pl.DataFrame:
            # the global list per user, heard tracks removed (as the evaluation serves it)
            return (
                pl.DataFrame({C.user_id: users.astype(np.int32)})
                .join(popular, how="cross")
                .join(_heard(td, users), on=[C.user_id, C.track_id], how="anti")
                .sort(C.user_id, C.rank)
                .group_by(C.user_id, maintain_order=True)
                .head(k)
                .with_columns(pl.int_range(1, pl.len() + 1).over(C.user_id).alias(C.rank))
            )

        return lists
    raise ValueError(f"{model}: not a generator that can be tuned")


@dataclass
class RankerUsers:
    """The ranker's labels users (those with history candidates): trained on ``fit``, scored on ``score``."""

    fit: np.ndarray
    score: np.ndarray
    targets: pl.DataFrame

    @classmethod
    def draw(cls, profile: Profile, paths: RunPaths) -> RankerUsers:
        targets = window_targets(paths, "labels")
        users = training_users(targets, profile.ranking.train_users, profile.seed)
        spec = profile.tuning.sample_users
        score = sample_of(users, spec, profile.seed + 1)
        if len(score) > len(users) // 2:  # some users must be left to train on
            score = sample_of(users, len(users) // 2, profile.seed + 1)
        return cls(np.setdiff1d(users, score), score, targets)


def ranker_lists(profile: Profile, paths: RunPaths, users: RankerUsers) -> Lists:
    """Train the ranker with the trial's ``profile`` on the fit users; return its list maker."""
    from musicrec.ranking.features import FeatureBuilder
    from musicrec.ranking.ranker import fit_ranker, label_rows, sample_training_rows, top_n_by_score

    cfg = profile.ranking
    if not (paths.candidate_dir("history") / "runs.json").is_file():
        raise FileNotFoundError("the ranker is tuned on the history candidates: run `make candidates` first")
    builder = FeatureBuilder.for_window(profile, paths, "history")
    parts = []
    for chunk in np.array_split(users.fit, max(1, len(users.fit) // cfg.batch_users + 1)):
        if len(chunk):
            labelled = label_rows(builder.batch(chunk), users.targets)
            parts.append(sample_training_rows(labelled, cfg.negatives_per_user, profile.seed)[0])
    ranker = fit_ranker(pl.concat(parts), cfg, profile.seed)

    def lists(chunk: np.ndarray) -> pl.DataFrame:
        rows = builder.batch(chunk)
        if rows.height == 0:
            return pl.DataFrame(schema={C.user_id: pl.Int32, C.track_id: pl.Int32, C.rank: pl.Int16})
        return top_n_by_score(rows, ranker.predict(rows), profile.tuning.k).select(
            C.user_id, C.track_id, C.rank
        )

    return lists


def scored_steps(
    lists: Lists, users: np.ndarray, targets: pl.DataFrame, metric: RankingMetric
) -> Iterator[float]:
    """The metric over the first 1, 2, ... :data:`STEPS` parts of ``users`` (users without a hit count 0)."""
    values: list[pl.DataFrame] = []
    for part in np.array_split(users, min(STEPS, max(1, len(users)))):
        relevant = targets.filter(pl.col(C.user_id).is_in(pl.Series(part).implode()))
        values.append(metric.calc_per_user(lists(part), relevant, pl.Series(part)))
        yield float(pl.concat(values).get_column("value").mean() or 0.0)


# --------------------------------------------------------------------------- the search
@dataclass
class TuningResult:
    """Every study, its trials as a table, the best parameters per model and where they were written."""

    studies: dict[str, optuna.Study]
    trials: pl.DataFrame
    best: dict[str, dict[str, object]]
    folder: Path

    def conclusion(self, profile: Profile, paths: RunPaths) -> str:
        """The notebook's conclusion, in Markdown: per model the best value against the profile's."""
        cfg, where = profile.tuning, (self.folder / "best.yaml").relative_to(paths.root)
        lines = []
        for model, study in self.studies.items():
            if model in self.best:
                first = study.trials[0].value
                written = "pruned or failed" if first is None else f"{first:.4f}"
                lines.append(f"- **{model}**: {study.best_value:.4f} (the profile as written: {written})")
        return (
            f"{cfg.metric}@{cfg.k} on the labels window, the best trial of each model:\n\n"
            + ("\n".join(lines) or "- no complete trial")
            + f"\n\nThe best parameters are in `{where}`. Add `tuned: {where}` to the profile to run the "
            "pipeline with them (the stages that read the tuned sections rerun), then judge them on the "
            "test window, which no trial has read."
        )

    def comparison(self, profile: Profile) -> pl.DataFrame:
        """Per model and parameter: the profile's value beside the best one, and their metric."""
        rows = []
        for model, study in self.studies.items():
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            first = next((t.value for t in done if t.number == 0), None)
            for key in self.best.get(model, {}):
                rows.append(
                    {
                        "model": model,
                        "parameter": key,
                        "profile": json.dumps(profile_value(profile, model, key)),
                        "best": json.dumps(self.best[model][key]),
                        "profile value": first,
                        "best value": study.best_value if done else None,
                    }
                )
        return pl.DataFrame(rows)


def _objective(model: str, profile: Profile, td: TuningData, ranker: RankerUsers | None):
    space = profile.tuning.space[model]
    metric = METRICS[profile.tuning.metric](profile.tuning.k)

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, dim) for key, dim in space.items()}
        try:
            trial_profile = apply_params(profile, model, params)
        except ValueError as exc:  # an impossible combination (no candidates at all, say)
            raise optuna.TrialPruned(f"invalid: {exc}") from None
        if model == "ranker":
            lists, users, targets = (
                ranker_lists(trial_profile, td.paths, ranker),
                ranker.score,
                ranker.targets,
            )
        else:
            lists, users, targets = generator_lists(model, trial_profile, td), td.users, td.targets
        value = 0.0
        for step, value in enumerate(scored_steps(lists, users, targets, metric)):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return objective


def search(
    profile: Profile,
    paths: RunPaths,
    models: list[str] | None = None,
    trials: int | None = None,
    timeout_seconds: float | None = None,
    progress: bool = True,
) -> TuningResult:
    """Run a study per model (the profile's ``tuning`` unless overridden) and write
    ``trials.parquet`` and ``best.yaml`` to ``outputs/<run>/tuning/``; see the module docstring."""
    cfg = profile.tuning
    models = list(models or cfg.models)
    trials, timeout_seconds = trials or cfg.trials, timeout_seconds or cfg.timeout_seconds
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    td = TuningData.load(profile, paths)
    ranker = RankerUsers.draw(profile, paths) if "ranker" in models else None
    studies, rows = {}, []
    base = profile  # the profile with the earlier studies' best values applied
    for model in models:
        study = optuna.create_study(
            direction="maximize",
            study_name=f"{paths.run}-{model}",
            sampler=optuna.samplers.TPESampler(seed=profile.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        )
        study.enqueue_trial(starting_point(base, model, cfg.space[model]))
        start = time.perf_counter()

        def said(study: optuna.Study, trial: optuna.trial.FrozenTrial, model: str = model) -> None:
            if progress:
                value = "" if trial.value is None else f" {cfg.metric}@{cfg.k} {trial.value:.4f}"
                say(f"tuning {model}: trial {trial.number} {trial.state.name.lower()}{value} {trial.params}")

        study.optimize(
            _objective(model, base, td, ranker),
            n_trials=trials,
            timeout=timeout_seconds,
            callbacks=[said],
            catch=(ValueError,),
        )
        if progress:
            say(f"tuning {model}: {len(study.trials)} trials in {time.perf_counter() - start:.1f} s")
        studies[model] = study
        if model != "ranker" and any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
            base = apply_params(base, model, dict(study.best_trial.params))
            # i2i's similar lists come from the profile's ALS: made again only when ALS moved
            td = replace(td, profile=base, _similar=None if model == "personal_als" else td._similar)
        rows += [
            {
                "model": model,
                "trial": t.number,
                "params": json.dumps(t.params, sort_keys=True),
                "value": t.value,
                "seconds": t.duration.total_seconds() if t.duration else None,
                "state": t.state.name,
            }
            for t in study.trials
        ]
    table = pl.DataFrame(rows, schema=TRIALS_SCHEMA)
    best = {
        m: dict(s.best_trial.params)
        for m, s in studies.items()
        if any(t.state == optuna.trial.TrialState.COMPLETE for t in s.trials)
    }
    folder = tuning_dir(paths)
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table, folder / "trials.parquet")
    write_overlay(profile, paths, best, studies, folder / "best.yaml")
    return TuningResult(studies, table, best, folder)


def write_overlay(
    profile: Profile, paths: RunPaths, best: dict[str, dict], studies: dict[str, optuna.Study], path: Path
) -> Path:
    """The best parameters as a profile overlay: only the tuned keys, nested as in a profile,
    under a comment saying when and from which search they came."""
    cfg = profile.tuning
    shown = path.relative_to(paths.root) if path.is_relative_to(paths.root) else path
    overlay: dict = {}
    for model, params in best.items():
        overlay = deep_merge(overlay, nested(TUNED_SECTIONS[model], params))
    lines = [
        f"# Tuned by `make tune` (musicrec.tuning) on run {paths.run}, "
        f"{dt.datetime.now().isoformat(timespec='seconds')}:",
        f"# {cfg.metric}@{cfg.k} on the labels window (users: {cfg.sample_users or 'all'}, seed "
        f"{profile.seed}), fitted on history"
        + (f" of a sample of {cfg.fit_users} users" if cfg.fit_users is not None else "")
        + "; TPE, per model:",
        *(
            f"#   {m}: {len(s.trials)} trials, best #{s.best_trial.number} = {s.best_value:.4f}"
            for m, s in studies.items()
            if m in best
        ),
        f"# Apply it with `tuned: {shown}` in a profile.",
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n" + yaml.safe_dump(overlay, sort_keys=True))
    return path


# --------------------------------------------------------------------------- figures
def figures(study: optuna.Study) -> dict[str, object]:
    """optuna's matplotlib figures of a study: ``history``, ``importance``, ``slice`` (a figure
    is left out when the study has too few complete trials for it)."""
    from optuna.visualization import matplotlib as ovm

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    makers = {"history": ovm.plot_optimization_history, "slice": ovm.plot_slice}
    if len(done) >= 2 and len(study.best_trial.params) >= 1:
        makers["importance"] = ovm.plot_param_importances
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, make in makers.items():
            if not done:
                continue
            try:
                axes = make(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few distinct trials
                continue
            first = np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes
            fig = first.figure
            fig.suptitle(f"{study.study_name}: {name}")
            out[name] = fig
    return out
