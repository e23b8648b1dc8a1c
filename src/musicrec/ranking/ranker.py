"""The CatBoost ranker: training rows with sampled negatives, fitting, scoring, the top N.

Training rows are the candidates of the generators fitted on ``history``; a row's
target is 1 when the user listened to the track in the ``labels`` window. Users with
no positive among their candidates teach a ranking loss nothing and are dropped
(and counted). Negatives are sampled per user with a seed, so the same profile gives
the same rows. CatBoost needs the rows of a group (a user) contiguous, with integer
group ids; validation users are held out whole.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from musicrec.config import RankingConfig
from musicrec.ranking.features import KEYS, TARGET, feature_columns
from musicrec.schema import C

RECOMMENDATIONS_SCHEMA = {
    C.user_id: pl.Int32,
    C.track_id: pl.Int32,
    C.score: pl.Float32,
    C.rank: pl.Int16,
    "source": pl.String,
}


@dataclass
class SamplingReport:
    """What the sampling did to one batch (or, summed, to all of them)."""

    users: int = 0
    users_without_positive: int = 0
    rows: int = 0
    positives: int = 0
    sampled_rows: int = 0
    sampled_positives: int = 0

    def add(self, other: SamplingReport) -> SamplingReport:
        """The field-by-field sum of two reports."""
        return SamplingReport(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def positive_rate(self) -> float:
        return self.positives / self.rows if self.rows else float("nan")

    @property
    def sampled_positive_rate(self) -> float:
        return self.sampled_positives / self.sampled_rows if self.sampled_rows else float("nan")


def label_rows(rows: pl.DataFrame, targets: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``target`` (1 when the (user, track) pair is in ``targets``, else 0)."""
    positive = targets.select(KEYS).unique().with_columns(pl.lit(1, pl.Int8).alias(TARGET))
    return rows.join(positive, on=list(KEYS), how="left").with_columns(pl.col(TARGET).fill_null(0))


def sample_training_rows(
    labelled: pl.DataFrame, negatives_per_user: int, seed: int
) -> tuple[pl.DataFrame, SamplingReport]:
    """Keep users with a positive; all their positives and ``negatives_per_user`` random negatives.

    The draw is a seeded hash of (user, track), so it does not depend on row order or batching.
    Rows come back sorted by user (groups contiguous), then track.
    """
    has_positive = labelled.group_by(C.user_id).agg(pl.col(TARGET).max().alias("_any"))
    kept_users = has_positive.filter(pl.col("_any") == 1).select(C.user_id)
    kept = labelled.join(kept_users, on=C.user_id, how="semi")
    draw = pl.struct(KEYS).hash(seed)
    sampled = (
        kept.with_columns(draw.alias("_draw"))
        .filter(
            (pl.col(TARGET) == 1)
            | (pl.col("_draw").rank("ordinal").over(C.user_id, TARGET) <= negatives_per_user)
        )
        .drop("_draw")
        .sort(KEYS)
    )
    report = SamplingReport(
        users=has_positive.height,
        users_without_positive=has_positive.height - kept_users.height,
        rows=labelled.height,
        positives=int(labelled.get_column(TARGET).sum()),
        sampled_rows=sampled.height,
        sampled_positives=int(sampled.get_column(TARGET).sum()),
    )
    return sampled, report


@dataclass
class TrainedRanker:
    """A fitted CatBoost model with the feature order it expects and its learning curves."""

    model: object
    features: list[str]
    loss: str
    curves: pl.DataFrame = field(default_factory=pl.DataFrame)
    importance: pl.DataFrame = field(default_factory=pl.DataFrame)
    best_iteration: int = 0
    train_users: int = 0
    validation_users: int = 0

    def predict(self, rows: pl.DataFrame) -> np.ndarray:
        """Scores of feature ``rows`` (higher is better).

        The features go to CatBoost as one float32 array (nulls as NaN, CatBoost's missing
        value): the same values as a pandas frame, without the conversion.
        """
        x = rows.select(pl.col(self.features).cast(pl.Float32)).to_numpy()
        if self.loss == "Logloss":
            return self.model.predict(x, prediction_type="RawFormulaVal")
        return self.model.predict(x)

    def save(self, folder: Path) -> Path:
        from musicrec.io import atomic_path, write_json

        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "ranker.cbm") as tmp:
            self.model.save_model(str(tmp))
        write_json(
            {"features": self.features, "loss": self.loss, "best_iteration": self.best_iteration},
            folder / "ranker.json",
        )
        return folder / "ranker.cbm"

    @classmethod
    def load(cls, folder: Path) -> TrainedRanker:
        from catboost import CatBoost

        from musicrec.io import read_json

        meta = read_json(folder / "ranker.json")
        model = CatBoost()
        model.load_model(str(folder / "ranker.cbm"))
        return cls(model, meta["features"], meta["loss"], best_iteration=meta["best_iteration"])


