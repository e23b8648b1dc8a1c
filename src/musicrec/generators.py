"""The candidate generators, named once.

The candidate recall, the ranking features, the evaluation's models, the profile's
``ranking.candidates`` keys and the tests take their generator lists from
:data:`GENERATORS`; adding a generator means its module in ``musicrec.candidates`` and
one entry here (see the README's Contributing section).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GeneratorSpec:
    """A generator: its name (the list file is ``candidates/<name>.parquet``) and its module."""

    name: str
    module: str
    per_user: bool = True  # False: one global list for everyone (top-popular)


GENERATORS: tuple[GeneratorSpec, ...] = (
    GeneratorSpec("top_popular", "musicrec.candidates.popular", per_user=False),
    GeneratorSpec("personal_als", "musicrec.candidates.als"),
    GeneratorSpec("i2i_history", "musicrec.candidates.i2i"),
    GeneratorSpec("item_knn", "musicrec.candidates.itemknn"),
    GeneratorSpec("content", "musicrec.candidates.content"),
    GeneratorSpec("audio", "musicrec.candidates.audio"),
    GeneratorSpec("random", "musicrec.candidates.random"),
)
#: Every generator's name, in the order of the ranking features.
NAMES = tuple(g.name for g in GENERATORS)
#: The generators that write one list per user.
USER_LISTS = tuple(g.name for g in GENERATORS if g.per_user)
#: The order of the models in the evaluation's tables: the random floor first.
EVALUATION_ORDER = ("random", *(n for n in NAMES if n != "random"))
