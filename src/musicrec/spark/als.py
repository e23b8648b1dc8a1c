"""ALS user-to-item and item-to-item candidates on Spark (``pyspark.ml.recommendation.ALS``).

The Spark twin of :class:`musicrec.candidates.als.AlsGenerator`, with the same profile section
(:class:`musicrec.config.AlsConfig`) and the same output files:

* **fit**: a window's ``user_id, track_id, weight`` listens are summed per pair, the value is
  the weight (``confidence: linear``) or ``log1p`` of it (``log``), times
  ``0.5 ** (age / half_life_days)`` when a half-life is set (age: days from the listen to the
  window's last listen, as the local engine); ``ALS(implicitPrefs=True)`` turns the value into
  the confidence ``1 + alpha * value``. ``factors`` is the rank, ``regularization`` the
  ``regParam``, ``iterations`` the ``maxIter``, the profile's seed the seed. Spark scales
  ``regParam`` by each user's and item's number of pairs (ALS-WR) where implicit does not, so the
  same value regularises Spark's model more (see the tests for the quality this gives).
* **recommend**: every user's top ``n`` tracks among the item pool (``item_pool``: the tracks
  with the most distinct listeners in the window, ties by track id, as the local engine), heard
  tracks excluded, scored by the dot product of the factors. The pool's factors are broadcast;
  users are scored per partition in blocks of ``batch_users`` or fewer (:func:`block_rows`: at
  most :data:`BLOCK_SCORES` scores in a block; never all users times all tracks).
* **similar**: for every track with factors, the ``n`` other pool tracks of highest cosine
  between item factors, in blocks of ``batch_tracks`` tracks or fewer against the broadcast pool
  (never a dense tracks-by-tracks matrix). Tracks absent from the window have no Spark factors and no list.

Ids stay the source's own (Spark's ALS takes integer ids as they are; no dense index). The
outputs have the local files' schemas (:data:`~musicrec.candidates.base.USER_RECS_SCHEMA`,
:data:`~musicrec.candidates.base.SIMILAR_SCHEMA`); :meth:`SparkAlsGenerator.write_recommendations`
and :meth:`~SparkAlsGenerator.write_similar` write one parquet file (parts written by Spark, then
streamed into one file by polars, atomically) or, with ``single_file=False``, a folder of parts.

>>> gen = SparkAlsGenerator(AlsConfig(factors=8), seed=7)   # doctest: +SKIP
>>> gen.fit(spark.read.parquet("window.parquet"))            # doctest: +SKIP
>>> gen.write_recommendations("personal_als.parquet", n=100)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import polars as pl

from musicrec.candidates.base import SIMILAR_SCHEMA, USER_RECS_SCHEMA
from musicrec.config import AlsConfig
from musicrec.schema import C
from musicrec.spark.frames import STARTED_NS, to_polars, write_frame

if TYPE_CHECKING:
    from pyspark.ml.recommendation import ALSModel
    from pyspark.sql import DataFrame, SparkSession

    from musicrec.io import RunPaths

#: Spark DDL of the output frames (the local schemas: int32 ids, float32 score, int16 rank).
USER_RECS_DDL = f"{C.user_id} int, {C.track_id} int, {C.score} float, {C.rank} smallint"
SIMILAR_DDL = f"{C.track_id} int, {C.similar_track_id} int, {C.score} float, {C.rank} smallint"
VALUE = "value"
#: The most scores (float32) one block of :meth:`SparkAlsGenerator.recommend` or ``similar`` holds:
#: 256 MB, several copies of which (the scores, the partition's indices) a worker holds at a time.
BLOCK_SCORES = 2**26
_NS_PER_DAY = 86_400 * 10**9


class SparkAlsGenerator:
    """``personal_als`` (user-to-item) and ``similar`` (item-to-item) from one Spark ALS model."""

    name = "personal_als"

    def __init__(self, config: AlsConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.model: ALSModel | None = None  # the fitted model (None after refit_users)
        self.user_factors: DataFrame | None = None  # id, features (Spark's factor frames)
        self.item_factors: DataFrame | None = None
        self.pool_ids: np.ndarray | None = None  # sorted track ids that can be recommended or similar
        self.recommend_ids: np.ndarray | None = None  # those personal lists are drawn from

    def values(self, interactions: DataFrame) -> DataFrame:
        """``user_id, track_id, value``: what ALS is fitted on (see the module docstring)."""
        from pyspark.sql import functions as F

        cfg = self.config
        weight = F.col(C.weight).cast("double")
        if cfg.half_life_days is not None:
            if STARTED_NS not in interactions.columns:
                raise ValueError(
                    f"als.half_life_days needs the listens' times: read the window with "
                    f"musicrec.spark.frames.read_interactions (column {STARTED_NS})"
                )
            end = interactions.agg(F.max(STARTED_NS)).first()[0]
            age = (F.lit(end) - F.col(STARTED_NS)).cast("double") / _NS_PER_DAY
            weight = weight * F.pow(F.lit(0.5), age / F.lit(cfg.half_life_days))
        pairs = interactions.groupBy(C.user_id, C.track_id).agg(F.sum(weight).alias(VALUE))
        if cfg.confidence == "log":
            pairs = pairs.withColumn(VALUE, F.log1p(F.col(VALUE)))
        return pairs.select(
            F.col(C.user_id).cast("int"), F.col(C.track_id).cast("int"), F.col(VALUE).cast("float")
        )

    def fit(self, interactions: DataFrame) -> SparkAlsGenerator:
        """Fit on one window's listens (a Spark frame with ``user_id, track_id, weight``, and
        ``started_ns`` for a half-life); keeps the heard pairs for :meth:`recommend`."""
        from pyspark.ml.recommendation import ALS

        cfg = self.config
        pairs = self.values(interactions).cache()
        als = ALS(
            rank=cfg.factors,
            maxIter=cfg.iterations,
            regParam=cfg.regularization,
            alpha=cfg.alpha,
            implicitPrefs=True,
            userCol=C.user_id,
            itemCol=C.track_id,
            ratingCol=VALUE,
            seed=self.seed,
            coldStartStrategy="drop",
        )
        self.model = als.fit(pairs)
        self.user_factors, self.item_factors = self.model.userFactors, self.model.itemFactors
        self._window(pairs, None)
        return self

    def refit_users(self, interactions: DataFrame, history: str | Path) -> SparkAlsGenerator:
        """``als.refit: users`` on Spark: the item factors and the item pool of the history model
        (written by :meth:`save` to ``history``) are kept, and every user's factors are solved
        once on this window's listens (:func:`solve_user_factors`), as the local engine's refit
        does; the similar lists are then the history's."""
        from pyspark.ml.recommendation import ALSModel
        from pyspark.sql import functions as F

        folder = Path(history)
        self.model = None
        self.item_factors = ALSModel.load(str(folder / "als_spark")).itemFactors
        pairs = self.values(interactions).cache()
        solved = solve_user_factors(pairs, self.item_factors, self.config)
        # a user none of whose tracks has factors gets zeros (a list of the pool's first tracks), as
        # every user of the window gets a list on the local engine
        zeros = F.array_repeat(F.lit(0.0).cast("float"), self.config.factors)
        everyone = pairs.select(F.col(C.user_id).alias("id")).distinct()
        self.user_factors = everyone.join(solved, "id", "left").select(
            "id", F.coalesce(F.col("features"), zeros).alias("features")
        )
        pool = pl.read_parquet(folder / "als_pool.parquet").get_column(C.track_id).to_numpy()
        self._window(pairs, pool.astype(np.int32))
        return self

    def _window(self, pairs: DataFrame, pool: np.ndarray | None) -> None:
        """What the lists need of the window's ``pairs``: each user's heard tracks, the item pool
        (``pool``, or the ``item_pool`` most listened tracks) and the tracks the personal lists are
        drawn from (the ``recommend_pool`` most listened of the pool, as the local engine)."""
        from pyspark.sql import functions as F

        cfg = self.config
        self.heard = pairs.groupBy(C.user_id).agg(F.collect_list(C.track_id).alias("heard"))
        listeners = pairs.groupBy(C.track_id).agg(F.count(F.lit(1)).alias("listeners"))
        if pool is not None:  # the pool's tracks by this window's listeners, unheard ones last
            kept = pairs.sparkSession.createDataFrame(pd.DataFrame({C.track_id: pool}), f"{C.track_id} int")
            listeners = kept.join(listeners, C.track_id, "left").fillna({"listeners": 0})
        ranked = listeners.orderBy(F.col("listeners").desc(), F.col(C.track_id).asc())
        if cfg.item_pool is not None and pool is None:
            ranked = ranked.limit(cfg.item_pool)
        order = to_polars(ranked.select(C.track_id)).get_column(C.track_id).to_numpy().astype(np.int32)
        self.pool_ids = np.sort(order)
        self.recommend_ids = np.sort(order[: cfg.recommend_pool]) if cfg.recommend_pool else self.pool_ids
        self.pairs = pairs  # cached: the heard lists are computed from it

    def _pool_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """The pool's track ids (sorted) and their item factors, float32, on the driver."""
        from pyspark.sql import functions as F

        assert self.item_factors is not None and self.pool_ids is not None, "fit first"
        factors = self.item_factors
        # every track with factors is in the pool only after a full fit without an item_pool
        if self.config.item_pool is not None or self.model is None:
            pool = factors.sparkSession.createDataFrame(pd.DataFrame({"id": self.pool_ids}))
            factors = factors.join(F.broadcast(pool), "id")
        rows = to_polars(factors).sort("id")
        ids = rows.get_column("id").to_numpy().astype(np.int32)
        factors = rows.get_column("features").list.to_array(self.config.factors).to_numpy()
        return ids, np.ascontiguousarray(factors, dtype=np.float32).reshape(len(ids), self.config.factors)

    def recommend(self, n: int, users: Iterable[int] | None = None) -> DataFrame:
        """``user_id, track_id, score, rank``: each user's top ``n`` unheard pool tracks (every
        user of the window, or those of ``users`` among them)."""
        from pyspark.sql import functions as F

        assert self.user_factors is not None, "fit first"
        ids, factors = self._pool_factors()
        drawn = np.isin(ids, self.recommend_ids)
        ids, factors = ids[drawn], factors[drawn]
        frame = self.user_factors.withColumnRenamed("id", C.user_id)
        if users is not None:
            spark = frame.sparkSession
            wanted = spark.createDataFrame(pd.DataFrame({C.user_id: np.asarray(list(users), dtype=np.int32)}))
            frame = frame.join(F.broadcast(wanted), C.user_id)
        frame = frame.join(self.heard, C.user_id, "left")
        scorer = _block_scorer(
            frame.sparkSession.sparkContext.broadcast((ids, factors)),
            block_rows(self.config.batch_users, len(ids)),
            n,
            key=C.user_id,
            names=(C.user_id, C.track_id),
            exclude=lambda chunk: list(chunk["heard"]),
        )
        return frame.mapInPandas(scorer, USER_RECS_DDL)

    def similar(self, n: int) -> DataFrame:
        """``track_id, similar_track_id, score, rank``: for every track with factors, the ``n``
        other pool tracks of highest cosine of the item factors."""
        assert self.item_factors is not None, "fit first"
        ids, factors = self._pool_factors()
        scorer = _block_scorer(
            self.item_factors.sparkSession.sparkContext.broadcast((ids, _unit(factors))),
            block_rows(self.config.batch_tracks, len(ids)),
            n,
            key="id",
            names=(C.track_id, C.similar_track_id),
            exclude=lambda chunk: [[t] for t in chunk["id"]],  # never the track itself
            unit=True,
        )
        return self.item_factors.mapInPandas(scorer, SIMILAR_DDL)

    def write_recommendations(
        self, path: str | Path, n: int, users: Iterable[int] | None = None, single_file: bool = True
    ) -> Path:
        """:meth:`recommend` to ``path`` (``personal_als.parquet``): one file, or a folder of parts."""
        return write_frame(self.recommend(n, users), path, USER_RECS_SCHEMA, single_file)

    def write_similar(self, path: str | Path, n: int, single_file: bool = True) -> Path:
        """:meth:`similar` to ``path`` (``similar.parquet``): one file, or a folder of parts."""
        return write_frame(self.similar(n), path, SIMILAR_SCHEMA, single_file)

    def save(self, folder: str | Path) -> Path:
        """The fitted model in Spark's own format (``folder/als_spark/``, ``ALSModel.load`` reads
        it; after :meth:`refit_users`, the user factors as parquet parts, ``folder/als_spark_users/``:
        the item factors are the history model's) and the item pool (``folder/als_pool.parquet``:
        ``track_id``), replacing earlier ones."""
        from musicrec.io import write_parquet
        from musicrec.spark.frames import write_large

        assert self.user_factors is not None and self.pool_ids is not None, "fit first"
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            self.model.write().overwrite().save(str(folder / "als_spark"))
        else:
            write_large(self.user_factors, folder / "als_spark_users")
        write_parquet(
            pl.DataFrame({C.track_id: self.pool_ids}, schema={C.track_id: pl.Int32}),
            folder / "als_pool.parquet",
        )
        return folder


