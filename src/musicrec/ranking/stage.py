"""The ranking stage: train on the history fit against labels, score the history + labels fit.

``training_rows`` builds labelled, negative-sampled rows from the candidates of the
generators fitted on ``history`` (features from history only); ``score_users`` ranks
the candidates of the generators refitted on ``history + labels`` for every user of
that window, batch by batch, streaming the top N to ``recommendations.parquet``;
users first seen in the test window get the top-popular list, marked as such.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from musicrec.candidates.base import batches
from musicrec.candidates.stage import training_users, window_targets
from musicrec.config import Profile
from musicrec.io import ParquetStream, RunPaths
from musicrec.monitor import PeakMemory
from musicrec.parallel import WORKERS, in_order
from musicrec.progress import bar, step
from musicrec.ranking.features import KEYS, FeatureBuilder, candidate_files
from musicrec.ranking.ranker import (
    RECOMMENDATIONS_SCHEMA,
    SamplingReport,
    TrainedRanker,
    label_rows,
    sample_training_rows,
    top_n_by_score,
)
from musicrec.schema import C


@dataclass
class StepTimes:
    """Wall time and peak memory of the stage's steps, for the notebook and the bench."""

    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str):
        """Time the block and record its peak memory under ``name`` (and say when it is done)."""
        start = time.perf_counter()
        with step(f"ranking: {name}"), PeakMemory() as memory:
            yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.peak_rss_gb[name] = round(memory.peak_gb, 2)

    def table(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "step": list(self.seconds),
                "seconds": list(self.seconds.values()),
                "peak_rss_gb": [self.peak_rss_gb[s] for s in self.seconds],
            }
        )


def _of_range(frame: pl.DataFrame, chunk: np.ndarray) -> pl.DataFrame:
    """The rows of ``frame`` whose user lies between the first and last of ``chunk`` (sorted)."""
    return frame.filter(pl.col(C.user_id).is_between(int(chunk[0]), int(chunk[-1])))


def prefetched(
    build: Callable[[np.ndarray], pl.DataFrame], chunks: list[np.ndarray], workers: int = WORKERS
) -> Iterator[tuple[np.ndarray, pl.DataFrame]]:
    """``(chunk, build(chunk))`` for every chunk in order, the next ``workers`` chunks built in
    background threads while the caller works on the current one (polars, numpy, scipy and
    CatBoost release the GIL, so feature building and prediction share the cores: at full scale
    two builders made 4 batches in 49 s against 65 s for one). At most ``workers + 1`` built
    chunks are alive at once."""
    return zip(chunks, in_order(build, chunks, workers=workers), strict=True)


def disliked_before(paths: RunPaths, day) -> pl.DataFrame | None:
    """``user_id, track_id`` pairs the user disliked before midnight of ``day`` (and had not
    undisliked by the data's end), from ``disliked_pairs.parquet`` of sources with dislikes
    (Yambda); None for the others (:meth:`musicrec.split.Windows.disliked_before`). The final
    list never offers them."""
    pairs = paths.windows().disliked_before(day)
    if pairs is None:
        return None
    return (
        pairs.select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
        .sort(C.user_id)
        .collect()
    )


def training_rows(
    profile: Profile, paths: RunPaths, progress: bool = False
) -> tuple[pl.DataFrame, SamplingReport, dict]:
    """Labelled, sampled rows of the training users, with the labels-window recall of the union.

    Returns the rows (sorted by user), the sampling report, and ``recall``: the share of
    the training users' labels listens found among their merged candidates.
    """
    cfg = profile.ranking
    builder = FeatureBuilder.for_window(profile, paths, "history")
    targets = window_targets(paths, "labels")
    users = training_users(targets, cfg.train_users, profile.seed)
    parts, report, found = [], SamplingReport(), 0
    chunks = [users[part] for part in batches(len(users), cfg.batch_users)]
    for chunk, rows in bar(
        prefetched(builder.batch, chunks), total=len(chunks), desc="training rows", enabled=progress
    ):
        labelled = label_rows(rows, _of_range(targets, chunk))
        found += int(labelled.get_column("target").sum())
        sampled, batch_report = sample_training_rows(labelled, cfg.negatives_per_user, profile.seed)
        parts.append(sampled)
        report = report.add(batch_report)
    in_sample = targets.filter(pl.col(C.user_id).is_in(pl.Series(users).implode())).select(KEYS).unique()
    recall = {
        "users": int(len(users)),
        "labels_listens": in_sample.height,
        "found": found,
        "recall": found / in_sample.height if in_sample.height else float("nan"),
    }
    return pl.concat(parts) if parts else pl.DataFrame(), report, recall


