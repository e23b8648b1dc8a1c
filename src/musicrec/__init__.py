"""musicrec: a reproducible research pipeline for music recommendations."""

__version__ = "0.1.0"