def solve_user_factors(pairs: DataFrame, item_factors: DataFrame, config: AlsConfig) -> DataFrame:
    """``id, features``: each user's factors against fixed ``item_factors`` (``id, features``), the
    least-squares solve of a half-step of Spark's implicit ALS (``ALS.computeFactors``):
    ``(Y'Y + sum c1 y y' + regParam n I) x = sum (1 + c1) y`` over the user's ``pairs``
    (``user_id, track_id, value``) whose track has factors, ``c1 = alpha |value|``, ``n`` the
    number of them with a positive value (Spark's ALS-WR scaling), ``Y'Y`` over every item. So on
    the window a model was fitted on it gives that model's user factors back (a test holds it).
    Users with no such pair get none. ``Y'Y`` is summed per partition; the solve is per user
    (``applyInPandas``), in float64."""
    from pyspark.sql import functions as F

    k, alpha, reg = config.factors, float(config.alpha), float(config.regularization)
    spark = pairs.sparkSession

    def partial_gram(parts: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        total = np.zeros((k, k))
        for part in parts:
            if len(part):
                factors = _stack(part["features"]).astype(np.float64)
                total += factors.T @ factors
        yield pd.DataFrame({"gram": [total.ravel()]})

    grams = to_polars(item_factors.select("features").mapInPandas(partial_gram, "gram array<double>"))
    gram = np.asarray(grams.get_column("gram").to_list(), dtype=np.float64).sum(axis=0).reshape(k, k)
    shared = spark.sparkContext.broadcast(gram)

    def solve(group: pd.DataFrame) -> pd.DataFrame:
        factors = _stack(group["features"]).astype(np.float64)
        value = group[VALUE].to_numpy(np.float64)
        c1 = alpha * np.abs(value)
        positive = value > 0
        normal = shared.value + (factors.T * c1) @ factors + reg * positive.sum() * np.eye(k)
        solved = np.linalg.solve(normal, ((1.0 + c1) * positive) @ factors)
        return pd.DataFrame({"id": [int(group[C.user_id].iloc[0])], "features": [solved.astype(np.float32)]})

    rated = pairs.join(item_factors.select(F.col("id").alias(C.track_id), "features"), on=C.track_id)
    return rated.groupBy(C.user_id).applyInPandas(solve, "id int, features array<float>")


def block_rows(batch: int, pool: int) -> int:
    """Rows scored at once: at most ``batch``, and at most :data:`BLOCK_SCORES` scores (rows times
    the pool's tracks) in one block, so that a worker's memory does not grow with the pool.

    >>> block_rows(20_000, 300_000)
    223
    >>> block_rows(20_000, 1_000)
    20000
    """
    return max(1, min(batch, BLOCK_SCORES // max(pool, 1)))


def _block_scorer(shared, block: int, n: int, key: str, names: tuple[str, str], exclude, unit: bool = False):
    """A ``mapInPandas`` function: each partition's rows (``key``, ``features``) scored in blocks of
    ``block`` rows against the broadcast pool ``shared`` (ids, factors), each row's top ``n``
    (:func:`_top_block`), without the ids that ``exclude(chunk)`` gives per row; the rows' factors
    scaled to unit length first when ``unit`` (cosines)."""

    def score(parts: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        pool_ids, pool = shared.value
        for part in parts:
            for lo in range(0, len(part), block):
                chunk = part.iloc[lo : lo + block]
                rows = _stack(chunk["features"])
                yield _top_block(
                    chunk[key].to_numpy(np.int32),
                    (_unit(rows) if unit else rows) @ pool.T,
                    pool_ids,
                    n,
                    exclude=exclude(chunk),
                    names=names,
                )

    return score


def _stack(column: pd.Series) -> np.ndarray:
    """A pandas column of equal-length float lists as a float32 matrix."""
    if len(column) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    return np.vstack([np.asarray(v, dtype=np.float32) for v in column])


def _unit(factors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): dot products are then cosines."""
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    return factors / np.where(norms > 0, norms, 1.0)


def _top_block(
    keys: np.ndarray,
    scores: np.ndarray,
    pool_ids: np.ndarray,
    n: int,
    exclude: list,
    names: tuple[str, str],
) -> pd.DataFrame:
    """The ``n`` best pool columns of each row of a score block (rows ``keys``), the pool ids of
    ``exclude[i]`` left out of row ``i``; a frame ``names[0], names[1], score, rank``."""
    scores = np.array(scores, dtype=np.float32, copy=True).reshape(len(keys), len(pool_ids))
    for i, ids in enumerate(exclude):
        if ids is None or len(ids) == 0:
            continue
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(pool_ids, ids), len(pool_ids) - 1)
        scores[i, pos[pool_ids[pos] == ids]] = -np.inf
    k = min(n, len(pool_ids))
    if k == 0 or len(keys) == 0:
        return _frame(
            np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0), names
        )
    part = (
        np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(pool_ids) else np.argsort(-scores, axis=1)
    )
    best = np.take_along_axis(scores, part, axis=1)
    # best first; equal scores by track id, so that the lists do not depend on the partitioning
    order = np.lexsort((pool_ids[part], -best), axis=1)
    cols, best = np.take_along_axis(part, order, axis=1), np.take_along_axis(best, order, axis=1)
    valid = np.isfinite(best)
    ranks = np.cumsum(valid, axis=1)
    rows = np.broadcast_to(keys[:, None], cols.shape)
    return _frame(rows[valid], pool_ids[cols[valid]], best[valid], ranks[valid], names)


def _frame(
    keys: np.ndarray, ids: np.ndarray, scores: np.ndarray, ranks: np.ndarray, names: tuple[str, str]
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            names[0]: keys.astype(np.int32),
            names[1]: ids.astype(np.int32),
            C.score: scores.astype(np.float32),
            C.rank: ranks.astype(np.int16),
        }
    )


def window_listens(spark: SparkSession, paths: RunPaths, window: str) -> DataFrame:
    """The listens a fitting window (``history`` or ``history+labels``) holds, as Spark reads the
    run's interactions (:func:`musicrec.spark.frames.read_interactions`), from ``split.json``'s
    boundaries, as :func:`musicrec.candidates.stage.window_interactions`: less the pairs disliked
    before the window's end, where the source has dislikes (:class:`musicrec.split.Windows`)."""
    from pyspark.sql import functions as F

    from musicrec.spark.frames import day_ns, nanoseconds, read_interactions

    end = F.lit(day_ns(paths.windows().fit_end(window)))
    listens = read_interactions(spark, paths.interactions).filter(F.col(STARTED_NS) < end)
    if not paths.disliked_pairs.is_file():
        return listens
    disliked = spark.read.parquet(str(paths.disliked_pairs))
    disliked = disliked.filter(nanoseconds(disliked, "disliked_at") < end).select(C.user_id, C.track_id)
    return listens.join(disliked, on=[C.user_id, C.track_id], how="left_anti")


def fit_and_write(
    config: AlsConfig,
    seed: int,
    interactions: DataFrame,
    out: str | Path,
    users: Iterable[int] | None = None,
    on_fit: Callable[[SparkAlsGenerator], None] | None = None,
    models: str | Path | None = None,
    history: str | Path | None = None,
) -> SparkAlsGenerator:
    """Fit on ``interactions`` and write ``out/personal_als.parquet`` (``n_users`` per user of
    ``users``, default every user of the window) and ``out/similar.parquet`` (``n_similar`` per
    track): what the candidates stage needs of ALS. ``on_fit`` is called after the fit (a timer's
    mark); ``models``: :meth:`SparkAlsGenerator.save` the model there. ``history``: the history
    model's folder, for ``refit: users`` (:meth:`SparkAlsGenerator.refit_users`): then no similar
    lists are written (they are the history model's)."""
    out = Path(out)
    gen = SparkAlsGenerator(config, seed)
    gen = gen.fit(interactions) if history is None else gen.refit_users(interactions, history)
    if on_fit is not None:
        on_fit(gen)
    gen.write_recommendations(out / "personal_als.parquet", config.n_users, users)
    if history is None:
        gen.write_similar(out / "similar.parquet", config.n_similar)
    if models is not None:
        gen.save(models)
    return gen
