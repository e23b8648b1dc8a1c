"""A load generator for a running service (``make bench-service``): async httpx on loopback.

``concurrency`` workers send requests back to back for ``seconds``: ``GET /recommendations``
for warm users (with an offline list), cold users (none: top-popular) and online users
(who also get listens posted), and ``POST /events`` for the online users, in the shares of
``mix``. Afterwards the events the service acknowledged (201) are compared with the
growth of the store (``/stats``: ``events_in_store``): none may be lost.

    python -m musicrec.service.loadtest --params params/default.yaml --seconds 30 --concurrency 32

The client runs on the same machine as the service and takes CPU from it: the numbers
are a floor for what the service does with the machine to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from musicrec.config import load_profile
from musicrec.io import RunPaths, write_json

KINDS = ("warm", "cold", "online", "event")


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failures: dict[str, int] = field(default_factory=dict)  # status code or exception name -> count
    events_acknowledged: int = 0


def _users(paths: RunPaths, n: int, seed: int) -> tuple[list[int], list[int], list[int], np.ndarray]:
    recs = pl.scan_parquet(paths.recommendations).select("user_id", "source").unique().collect()
    warm = recs.filter(pl.col("source") != "top_popular").get_column("user_id").to_list()
    rng = random.Random(seed)
    rng.shuffle(warm)
    top = int(recs.get_column("user_id").max() or 0)
    cold = list(range(top + 1_000_000, top + 1_000_000 + n))  # never seen: the top-popular fallback
    tracks = pl.scan_parquet(paths.tracks).select("track_id").collect().get_column("track_id").to_numpy()
    half = min(n, len(warm) // 2)
    return warm[:half], cold, warm[half:2 * half], tracks


async def _worker(client, deadline: float, mix: dict[str, float], warm, cold, online, tracks,
                  tally: Tally, rng: random.Random) -> None:
    kinds, weights = list(mix), list(mix.values())
    while time.perf_counter() < deadline:
        kind = rng.choices(kinds, weights)[0]
        start = time.perf_counter()
        try:
            if kind == "event":
                body = {"user_id": rng.choice(online), "track_id": int(tracks[rng.randrange(len(tracks))])}
                response = await client.post("/events", json=body)
                ok = response.status_code == 201
                tally.events_acknowledged += ok
            else:
                user = rng.choice({"warm": warm, "cold": cold, "online": online}[kind])
                response = await client.get(f"/recommendations/{user}", params={"k": 10})
                ok = response.status_code == 200
        except Exception as exc:  # a refused or broken connection counts as an error
            ok, response = False, None
            tally.failures[type(exc).__name__] = tally.failures.get(type(exc).__name__, 0) + 1
        else:
            if not ok:
                code = str(response.status_code)
                tally.failures[code] = tally.failures.get(code, 0) + 1
        tally.latencies[kind].append(time.perf_counter() - start)
        if not ok:
            tally.errors[kind] += 1


async def run(url: str, paths: RunPaths, seconds: float = 30, concurrency: int = 32,
              mix: dict[str, float] | None = None, n_users: int = 5000, seed: int = 0) -> dict:
    """Drive the service at ``url`` and return throughput, latency percentiles and the event check."""
    import httpx

    mix = mix or {"warm": 0.5, "cold": 0.1, "online": 0.2, "event": 0.2}
    warm, cold, online, tracks = _users(paths, n_users, seed)
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        before = (await client.get("/stats")).json()["events_in_store"]
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_worker(client, deadline, mix, warm, cold, online, tracks, tally,
                                       random.Random(seed + i)) for i in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = (await client.get("/stats")).json()["events_in_store"]
    every = [x for values in tally.latencies.values() for x in values]
    out = {"url": url, "seconds": round(elapsed, 2), "concurrency": concurrency, "mix": mix,
           "requests": len(every), "requests_per_second": round(len(every) / elapsed, 1),
           "errors": sum(tally.errors.values()), "failures": tally.failures,
           "latency_ms": _percentiles(every),
           "by_kind": {k: {"requests": len(v), "errors": tally.errors[k], "latency_ms": _percentiles(v)}
                       for k, v in tally.latencies.items() if v},
           "events_acknowledged": tally.events_acknowledged, "events_stored": after - before,
           "events_lost": tally.events_acknowledged - (after - before)}
    return out


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 90, 99)} | {
        "max": round(float(arr.max()), 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m musicrec.service.loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--mix", default="warm=0.5,cold=0.1,online=0.2,event=0.2",
                        help="shares of warm, cold, online (GET) and event (POST) requests")
    parser.add_argument("--out", default=None, help="also write the result here (JSON)")
    args = parser.parse_args(argv)
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    unknown = set(mix) - set(KINDS)
    if unknown:
        parser.error(f"--mix: unknown kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    paths = RunPaths.for_profile(load_profile(args.params), args.root)
    result = asyncio.run(run(args.url, paths, args.seconds, args.concurrency, mix))
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(result, Path(args.out))
    return 0 if result["events_lost"] == 0 and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
