"""The figures' statistics computed in polars (musicrec.plots)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest


def test_box_stats_equal_matplotlibs_on_the_same_values():
    from matplotlib import cbook

    from musicrec.plots import box_stats

    rng = np.random.default_rng(11)
    values = {
        "b": rng.lognormal(1, 1, 3_000),
        "a": rng.normal(0, 1, 2_001),
        "c": rng.integers(0, 5, 500) * 1.0,
    }
    frame = pl.concat(
        [pl.DataFrame({"model": [name] * len(v), "x": v}) for name, v in values.items()]
    ).sample(fraction=1.0, shuffle=True, seed=1)
    stats = {s["label"]: s for s in box_stats(frame, "model", "x")}
    assert list(stats) == list(dict.fromkeys(frame.get_column("model").to_list()))  # order of appearance
    for name, v in values.items():
        expected = cbook.boxplot_stats(v, whis=1.5)[0]
        for key in ("q1", "med", "q3", "whislo", "whishi"):
            assert stats[name][key] == pytest.approx(expected[key]), (name, key)
