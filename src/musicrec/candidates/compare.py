"""ALS variants side by side: how the history + labels model is made, its fit time and its
NDCG@10 and recall@10 on the test window (warm users), from one history fit.

``python -m musicrec.candidates.compare --params params/scale10.yaml users warm full full:8``
(``make bench-als``): each variant is ``refit[:iterations]``; the table chose
``candidates.als.refit`` and ``iterations`` (README, "Candidates").
"""

from __future__ import annotations

import argparse
import sys
import time

import polars as pl

from musicrec.candidates.als import AlsGenerator
from musicrec.candidates.base import FitData, batches, to_user_frame
from musicrec.candidates.stage import window_interactions, window_targets
from musicrec.config import Profile, load_profile
from musicrec.io import RunPaths
from musicrec.metrics import NDCG, Recall, evaluate


def parse_variant(text: str) -> tuple[str, int | None]:
    """``users`` -> ("users", None); ``full:8`` -> ("full", 8)."""
    mode, _, iterations = text.partition(":")
    if mode not in ("full", "warm", "users") or (iterations and not iterations.isdigit()):
        raise ValueError(f"{text!r}: expected full|warm|users, optionally :ITERATIONS (for example full:8)")
    return mode, int(iterations) if iterations else None


def compare_als(
    profile: Profile, paths: RunPaths, variants: list[str], k: int = 10, n_boot: int = 100
) -> pl.DataFrame:
    """One row per variant: seconds to make the history + labels model, NDCG@k and recall@k.

    A variant's iterations apply to its own fit (``full``, ``warm``); the history model every
    refit starts from is fitted once with the profile's settings.
    """
    cfg = profile.candidates.als
    tracks = pl.read_parquet(paths.tracks)
    history_data = FitData.build(window_interactions(paths, "history"), tracks)
    history = AlsGenerator(cfg, profile.seed).fit(history_data)
    del history_data
    data = FitData.build(window_interactions(paths, "history+labels"), tracks)
    test = window_targets(paths, "test")
    users = test.get_column("user_id").unique().sort()
    rows = data.user_rows(users.to_numpy())
    rows = rows[rows >= 0]
    out = []
    for text in variants:
        mode, iterations = parse_variant(text)
        variant = cfg.model_copy(
            update={"refit": mode}
            | ({"iterations" if mode == "full" else "warm_iterations": iterations} if iterations else {})
        )
        start = time.perf_counter()
        model = AlsGenerator(variant, profile.seed).fit(data, None if mode == "full" else history)
        seconds = time.perf_counter() - start
        lists = pl.concat(
            [
                to_user_frame(data.user_ids[rows[part]], *model.recommend(rows[part], k), data.track_ids)
                for part in batches(len(rows), 20_000)
            ]
        )
        scores = evaluate(lists, test, [NDCG(k), Recall(k)], users=users, n_boot=n_boot, seed=profile.seed)
        out.append(
            {"variant": text, "seconds": round(seconds, 1)}
            | {f"{r['metric']}@{k}": round(r["value"], 4) for r in scores.iter_rows(named=True)}
        )
    return pl.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicrec.candidates.compare", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("variants", nargs="+", help="refit[:iterations], e.g. users warm full full:8")
    args = parser.parse_args(argv)
    try:
        for variant in args.variants:
            parse_variant(variant)
        profile = load_profile(args.params)
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True):
            print(compare_als(profile, RunPaths.for_profile(profile, args.root), args.variants))
    except (ValueError, FileNotFoundError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
