"""A load generator for a running service (``make bench-service``): wrk, or async httpx.

``concurrency`` connections send requests back to back for ``seconds``: ``GET
/recommendations`` for warm users (with an offline list), cold users (none: top-popular)
and online users (who also get listens posted), and ``POST /events`` for the online users,
in the shares of ``mix``. Afterwards the events the service acknowledged (201) are compared
with the growth of the store (``/stats``: ``events_in_store``): none may be lost.

    python -m musicrec.service.loadtest --params params/default.yaml --seconds 30 --concurrency 32

Two clients drive the same mix: ``wrk`` (Debian's package ``wrk``; a Lua script that this
module writes picks each request), and a Python client (httpx, asyncio) that also reports
latencies per kind of request. ``--client auto`` takes wrk when it is on the PATH. The
client runs on the same machine as the service and takes CPU from it: the numbers are a
floor for what the service does with the machine to itself, and the Python client takes
far more of it than wrk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from musicrec.config import load_profile
from musicrec.io import RunPaths, write_json

KINDS = ("warm", "cold", "online", "event")
DEFAULT_MIX = {"warm": 0.5, "cold": 0.1, "online": 0.2, "event": 0.2}


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
    return warm[:half], cold, warm[half : 2 * half], tracks


async def _worker(
    client,
    deadline: float,
    mix: dict[str, float],
    warm,
    cold,
    online,
    tracks,
    tally: Tally,
    rng: random.Random,
) -> None:
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


async def run(
    url: str,
    paths: RunPaths,
    seconds: float = 30,
    concurrency: int = 32,
    mix: dict[str, float] | None = None,
    n_users: int = 5000,
    seed: int = 0,
) -> dict:
    """Drive the service at ``url`` and return throughput, latency percentiles and the event check."""
    import httpx

    mix = mix or DEFAULT_MIX
    warm, cold, online, tracks = _users(paths, n_users, seed)
    tally = Tally()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        before = (await client.get("/stats")).json()["events_in_store"]
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(
            *(
                _worker(client, deadline, mix, warm, cold, online, tracks, tally, random.Random(seed + i))
                for i in range(concurrency)
            )
        )
        elapsed = time.perf_counter() - start
        after = (await client.get("/stats")).json()["events_in_store"]
    every = [x for values in tally.latencies.values() for x in values]
    out = {
        "client": "python",
        "url": url,
        "seconds": round(elapsed, 2),
        "concurrency": concurrency,
        "mix": mix,
        "requests": len(every),
        "requests_per_second": round(len(every) / elapsed, 1),
        "errors": sum(tally.errors.values()),
        "failures": tally.failures,
        "latency_ms": _percentiles(every),
        "by_kind": {
            k: {"requests": len(v), "errors": tally.errors[k], "latency_ms": _percentiles(v)}
            for k, v in tally.latencies.items()
            if v
        },
        "events_acknowledged": tally.events_acknowledged,
        "events_stored": after - before,
        "events_lost": tally.events_acknowledged - (after - before),
    }
    return out


WRK_SCRIPT = """
-- written by musicrec.service.loadtest: the mix of requests, and counts by status
local warm = {%(warm)s}
local cold = {%(cold)s}
local online = {%(online)s}
local tracks = {%(tracks)s}
local cumulative = {%(cumulative)s}
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(%(seed)d + id)
  created, ok, failed, last_failure = 0, 0, 0, 0
end

