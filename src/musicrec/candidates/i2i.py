"""Item-to-item candidates from a user's latest listens (also used online by the service)."""

from __future__ import annotations

import polars as pl

from musicrec.candidates.base import USER_RECS_SCHEMA
from musicrec.schema import C


def last_listens(interactions: pl.DataFrame | pl.LazyFrame, k: int) -> pl.LazyFrame:
    """Each user's ``k`` latest listens (by ``started_at``, then ``track_seq``), newest first."""
    order = [C.started_at, C.track_seq] if C.track_seq in interactions.collect_schema() else [C.started_at]
    return (interactions.lazy().select(C.user_id, C.track_id, *order)
            .sort([C.user_id, *order], descending=[False] + [True] * len(order))
            .group_by(C.user_id, maintain_order=True).head(k)
            .select(C.user_id, C.track_id))


def i2i_from_history(recent: pl.DataFrame | pl.LazyFrame, similar: pl.DataFrame | pl.LazyFrame,
                     n: int = 100, heard: pl.DataFrame | pl.LazyFrame | None = None) -> pl.DataFrame:
    """Candidates from the similar lists of each user's recent listens, scored by summed similarity.

    Parameters
    ----------
    recent
        ``user_id, track_id``: the listens to start from (for example :func:`last_listens`).
    similar
        ``track_id, similar_track_id, score``: the item-to-item lists.
    n
        Candidates per user.
    heard
        ``user_id, track_id`` pairs never to recommend (the user's whole history);
        ``recent`` itself is always excluded.

    Returns
    -------
    ``user_id, track_id, score, rank`` with rank 1 the best; ties broken by track id.

    Examples
    --------
    >>> recent = pl.DataFrame({"user_id": [1, 1], "track_id": [10, 11]})
    >>> similar = pl.DataFrame({"track_id": [10, 10, 11], "similar_track_id": [12, 13, 12],
    ...                         "score": [0.9, 0.5, 0.4]})
    >>> i2i_from_history(recent, similar, n=2)["track_id"].to_list()
    [12, 13]
    """
    recent = recent.lazy().select(C.user_id, C.track_id)
    exclude = recent if heard is None else pl.concat([recent, heard.lazy().select(C.user_id, C.track_id)])
    candidates = (
        recent.join(similar.lazy().select(C.track_id, C.similar_track_id, C.score), on=C.track_id)
        .group_by(C.user_id, C.similar_track_id).agg(pl.col(C.score).sum())
        .rename({C.similar_track_id: C.track_id})
        .join(exclude, on=[C.user_id, C.track_id], how="anti")
        .sort([C.user_id, C.score, C.track_id], descending=[False, True, False])
        .group_by(C.user_id, maintain_order=True).head(n)
        .with_columns(pl.int_range(1, pl.len() + 1).over(C.user_id).alias(C.rank))
    )
    return candidates.collect().cast(USER_RECS_SCHEMA)