def split_users(users: np.ndarray, validation_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation users (disjoint, sorted), the validation share drawn with ``seed``."""
    users = np.unique(users)
    rng = np.random.default_rng(seed)
    n_valid = min(max(1, int(round(len(users) * validation_share))), len(users) - 1) if len(users) > 1 else 0
    valid = np.sort(rng.choice(users, n_valid, replace=False)) if n_valid else users[:0]
    return np.setdiff1d(users, valid), valid


def _pool(rows: pl.DataFrame, features: list[str]):
    from catboost import Pool

    rows = rows.sort(KEYS)  # groups contiguous
    return Pool(
        rows.select(features).to_pandas(),
        label=rows.get_column(TARGET).to_numpy(),
        group_id=rows.get_column(C.user_id).to_numpy().astype(np.int64),
    )


#: Users and points of the learn curve computed after fitting.
CURVE_USERS, CURVE_POINTS = 3_000, 50


def fit_ranker(
    train: pl.DataFrame, config: RankingConfig, seed: int, progress: bool = False
) -> TrainedRanker:
    """Fit CatBoost on labelled rows, early-stopping on held-out users (``progress``: CatBoost's
    line every twentieth of the iterations: the metric, the time spent and left).

    ``YetiRank`` fits a :class:`catboost.CatBoostRanker` judged by NDCG@10 on the
    validation users; ``Logloss`` a classifier judged by AUC.
    """
    from catboost import CatBoostClassifier, CatBoostRanker

    features = feature_columns(train)
    fit_users, valid_users = split_users(
        train.get_column(C.user_id).to_numpy(), config.validation_share, seed
    )
    if len(fit_users) == 0 or len(valid_users) == 0:
        raise ValueError(
            f"the ranker needs at least two users with a positive label; got "
            f"{len(np.unique(train.get_column(C.user_id).to_numpy()))}"
        )
    is_valid = pl.col(C.user_id).is_in(pl.Series(valid_users).implode())
    fit_pool = _pool(train.filter(~is_valid), features)
    valid_pool = _pool(train.filter(is_valid), features)
    metric = "NDCG:top=10" if config.loss == "YetiRank" else "AUC"
    # the learn curve is not computed during fitting for ranking losses: evaluate the
    # fitted trees on (a sample of) the training users afterwards, every few iterations
    learn_users = np.random.default_rng(seed).permutation(fit_users)[:CURVE_USERS]
    learn_pool = _pool(train.filter(pl.col(C.user_id).is_in(pl.Series(learn_users).implode())), features)
    with tempfile.TemporaryDirectory() as scratch:  # CatBoost's files, not catboost_info/ here
        common = dict(
            iterations=config.iterations,
            learning_rate=config.learning_rate,
            depth=config.depth,
            random_seed=seed,
            thread_count=config.threads,
            early_stopping_rounds=config.early_stopping_rounds,
            use_best_model=True,
            verbose=max(1, config.iterations // 20) if progress else False,
            allow_writing_files=False,
            train_dir=scratch,
        )
        if config.loss == "YetiRank":
            model = CatBoostRanker(
                loss_function="YetiRank", eval_metric=metric, custom_metric=[metric], **common
            )
        else:
            model = CatBoostClassifier(
                loss_function="Logloss", eval_metric=metric, custom_metric=[metric], **common
            )
        model.fit(fit_pool, eval_set=valid_pool, log_cout=sys.stdout)  # the kernel's stdout: the cell
        period = max(1, model.tree_count_ // CURVE_POINTS)
        learn = model.eval_metrics(learn_pool, [metric], eval_period=period, tmp_dir=scratch)
    curves = _curves(model.get_evals_result().get("validation", {}), "validation", 1)
    curves = pl.concat([curves, _curves(learn, "learn", period, model.tree_count_)])
    importance = pl.DataFrame(
        {"feature": features, "importance": model.get_feature_importance(type="PredictionValuesChange")}
    ).sort("importance", descending=True)
    return TrainedRanker(
        model,
        features,
        config.loss,
        curves,
        importance,
        int(model.get_best_iteration() or 0),
        len(fit_users),
        len(valid_users),
    )


def _curves(metrics: dict, which: str, period: int, trees: int | None = None) -> pl.DataFrame:
    """Learning curves as ``iteration, set, metric, value``; a value every ``period`` trees."""
    frames = []
    for metric, values in metrics.items():
        iterations = np.arange(1, len(values) + 1) * period - 1
        if trees is not None:
            iterations = np.minimum(iterations, trees - 1)
        frames.append(
            pl.DataFrame(
                {
                    "iteration": iterations.astype(np.int32),
                    "set": which,
                    "metric": metric.split(";")[0],
                    "value": np.asarray(values, dtype=np.float64),
                }
            )
        )
    return (
        pl.concat(frames)
        if frames
        else pl.DataFrame(
            schema={"iteration": pl.Int32, "set": pl.String, "metric": pl.String, "value": pl.Float64}
        )
    )


def top_n_by_score(rows: pl.DataFrame, scores: np.ndarray, n: int) -> pl.DataFrame:
    """Each user's ``n`` best rows by score (ties by track id) as ``user_id, track_id, score, rank``."""
    return (
        rows.select(KEYS)
        .with_columns(pl.Series(C.score, scores, dtype=pl.Float32))
        .sort([C.user_id, C.score, C.track_id], descending=[False, True, False])
        .group_by(C.user_id, maintain_order=True)
        .head(n)
        .with_columns(
            pl.int_range(1, pl.len() + 1, dtype=pl.Int16).over(C.user_id).alias(C.rank),
            pl.lit("final").alias("source"),
        )
    )