local function pick(list) return list[math.random(#list)] end

function request()
  local r = math.random()
  if r < cumulative[1] then return wrk.format("GET", "/recommendations/" .. pick(warm) .. "?k=10") end
  if r < cumulative[2] then return wrk.format("GET", "/recommendations/" .. pick(cold) .. "?k=10") end
  if r < cumulative[3] then return wrk.format("GET", "/recommendations/" .. pick(online) .. "?k=10") end
  local body = '{"user_id":' .. pick(online) .. ',"track_id":' .. pick(tracks) .. '}'
  return wrk.format("POST", "/events", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status == 201 then created = created + 1
  elseif status == 200 then ok = ok + 1
  else failed = failed + 1; last_failure = status end
end

function done(summary, latency, requests)
  local c, o, f, last = 0, 0, 0, 0
  for _, thread in ipairs(threads) do
    c = c + thread:get("created"); o = o + thread:get("ok"); f = f + thread:get("failed")
    if thread:get("last_failure") > 0 then last = thread:get("last_failure") end
  end
  io.write(string.format("musicrec created=%%d ok=%%d failed=%%d last_failure=%%d\\n", c, o, f, last))
  for _, q in ipairs({50, 90, 99}) do
    io.write(string.format("musicrec p%%d=%%.3f\\n", q, latency:percentile(q) / 1000))
  end
  io.write(string.format("musicrec max=%%.3f requests=%%d seconds=%%.3f\\n", latency.max / 1000,
                         summary.requests, summary.duration / 1e6))
end
"""


def wrk_script(
    warm: list[int], cold: list[int], online: list[int], tracks, mix: dict[str, float], seed: int = 0
) -> str:
    """The Lua script that makes wrk send ``mix`` (shares of warm, cold, online, event)."""
    total = sum(mix.get(k, 0) for k in KINDS)
    cumulative = np.cumsum([mix.get(k, 0) / total for k in KINDS[:3]])

    def lua_list(values) -> str:
        return ",".join(str(int(v)) for v in values) or "0"

    return WRK_SCRIPT % {
        "warm": lua_list(warm),
        "cold": lua_list(cold),
        "online": lua_list(online),
        "tracks": lua_list(tracks),
        "seed": seed,
        "cumulative": ",".join(f"{c:.6f}" for c in cumulative),
    }


def run_wrk(
    url: str,
    paths: RunPaths,
    seconds: float = 30,
    concurrency: int = 32,
    mix: dict[str, float] | None = None,
    n_users: int = 5000,
    seed: int = 0,
    threads: int = 2,
) -> dict:
    """Drive the service at ``url`` with wrk; the same result shape as :func:`run` (without per-kind rows)."""
    import httpx

    executable = shutil.which("wrk")
    if executable is None:
        raise FileNotFoundError(
            "wrk is not on the PATH: install Debian's package wrk (apt-get install wrk), "
            "or use --client python"
        )
    mix = mix or DEFAULT_MIX
    warm, cold, online, tracks = _users(paths, n_users, seed)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "mix.lua"
        script.write_text(wrk_script(warm, cold, online, tracks, mix, seed))
        before = httpx.get(f"{url}/stats").json()["events_in_store"]
        done = subprocess.run(
            [
                executable,
                f"-t{threads}",
                f"-c{concurrency}",
                f"-d{round(seconds)}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        after = httpx.get(f"{url}/stats").json()["events_in_store"]
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return _wrk_result(done.stdout, url, concurrency, mix, after - before)


def _wrk_result(output: str, url: str, concurrency: int, mix: dict[str, float], events_stored: int) -> dict:
    """Parse what wrk printed (its ``Socket errors`` line and the script's ``musicrec`` lines)."""
    values = {
        k: float(v)
        for k, v in re.findall(
            r"(\w+)=([0-9.]+)",
            "\n".join(line for line in output.splitlines() if line.startswith("musicrec ")),
        )
    }
    if "requests" not in values:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    socket_errors = {
        k: int(v)
        for k, v in re.findall(
            r"(connect|read|write|timeout) (\d+)",
            "\n".join(line for line in output.splitlines() if "Socket errors" in line),
        )
    }
    failures = {k: v for k, v in socket_errors.items() if v}
    if values["failed"]:  # the status of the last one (wrk's script keeps no more per thread)
        failures[f"non-2xx (last: {int(values['last_failure'])})"] = int(values["failed"])
    acknowledged = int(values["created"])
    return {
        "client": "wrk",
        "url": url,
        "seconds": round(values["seconds"], 2),
        "concurrency": concurrency,
        "mix": mix,
        "requests": int(values["requests"]),
        "requests_per_second": round(values["requests"] / values["seconds"], 1),
        "errors": int(values["failed"]) + sum(socket_errors.values()),
        "failures": failures,
        "latency_ms": {f"p{q}": round(values[f"p{q}"], 2) for q in (50, 90, 99)}
        | {"max": round(values["max"], 2)},
        "events_acknowledged": acknowledged,
        "events_stored": events_stored,
        # wrk stops mid-flight: a post the service stored may end unacknowledged, never the reverse
        "events_lost": max(0, acknowledged - events_stored),
    }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(arr, q)), 2) for q in (50, 90, 99)} | {
        "max": round(float(arr.max()), 2)
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musicrec.service.loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--root", default=".")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--mix",
        default="warm=0.5,cold=0.1,online=0.2,event=0.2",
        help="shares of warm, cold, online (GET) and event (POST) requests",
    )
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="wrk (Debian's package), the Python client, or auto: wrk when installed",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk's threads")
    parser.add_argument("--out", default=None, help="also write the result here (JSON)")
    args = parser.parse_args(argv)
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    unknown = set(mix) - set(KINDS)
    if unknown:
        parser.error(f"--mix: unknown kinds {sorted(unknown)} (known: {', '.join(KINDS)})")
    paths = RunPaths.for_profile(load_profile(args.params), args.root)
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    try:
        if client == "wrk":
            result = run_wrk(args.url, paths, args.seconds, args.concurrency, mix, threads=args.threads)
        else:
            result = asyncio.run(run(args.url, paths, args.seconds, args.concurrency, mix))
    except (OSError, RuntimeError) as exc:
        print(f"bench-service: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(result, Path(args.out))
    return 0 if result["events_lost"] == 0 and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
