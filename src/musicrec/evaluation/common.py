"""Names shared by the evaluation modules: segments, the metrics table's columns, curve cut-offs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl

from musicrec.generators import EVALUATION_ORDER
from musicrec.metrics import (
    MAP,
    NDCG,
    HitRate,
    Precision,
    RankingMetric,
    Recall,
    TopLists,
)

#: Per-user candidate files of the generators, in the order the tables show them.
GENERATORS = EVALUATION_ORDER  # musicrec.generators
#: Segment names: the three terciles of history length, the cold users, and every warm user.
LIGHT, MEDIUM, HEAVY, COLD, ALL = "light", "medium", "heavy", "cold", "all"
SEGMENT_ORDER = (ALL, LIGHT, MEDIUM, HEAVY, COLD)
#: Columns of :func:`evaluate_models` (and of ``metrics.parquet``).
METRICS_SCHEMA = {
    "model": pl.Utf8,
    "k": pl.Int32,
    "metric": pl.Utf8,
    "segment": pl.Utf8,
    "value": pl.Float64,
    "lower": pl.Float64,
    "upper": pl.Float64,
}
#: The ranking metrics of :func:`evaluate_models`, by name, in the order the tables show them.
RANKING_METRICS: dict[str, type[RankingMetric]] = {
    cls.name: cls for cls in (Precision, Recall, NDCG, MAP, HitRate)
}

ListsLike = pl.DataFrame | pl.LazyFrame
#: An engine's per-user ranking metrics: ``(lists, relevant, metrics, users)`` to one ``user_id,
#: value`` frame per metric, over the users of ``users`` with a relevant track, sorted by user
#: (:func:`musicrec.metrics.ranking_values` locally, :class:`musicrec.spark.metrics.RankingValues`).
RankingValues = Callable[[TopLists, pl.DataFrame, Sequence[RankingMetric], pl.Series], list[pl.DataFrame]]
#: The cut-offs of the recall@k and NDCG@k curves: every k to 10, then every 10 to 100.
CURVE_KS = (*range(1, 11), 15, *range(20, 101, 10))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def ndcg_note(source: str) -> str:
    """The report's sentence on the NDCG used here, with what differs in a source's official
    benchmark (Yambda's code divides by the DCG of the targets found, not the ideal DCG).

    >>> ndcg_note("yambda").startswith("**NDCG**")
    True
    """
    note = (
        "**NDCG** here is the standard one (binary gain): DCG of the list over the ideal DCG, "
        "that of min(targets, k) hits in the first places (`musicrec.metrics.NDCG`)."
    )
    if source == "yambda":
        note += (
            " Yambda's official benchmark code divides instead by the DCG of the targets the list "
            "found (a known issue on the data set's page), which rates a list whose hits are all at "
            "its top as perfect however many targets it missed: its published NDCG values are "
            "higher than, and not comparable with, these."
        )
    return note
