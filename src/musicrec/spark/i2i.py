"""i2i from history on Spark: the similar lists of each user's latest listens, summed.

The same candidates as :func:`musicrec.candidates.i2i.i2i_from_history` over
:func:`musicrec.candidates.i2i.last_listens` (a test holds them equal): each user's ``last_k``
latest listens (by ``started_at``, then ``track_seq``, newest first) bring their tracks' similar
lists; a similar track's score is the sum of its similarities; the tracks the user heard in the
window are left out; the best ``n`` per user are kept, ties by the smaller track id. Every step
is a join, a sum or a ranking within a user, so nothing is collected to the driver and no
tracks-by-tracks matrix is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from musicrec.candidates.base import USER_RECS_SCHEMA
from musicrec.schema import C
from musicrec.spark.frames import STARTED_NS, write_frame

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


def last_listens(listens: DataFrame, k: int) -> DataFrame:
    """``user_id, track_id`` of each user's ``k`` latest listens (``started_ns``, then
    ``track_seq`` where there is one, newest first)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if k < 1:
        raise ValueError(f"last_k must be at least 1, got {k}")
    order = [F.col(STARTED_NS).desc()]
    if C.track_seq in listens.columns:
        order.append(F.col(C.track_seq).desc())
    latest = Window.partitionBy(C.user_id).orderBy(*order)
    return (
        listens.withColumn("_latest", F.row_number().over(latest))
        .filter(F.col("_latest") <= k)
        .select(C.user_id, C.track_id)
    )


def i2i_from_history(
    listens: DataFrame,
    similar: DataFrame,
    last_k: int,
    n: int,
    users: DataFrame | None = None,
) -> DataFrame:
    """``user_id, track_id, score, rank`` (rank 1 the best) for the users of ``listens`` (of
    ``users`` only, a frame with ``user_id``, when given), from ``similar``
    (``track_id, similar_track_id, score``) and the window's ``listens`` (``user_id, track_id,
    started_ns`` and ``track_seq``, as :func:`musicrec.spark.als.window_listens` gives them)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if users is not None:
        listens = listens.join(users.select(C.user_id), on=C.user_id, how="left_semi")
    heard = listens.select(C.user_id, C.track_id).distinct()  # the latest listens are among them
    summed = (
        last_listens(listens, last_k)
        .join(similar.select(C.track_id, C.similar_track_id, C.score), on=C.track_id)
        .groupBy(C.user_id, C.similar_track_id)
        .agg(F.sum(C.score).cast("float").alias(C.score))  # float32, the local scores' type
        .withColumnRenamed(C.similar_track_id, C.track_id)
        .join(heard, on=[C.user_id, C.track_id], how="left_anti")
    )
    best = Window.partitionBy(C.user_id).orderBy(F.col(C.score).desc(), F.col(C.track_id).asc())
    return (
        summed.withColumn(C.rank, F.row_number().over(best))
        .filter(F.col(C.rank) <= n)
        .select(C.user_id, C.track_id, C.score, C.rank)
    )


def write_i2i_from_history(
    listens: DataFrame,
    similar_path: str | Path,
    out: str | Path,
    last_k: int,
    n: int,
    users: np.ndarray | None = None,
) -> Path:
    """:func:`i2i_from_history` of the window's listens and the similar lists at
    ``similar_path``, written to ``out`` (``i2i_history.parquet``: one file, atomically), for
    ``users`` only when given (the users the candidates stage lists)."""
    spark = listens.sparkSession
    chosen = None
    if users is not None:
        ids = pd.DataFrame({C.user_id: np.asarray(users, dtype=np.int32)})
        chosen = spark.createDataFrame(ids, f"{C.user_id} int")  # through Arrow
    similar = spark.read.parquet(str(similar_path))
    return write_frame(i2i_from_history(listens, similar, last_k, n, chosen), out, USER_RECS_SCHEMA, True)
