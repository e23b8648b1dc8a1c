"""User segments: warm users in terciles of history length, and the cold users."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from musicrec.evaluation.common import COLD, HEAVY, LIGHT, MEDIUM
from musicrec.evaluation.lists import held_out_listens, history_pairs
from musicrec.io import RunPaths
from musicrec.schema import C


def history_terciles(history: pl.DataFrame) -> pl.DataFrame:
    """``user_id, segment``: users split by ``n_history`` into ``light``, ``medium``, ``heavy``.

    The bounds are the 1/3 and 2/3 quantiles of ``n_history`` (the "lower" quantile:
    sorted values at positions ``floor(q (n - 1))``): light ≤ the first, medium ≤ the
    second, heavy above. Users with the same history length are always in the same
    segment, so with ties the segments are not exactly equal in size.

    Examples
    --------
    >>> h = pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6], "n_history": [6, 5, 4, 3, 2, 1]})
    >>> history_terciles(h)["segment"].to_list()
    ['heavy', 'heavy', 'medium', 'medium', 'light', 'light']
    """
    values = np.sort(history.get_column("n_history").to_numpy())
    if not len(values):
        return pl.DataFrame(schema={C.user_id: pl.Int32, "segment": pl.Utf8})
    low, high = (values[int(math.floor(q * (len(values) - 1)))] for q in (1 / 3, 2 / 3))
    n = pl.col("n_history")
    segment = (
        pl.when(n <= low).then(pl.lit(LIGHT)).when(n <= high).then(pl.lit(MEDIUM)).otherwise(pl.lit(HEAVY))
    )
    return history.select(pl.col(C.user_id).cast(pl.Int32), segment.alias("segment"))


def user_segments(paths: RunPaths, test: pl.DataFrame | None = None) -> pl.DataFrame:
    """``user_id, segment`` for every test user: history-length terciles of the warm users, and cold.

    Warm users (seen before ``test_start``, with a test listen) are split by their
    number of listens before ``test_start`` (:func:`history_terciles`); users first seen
    in the test window are ``cold``. The ``all`` segment (every warm user) is added by
    :func:`evaluate_models`. ``test``: the test window's listens when already read
    (:func:`held_out_listens`), else read here.
    """
    if test is None:
        test = held_out_listens(paths)
    test_users = pl.DataFrame({C.user_id: test.get_column(C.user_id).unique()})
    history = (
        history_pairs(paths)
        .join(test_users.lazy(), on=C.user_id, how="semi")
        .group_by(C.user_id)
        .agg(pl.len().alias("n_history"))
        .collect(engine="streaming")
    )
    # a test user with no listen before test_start is cold
    cold = test_users.join(history, on=C.user_id, how="anti").get_column(C.user_id)
    return pl.concat(
        [
            history_terciles(history),
            pl.DataFrame({C.user_id: cold.cast(pl.Int32)}).with_columns(
                pl.lit(COLD, dtype=pl.Utf8).alias("segment")
            ),
        ]
    ).sort(C.user_id)


def organic_listens(paths: RunPaths, test: pl.DataFrame) -> pl.DataFrame | None:
    """The ``test`` listens whose (user, track) interaction was organic (``is_organic``: not driven
    by a recommendation), from ``organic_pairs.parquet`` of sources that flag it (Yambda); None
    for the others. Evaluated as segment ``organic`` (:func:`evaluate_models`' ``relevance``)."""
    flags = paths.organic_pairs
    if not flags.is_file():
        return None
    organic = (
        pl.scan_parquet(flags)
        .filter(pl.col("is_organic"))
        .select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
    )
    return (
        test.lazy()
        .select(pl.col(C.user_id).cast(pl.Int32), pl.col(C.track_id).cast(pl.Int32))
        .join(organic, on=[C.user_id, C.track_id], how="semi")
        .collect()
    )
