"""The evaluation stage: every model on the same test window, by user segment, with intervals.

Every model, baselines included, is judged on the listens of the ``test`` window of
the users seen before ``test_start`` (the *warm* users); the users first seen in the
test window are the *cold* segment, served the top-popular list and measured
separately. The pieces:

* :func:`model_lists`: each model's top-k lists for the warm users (random,
  top-popular made per user, ALS, i2i, item-kNN, content, audio, the final ranker's list);
* :func:`oracle_lists`: on synthetic data, each user's best unheard tracks by the
  generator's true preference, the ceiling;
* :func:`user_segments`: warm users in terciles of history length, and the cold users;
* :func:`evaluate_models`: precision, recall, NDCG, MAP, hit rate at several k and
  coverage, novelty, genre diversity, per segment, with bootstrap intervals over users
  (the metric definitions are :mod:`musicrec.metrics`'s);
* :func:`paired_comparison`, :func:`compare_final`: the final list against the best
  single generator, on the same users, with a paired bootstrap interval and a verdict;
* :func:`sampled_protocol`: the biased "held-out item among 100 random unheard
  tracks" protocol, as a secondary table;
* :func:`write_metrics`: ``outputs/<run>/metrics.parquet`` and ``metrics.json``.

Modules: :mod:`.common`, :mod:`.lists`, :mod:`.oracle`,
:mod:`.segments`, :mod:`.table`, :mod:`.comparison`, :mod:`.sampled`, :mod:`.figures`.
"""

from __future__ import annotations

from musicrec.evaluation.common import (  # noqa: F401
    ALL,
    COLD,
    CURVE_KS,
    GENERATORS,
    HEAVY,
    LIGHT,
    MEDIUM,
    METRICS_SCHEMA,
    RANKING_METRICS,
    SEGMENT_ORDER,
    ListsLike,
    ndcg_note,
)
from musicrec.evaluation.comparison import (  # noqa: F401
    best_generator,
    compare_final,
    paired_comparison,
    verdict,
    why_final_trails,
    write_comparison,
)
from musicrec.evaluation.figures import (  # noqa: F401
    candidate_recall_beside,
    candidate_recall_n,
    expectation_checks,
    popularity_bias,
)
from musicrec.evaluation.lists import (  # noqa: F401
    cold_lists,
    held_out_listens,
    history_pairs,
    history_users,
    model_lists,
    popular_order,
    popularity,
    sample_of,
    top_popular_lists,
    warm_test_users,
)
from musicrec.evaluation.oracle import (  # noqa: F401
    _PreferenceBound,
    oracle_lists,
    oracle_users,
)
from musicrec.evaluation.sampled import (  # noqa: F401
    sample_negatives,
    sampled_listens,
    sampled_protocol,
)
from musicrec.evaluation.segments import (  # noqa: F401
    history_terciles,
    organic_listens,
    user_segments,
)
from musicrec.evaluation.table import (  # noqa: F401
    ModelsPass,
    beyond_table,
    evaluate_each_model,
    evaluate_models,
    headline,
    metric_at,
    metric_curves,
    sort_metrics,
    write_metrics,
)
