"""A/B experiments: stable assignment of users to variants, and per-variant results.

Assignment hashes ``"<salt>:<user_id>"`` with SHA-256 and reads its first 8 bytes as a
number ``u`` in [0, 1): the user gets the first variant whose cumulative share exceeds
``u``. The same user, salt and shares always give the same variant, in every process and
after a restart; a new salt reshuffles everyone, and changing the shares moves only the
users near the boundaries.

Results: every served list is logged (:class:`~musicrec.service.events.EventStore`). A list
**succeeds** when its user listens to one of its tracks (an event in the store) within
``window`` after it was served. Per variant: users, lists, successes, the success rate with
a Wilson score interval, and the same at the user level (a user succeeds when any of their
lists did). Between the first variant (the control) and each other one: a two-proportion
z-test (pooled standard error) and the difference with its normal-approximation interval.
Lists of the same user are not independent, so the list-level test is optimistic when users
get many lists; the user-level test is the sound one (the user is the unit of assignment).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from statistics import NormalDist

from musicrec.service.settings import ExperimentConfig


def bucket(user_id: int, salt: str) -> float:
    """The user's position in [0, 1) for ``salt`` (SHA-256, never Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{salt}:{int(user_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(user_id: int, experiment: ExperimentConfig) -> str:
    """The variant of ``user_id`` in ``experiment``.

    >>> exp = ExperimentConfig(name="e", variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5}])
    >>> assign(1, exp) == assign(1, exp)
    True
    """
    u = bucket(user_id, experiment.effective_salt)
    cumulative = 0.0
    for variant in experiment.variants:
        cumulative += variant.share
        if u < cumulative:
            return variant.name
    return experiment.variants[-1].name  # shares add up to 1 within rounding


def z_value(confidence: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion; ``None`` without trials.

    >>> [round(x, 4) for x in wilson_interval(5, 10)]
    [0.2366, 0.7634]
    """
    if n <= 0:
        return None
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lower = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not 1e-17
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def two_proportion_test(s_a: int, n_a: int, s_b: int, n_b: int, confidence: float = 0.95) -> dict:
    """Two-sided z-test of ``p_b - p_a`` with the pooled standard error, and its interval.

    ``z`` and ``p_value`` are ``None`` when a group is empty or the pooled rate is 0 or 1
    (no variance: nothing to test). The interval uses the unpooled standard error.
    """
    out = {"difference": None, "ci": None, "z": None, "p_value": None, "significant": False}
    if n_a <= 0 or n_b <= 0:
        return out
    p_a, p_b = s_a / n_a, s_b / n_b
    diff = p_b - p_a
    out["difference"] = diff
    z_crit = z_value(confidence)
    se_diff = math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    # a difference of two proportions lies in [-1, 1]: so does its interval (the normal one can overshoot)
    out["ci"] = (max(-1.0, diff - z_crit * se_diff), min(1.0, diff + z_crit * se_diff))
    pooled = (s_a + s_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se > 0:
        z = diff / se
        p_value = math.erfc(abs(z) / math.sqrt(2))
        out.update(z=z, p_value=p_value, significant=p_value < 1 - confidence)
    return out


def summarize(
    outcomes: Iterable[tuple[str, int, bool]],
    variants: Sequence[str] = (),
    confidence: float = 0.95,
    shares: dict[str, float] | None = None,
) -> dict:
    """Per-variant results and the tests against the first variant, from ``(variant, user, success)``.

    ``variants`` fixes the order (the first is the control) and lists variants that have no
    logged list yet; variants found only in the log follow, sorted.
    """
    per: dict[str, dict] = {}
    for variant, user, success in outcomes:
        entry = per.setdefault(variant, {"lists": 0, "successes": 0, "users": {}})
        entry["lists"] += 1
        entry["successes"] += bool(success)
        entry["users"][user] = entry["users"].get(user, False) or bool(success)
    order = list(dict.fromkeys([*variants, *sorted(v for v in per if v not in variants)]))
    rows = []
    for name in order:
        entry = per.get(name, {"lists": 0, "successes": 0, "users": {}})
        n_users = len(entry["users"])
        user_successes = sum(entry["users"].values())
        rows.append(
            {
                "variant": name,
                "share": (shares or {}).get(name),
                "users": n_users,
                "recommendations": entry["lists"],
                "successes": entry["successes"],
                "success_rate": entry["successes"] / entry["lists"] if entry["lists"] else None,
                "ci": wilson_interval(entry["successes"], entry["lists"], confidence),
                "users_with_success": user_successes,
                "user_success_rate": user_successes / n_users if n_users else None,
                "user_ci": wilson_interval(user_successes, n_users, confidence),
            }
        )
    tests = []
    if rows:
        control = rows[0]
        for other in rows[1:]:
            for metric, s_key, n_key in (
                ("recommendation_success", "successes", "recommendations"),
                ("user_success", "users_with_success", "users"),
            ):
                test = two_proportion_test(
                    control[s_key], control[n_key], other[s_key], other[n_key], confidence
                )
                tests.append({"metric": metric, "a": control["variant"], "b": other["variant"], **test})
    return {"confidence": confidence, "variants": rows, "tests": tests}
