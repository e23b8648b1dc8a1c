"""The A/B replay of a test window through the service (``musicrec.service.replay``).

It runs on the hand-made run of ``test_service.py`` with its own test window, small
enough to work every session, list and success out by hand:

- history (November): user 1 heard 1, 2; user 2 heard 3; user 3 is cold
- test window: user 1 listens to 20 (Dec 16 10:00), 21 (Dec 16 11:00), 10 (Dec 18 09:00),
  22 (Dec 18 12:00); user 2 to 16 (Dec 17 08:00); user 3 to 4 (Dec 16 23:00), 5 (Dec 17 01:00)

Sessions (a user's day): (1, Dec 16), (3, Dec 16), (3, Dec 17), (2, Dec 17), (1, Dec 18).
Success within 24 h (lists of 10): user 1's Dec 16 list (10..15 and top-popular) misses
20 and 21; user 3's lists hold 4 and then 5 (top-popular); user 2's holds 16; user 1's Dec 18
list holds 10 in either variant. So 4 of 5 lists and all 3 users succeed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from test_service import RUN, write_run

from musicrec.config import Profile
from musicrec.io import RunPaths
from musicrec.schema import INTERACTIONS_SCHEMA
from musicrec.service import ab
from musicrec.service import replay as rp
from musicrec.service.events import EventStore, to_micros
from musicrec.service.settings import ExperimentConfig, ServiceConfig

D = dt.datetime
LISTENS = [  # user, track, when
    (1, 1, D(2022, 11, 1)),
    (1, 2, D(2022, 11, 1)),
    (2, 3, D(2022, 11, 1)),
    (1, 20, D(2022, 12, 16, 10)),
    (1, 21, D(2022, 12, 16, 11)),
    (1, 10, D(2022, 12, 18, 9)),
    (1, 22, D(2022, 12, 18, 12)),
    (2, 16, D(2022, 12, 17, 8)),
    (3, 4, D(2022, 12, 16, 23)),
    (3, 5, D(2022, 12, 17, 1)),
]
TEST_WINDOW = [row for row in LISTENS if row[2] >= D(2022, 12, 16)]
IN_TIME_ORDER = sorted(TEST_WINDOW, key=lambda r: (r[2], r[0], r[1]))
US = dt.timedelta(microseconds=1)
SESSIONS = [  # day, user, at, listens
    (dt.date(2022, 12, 16), 1, D(2022, 12, 16, 10) - US, 2),
    (dt.date(2022, 12, 16), 3, D(2022, 12, 16, 23) - US, 1),
    (dt.date(2022, 12, 17), 3, D(2022, 12, 17, 1) - US, 1),
    (dt.date(2022, 12, 17), 2, D(2022, 12, 17, 8) - US, 1),
    (dt.date(2022, 12, 18), 1, D(2022, 12, 18, 9) - US, 2),
]


def experiment(salt: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**rp.DEFAULT_EXPERIMENT.model_dump(), "salt": salt})


# a salt that puts user 1 in the blended variant, so their Dec 18 list shows the online picks
SALT = next(f"s{i}" for i in range(100) if ab.assign(1, experiment(f"s{i}")) == "blended")


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    root = write_run(tmp_path_factory.mktemp("project"))
    users, tracks, times = zip(*LISTENS, strict=True)
    pl.DataFrame(
        {
            "user_id": users,
            "track_id": tracks,
            "started_at": times,
            "track_seq": [1] * len(LISTENS),
            "weight": [1.0] * len(LISTENS),
        },
        schema=INTERACTIONS_SCHEMA,
    ).write_parquet(root / "data" / RUN / "interactions.parquet")
    return root


@pytest.fixture(scope="module")
def replayed(run_root) -> rp.ReplayResult:
    return rp.replay(Profile(run_name=RUN), root=run_root, experiment=experiment(SALT))


def stored(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


# the traffic ------------------------------------------------------------------------------------


def test_window_listens_are_the_test_window_in_time_order(run_root):
    listens = rp.window_listens(RunPaths(run_root.resolve(), RUN))
    assert listens.columns == ["user_id", "track_id", "started_at"]
    assert listens.rows() == IN_TIME_ORDER


def test_sessions_by_hand():
    frame = pl.DataFrame(TEST_WINDOW, schema=["user_id", "track_id", "started_at"], orient="row")
    sessions = rp.build_sessions(frame)
    assert sessions.columns == ["day", "user_id", "start", "at", "listens"]
    assert sessions.select("day", "user_id", "at", "listens").rows() == SESSIONS
    # user 3's listens at 23:00 and 01:00 fall on two days: two sessions
    assert sessions.filter(pl.col("user_id") == 3).height == 2


def test_event_batches_keep_the_order_and_the_limit():
    frame = pl.DataFrame(TEST_WINDOW, schema=["user_id", "track_id", "started_at"], orient="row")
    batches = list(rp.event_batches(frame, size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert batches[0][0] == {"user_id": 1, "track_id": 20, "timestamp": "2022-12-16T10:00:00"}
    assert [e["track_id"] for b in batches for e in b] == [t for _, t, _ in TEST_WINDOW]


def test_sample_users_is_seeded():
    frame = pl.DataFrame(TEST_WINDOW, schema=["user_id", "track_id", "started_at"], orient="row")
    one = rp.sample_users(frame, 2, seed=5)
    assert one.get_column("user_id").n_unique() == 2
    assert one.equals(rp.sample_users(frame, 2, seed=5))
    assert rp.sample_users(frame, None, seed=5).equals(frame)
    assert rp.sample_users(frame, 10, seed=5).equals(frame)
    with pytest.raises(ValueError, match="max_users"):
        rp.sample_users(frame, 0, seed=5)


def test_experiment_default_and_overrides():
    assert rp.resolve_experiment(None, Profile(run_name=RUN)) == rp.DEFAULT_EXPERIMENT
    assert [v.name for v in rp.DEFAULT_EXPERIMENT.variants] == ["blended", "offline"]
    assert rp.DEFAULT_EXPERIMENT.success_window_hours == 24
    exp = rp.resolve_experiment({"name": "x", "variants": [{"name": "a", "share": 1}]}, Profile(run_name=RUN))
    assert exp.name == "x"
    configured = Profile.model_validate({"run_name": RUN, "service": {"experiment": exp.model_dump()}})
    assert rp.resolve_experiment(None, configured) == exp


def test_variants_are_described_by_their_blending():
    service = ServiceConfig.model_validate({"blending": {"strategy": "rrf", "online_share": 0.4}})
    rows = rp.describe_variants(rp.DEFAULT_EXPERIMENT, service)
    assert rows == [
        {"variant": "blended", "share": 0.5, "blending": "the service's: rrf, online_share=0.4"},
        {"variant": "offline", "share": 0.5, "blending": "strategy=offline"},
    ]


# the replay -------------------------------------------------------------------------------------


def test_counts(replayed):
    assert {
        key: replayed.counts[key]
        for key in (
            "test_window_users",
            "test_window_listens",
            "users",
            "sessions",
            "requests",
            "events_posted",
        )
    } == {
        "test_window_users": 3,
        "test_window_listens": 7,
        "users": 3,
        "sessions": 5,
        "requests": 5,
        "events_posted": 7,
    }
    assert replayed.counts["event_posts"] == 3  # one a day
    assert replayed.counts["seconds"] > 0


def test_the_store_holds_exactly_the_posted_events(replayed, run_root):
    db = run_root / "outputs" / RUN / "service" / "abtest.sqlite"
    events = stored(db, "SELECT user_id, track_id, ts FROM events ORDER BY id")
    assert events == [(u, t, to_micros(when)) for u, t, when in IN_TIME_ORDER]


def test_every_session_gets_one_logged_list(replayed, run_root):
    store = EventStore(run_root / "outputs" / RUN / "service" / "abtest.sqlite")
    try:
        logged = store.recommendations("blend_vs_offline")
    finally:
        store.close()
    expected = sorted((user, to_micros(at)) for _, user, at, _ in SESSIONS)
    assert sorted((r.user_id, r.served_at) for r in logged) == expected
    assert all(r.variant == ab.assign(r.user_id, experiment(SALT)) for r in logged)
    lists = {(r.user_id, r.served_at): r.tracks for r in logged}
    dec16 = lists[(1, to_micros(D(2022, 12, 16, 10) - US))]
    dec18 = lists[(1, to_micros(D(2022, 12, 18, 9) - US))]
    # the online i2i sees only the past: nothing on Dec 16; on Dec 18 the picks from 20 and 21
    assert dec16 == [10, 11, 12, 13, 14, 15, 3, 4, 5, 6]
    assert 22 in dec18 and 23 in dec18 and not {20, 21} & set(dec18)


def test_results_by_hand(replayed):
    table = replayed.table()
    assert table.get_column("variant").to_list() == ["blended", "offline"]
    assert table.get_column("lists").sum() == 5 and table.get_column("successes").sum() == 4
    assert table.get_column("users").sum() == 3
    assert (table.get_column("user_success_rate") == 1.0).all()
    by_day = replayed.by_day
    per_day = by_day.group_by("day").agg(pl.col("lists").sum(), pl.col("successes").sum()).sort("day")
    assert per_day.rows() == [
        (dt.date(2022, 12, 16), 2, 1),
        (dt.date(2022, 12, 17), 2, 2),
        (dt.date(2022, 12, 18), 1, 1),
    ]
    assert (by_day.get_column("lower") <= by_day.get_column("success_rate")).all()


def test_the_result_is_written(replayed, run_root):
    written = json.loads((run_root / "outputs" / RUN / "service" / "abtest.json").read_text())
    assert replayed.path == run_root / "outputs" / RUN / "service" / "abtest.json"
    assert written["replay"]["sessions"] == 5 and written["experiment"]["salt"] == SALT
    assert written["results"]["variants"][0]["variant"] == "blended"
    assert written["verdict"] == replayed.verdict() and len(written["table"]) == 2
    assert written["session_rule"] == rp.SESSION_RULE


def test_a_second_replay_starts_from_a_fresh_store(run_root, tmp_path):
    db = tmp_path / "ab.sqlite"
    for max_users in (None, 1):
        again = rp.replay(
            Profile(run_name=RUN),
            root=run_root,
            experiment=experiment(SALT),
            max_users=max_users,
            seed=3,
            db_path=db,
            write=False,
        )
    assert again.counts["users"] == 1 and again.path is None
    assert stored(db, "SELECT count(*) FROM recommendations")[0][0] == again.counts["sessions"]
    assert stored(db, "SELECT count(DISTINCT user_id) FROM events")[0][0] == 1


def test_missing_recommendations_say_to_run_the_ranking(tmp_path):
    root = write_run(tmp_path)
    (root / "outputs" / RUN / "recommendations.parquet").unlink()
    with pytest.raises(rp.ReplayError, match="make ranking"):
        rp.replay(Profile(run_name=RUN), root=root)


def test_a_service_that_cannot_load_says_why(tmp_path):
    root = write_run(tmp_path)
    (root / "outputs" / RUN / "candidates" / "similar.parquet").unlink()
    with pytest.raises(rp.ReplayError, match="similar.parquet"):
        rp.replay(Profile(run_name=RUN), root=root)


# the verdict ------------------------------------------------------------------------------------


def results(a: tuple[int, int], b: tuple[int, int], confidence: float = 0.95) -> dict:
    """Each user one list: ``(successes, users)`` of the control ``a`` and of ``b``."""
    outcomes = [("a", u, u < a[0]) for u in range(a[1])]
    outcomes += [("b", 10_000 + u, u < b[0]) for u in range(b[1])]
    return ab.summarize(outcomes, ["a", "b"], confidence)


def test_verdict_when_the_variant_wins():
    # 150/1000 against 100/1000: z = 3.38, p = 0.0007
    text = rp.verdict(results((100, 1000), (150, 1000)))
    assert text.startswith(
        "At 95% confidence, b beats a on the share of users with a successful list: "
        "b 15.0% [12.9%, 17.3%] against a 10.0% [8.3%, 12.0%], +5.0 points [+2.1, +7.9]"
    )
    assert text.endswith("(two-proportion z-test, p = 0.0007).")
    assert "+20.0 points" in rp.verdict(results((100, 1000), (300, 1000)))
    assert re.search(r"p = \d\.\de-\d+\)\.$", rp.verdict(results((100, 1000), (300, 1000))))


def test_verdict_when_the_control_wins():
    text = rp.verdict(results((150, 1000), (100, 1000)), "recommendation_success")
    assert text.startswith("At 95% confidence, a beats b on the share of successful lists: a 15.0%")
    assert "+5.0 points [+2.1, +7.9]" in text


def test_verdict_when_nothing_is_significant():
    text = rp.verdict(results((100, 1000), (105, 1000)))
    assert (
        "the difference between b and a on the share of users with a successful list is not significant"
        in text
    )
    assert "+0.5 points" in text and text.endswith("the replay cannot tell them apart.")
    # the same difference on 46 times the users: z = 2.5, significant at 90%, not at 99.9%
    assert "b beats a" in rp.verdict(results((4_600, 46_000), (4_830, 46_000), 0.90))
    assert "not significant" in rp.verdict(results((4_600, 46_000), (4_830, 46_000), 0.999))


def test_verdict_without_anything_to_test():
    assert "cannot be compared" in rp.verdict(results((0, 50), (0, 50)))
    assert "nothing logged" in rp.verdict(results((5, 50), (0, 0)))
    assert rp.verdict(ab.summarize([("a", 1, True)], ["a"])) == "No variant to compare against the control."
    with pytest.raises(ValueError, match="metric"):
        rp.verdict(results((1, 2), (1, 2)), "clicks")


def test_tables_of_hand_made_results():
    res = results((100, 1000), (150, 1000))
    table = rp.variant_table(res)
    assert table.select("variant", "users", "lists", "successes").rows() == [
        ("a", 1000, 1000, 100),
        ("b", 1000, 1000, 150),
    ]
    assert table.get_column("lower").to_list()[0] == pytest.approx(ab.wilson_interval(100, 1000)[0])
    tests = rp.significance_table(res)
    assert tests.get_column("metric").to_list() == ["recommendation_success", "user_success"]
    assert tests.get_column("difference").to_list() == pytest.approx([0.05, 0.05])
    assert tests.get_column("significant").all()