def score_users(profile: Profile, paths: RunPaths, ranker: TrainedRanker, progress: bool = False) -> dict:
    """Rank every user's candidates from the history + labels fit; top-popular for cold users.

    Writes ``recommendations.parquet`` batch by batch. Alongside, counts how many test
    listens of these users the merged candidates, the ranker's top 10 and its top N hold
    (what the ranker keeps of the candidates' recall); the counts never feed the model.
    """
    cfg = profile.ranking
    builder = FeatureBuilder.for_window(profile, paths, "history+labels")
    users = builder.window_users()  # seen before the test window: the warm users
    # one read of the test window, split here (window_targets' warm/cold split scans the history again)
    test_all = window_targets(paths, "test", warm=None)
    test = test_all.join(
        pl.DataFrame({C.user_id: users}).cast(test_all.schema[C.user_id]), on=C.user_id, how="semi"
    )
    cold = np.setdiff1d(test_all.get_column(C.user_id).to_numpy(), users)
    counts = {"candidates": 0, "top_10": 0, f"top_{cfg.n}": 0}
    candidate_rows = 0
    disliked = disliked_before(paths, paths.windows().fit_end("history+labels"))
    removed_disliked = 0
    with ParquetStream(paths.recommendations, RECOMMENDATIONS_SCHEMA) as out:
        chunks = [users[part] for part in batches(len(users), cfg.batch_users)]
        for chunk, rows in bar(
            prefetched(builder.batch, chunks), total=len(chunks), desc="scoring", enabled=progress
        ):
            if disliked is not None:
                offered = rows.height
                rows = rows.join(_of_range(disliked, chunk), on=list(KEYS), how="anti", maintain_order="left")
                removed_disliked += offered - rows.height
            candidate_rows += rows.height
            top = top_n_by_score(rows, ranker.predict(rows), cfg.n)
            out.write(top)
            hits = _of_range(test, chunk)
            counts["candidates"] += rows.join(hits, on=list(KEYS), how="semi").height
            in_top = top.join(hits, on=list(KEYS), how="semi")
            counts["top_10"] += in_top.filter(pl.col(C.rank) <= 10).height
            counts[f"top_{cfg.n}"] += in_top.height
        popular = (
            pl.read_parquet(paths.candidate_list("top_popular")).filter(pl.col(C.rank) <= cfg.n).sort(C.rank)
        )
        for part in batches(len(cold), cfg.batch_users):
            out.write(
                pl.DataFrame({C.user_id: cold[part]})
                .join(popular, how="cross")
                .with_columns(pl.lit("top_popular").alias("source"))
            )
    warm_test = test.select(KEYS).unique()  # distinct pairs, as the hits above count them
    return {
        "warm_users": int(len(users)),
        "cold_users": int(len(cold)),
        "candidate_rows": candidate_rows,
        "disliked_candidates_removed": removed_disliked,
        "rows": out.rows,
        "test_listens_of_warm_users": warm_test.height,
        "recall": {k: v / warm_test.height if warm_test.height else float("nan") for k, v in counts.items()},
    }


def sampling_table(report: SamplingReport) -> pl.DataFrame:
    """The positive rate before and after sampling, and the users dropped, for display."""
    row = asdict(report) | {
        "positive_rate": report.positive_rate,
        "sampled_positive_rate": report.sampled_positive_rate,
    }
    return pl.DataFrame([row])


def compare_on_test(
    paths: RunPaths, k: int = 10, n_boot: int = 200, seed: int = 0, max_users: int | None = 30_000
) -> pl.DataFrame:
    """NDCG@k and recall@k on the test window: the final list beside every generator's list.

    Users: those seen before the test window with a test listen, or a seeded sample of
    ``max_users`` of them (``None``: all); every model's lists come from
    :func:`musicrec.evaluation.model_lists` (top-popular without the user's heard tracks).
    A quick check for the ranking notebook: the sample keeps it to seconds at full scale
    (1.3M users took 104 s, 100,000 users 45 s), and the evaluation stage does the full
    comparison on every user.
    """
    from musicrec.evaluation import model_lists
    from musicrec.metrics import NDCG, Recall, evaluate

    test = window_targets(paths, "test")  # of warm users
    users = test.get_column(C.user_id).unique().sort()
    if max_users is not None and users.len() > max_users:
        users = users.sample(max_users, seed=seed).sort()
        test = test.join(users.to_frame(), on=C.user_id, how="semi")
    rows = []
    for name, lists in model_lists(paths, k, users=users).items():
        result = evaluate(
            lists.collect(engine="streaming"),
            test,
            [NDCG(k), Recall(k)],
            users=users,
            n_boot=n_boot,
            seed=seed,
        )
        rows += [{"model": name, "users": users.len()} | row for row in result.iter_rows(named=True)]
    return pl.DataFrame(rows).sort(["metric", "value"], descending=[False, True])


def explain_user(profile: Profile, paths: RunPaths, user_id: int, k: int = 10) -> pl.DataFrame:
    """A user's final top ``k`` with each generator's rank of every track (null: not proposed)."""
    final = (
        pl.scan_parquet(paths.recommendations)
        .filter((pl.col(C.user_id) == user_id) & (pl.col(C.rank) <= k))
        .select(C.rank, C.track_id, C.score)
        .collect()
        .sort(C.rank)
    )
    for name, n, path in candidate_files(paths.candidates, profile.ranking.candidates):
        ranks = pl.scan_parquet(path)
        if name != "top_popular":
            ranks = ranks.filter(pl.col(C.user_id) == user_id)
        ranks = ranks.filter(pl.col(C.rank) <= n).select(C.track_id, pl.col(C.rank).alias(name)).collect()
        final = final.join(ranks, on=C.track_id, how="left", maintain_order="left")
    return final


def final_against_best(ndcg: pl.DataFrame) -> str:
    """One sentence: the final list's NDCG (``model, value, lower, upper`` rows, best first)
    against the best single generator's, judged by whether the two intervals overlap."""
    best = ndcg.filter(pl.col("model") != "final").sort("value", descending=True).row(0, named=True)
    final = ndcg.filter(pl.col("model") == "final").row(0, named=True)
    verdict = (
        "beats"
        if final["lower"] > best["upper"]
        else "is below"
        if final["upper"] < best["lower"]
        else "is within the interval of"
    )
    return (
        f"The ranked list reaches NDCG@10 **{final['value']:.4f}** [{final['lower']:.4f}, "
        f"{final['upper']:.4f}] and {verdict} the best single generator, **{best['model']}** "
        f"({best['value']:.4f} [{best['lower']:.4f}, {best['upper']:.4f}])."
    )
