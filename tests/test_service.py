"""The recommendation service, through FastAPI's TestClient with the lifespan running.

The run served here is hand-made (a few parquet files in a temporary project), small
enough that every expected list, count and interval below was worked out by hand.

The hand-made run ``hand`` (test window from 2022-12-16):

- catalogue: tracks 1..40; track t has artist ``100 + t % 3``; names "Track t", "Artist a"
- history: user 1 heard 1, 2 (November) and 30 (test window); user 2 heard 3; user 3 (cold)
  heard 4 in the test window only
- offline lists: user 1 ranker [10, 11, 12, 13, 14, 15]; user 2 ranker [10, 16, 17];
  user 3 top_popular [4, 1, 2, 3, 5]
- similar: 20 -> 21 .9, 10 .8, 22 .5; 21 -> 22 .7, 23 .6, 20 .1; 25 -> 26 .9, 27 .8; 1 -> 2 .9, 5 .5
- top-popular: 1, 2, 3, 4, 5, 6, 7, 8 (scores 100, 90, ..., 30)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from musicrec.candidates.base import GLOBAL_SCHEMA, SIMILAR_SCHEMA, USER_RECS_SCHEMA
from musicrec.config import Profile
from musicrec.schema import CATALOG_NAMES_SCHEMA, INTERACTIONS_SCHEMA, TRACKS_SCHEMA
from musicrec.service import ab, create_app, loadtest
from musicrec.service.blending import Ranked, blend, count_sources, online_slots, served_by
from musicrec.service.events import EventStore, to_micros
from musicrec.service.settings import BlendingConfig, ExperimentConfig, ServiceConfig

RUN = "hand"
TOKEN = "test-token"
ADMIN = {"X-Admin-Token": TOKEN}
EXPERIMENT = {
    "name": "exp",
    "salt": "s1",
    "success_window_hours": 24,
    "variants": [
        {"name": "final", "share": 0.5},
        {"name": "offline_only", "share": 0.5, "blending": {"strategy": "offline"}},
    ],
}


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def write_run(root: Path, run: str = RUN) -> Path:
    data, outputs = root / "data" / run, root / "outputs" / run
    (outputs / "candidates").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    tracks = list(range(1, 41))
    pl.DataFrame(
        {
            "track_id": tracks,
            "albums": [[] for _ in tracks],
            "artists": [[100 + t % 3] for t in tracks],
            "genres": [[] for _ in tracks],
        },
        schema=TRACKS_SCHEMA,
    ).write_parquet(data / "tracks.parquet")
    pl.DataFrame(
        {
            "id": tracks + [100, 101, 102],
            "type": ["track"] * 40 + ["artist"] * 3,
            "name": [f"Track {t}" for t in tracks] + ["Artist 100", "Artist 101", "Artist 102"],
        },
        schema=CATALOG_NAMES_SCHEMA,
    ).write_parquet(data / "catalog_names.parquet")
    nov, dec = dt.datetime(2022, 11, 1), dt.datetime(2022, 12, 20)
    pl.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 3],
            "track_id": [1, 2, 30, 3, 4],
            "started_at": [nov, nov, dec, nov, dec],
            "track_seq": [1, 2, 3, 1, 1],
            "weight": [1.0] * 5,
        },
        schema=INTERACTIONS_SCHEMA,
    ).write_parquet(data / "interactions.parquet")
    (data / "split.json").write_text(json.dumps({"label_start": "2022-12-01", "test_start": "2022-12-16"}))
    recs = pl.DataFrame(
        {
            "user_id": [1] * 6 + [2] * 3 + [3] * 5,
            "track_id": [10, 11, 12, 13, 14, 15, 10, 16, 17, 4, 1, 2, 3, 5],
            "score": [6.0, 5, 4, 3, 2, 1, 3, 2, 1, 5, 4, 3, 2, 1],
            "rank": [1, 2, 3, 4, 5, 6, 1, 2, 3, 1, 2, 3, 4, 5],
        },
        schema=USER_RECS_SCHEMA,
    )
    recs.with_columns(source=pl.Series(["final"] * 9 + ["top_popular"] * 5)).write_parquet(
        outputs / "recommendations.parquet"
    )
    pl.DataFrame(
        {
            "track_id": [20, 20, 20, 21, 21, 21, 25, 25, 1, 1],
            "similar_track_id": [21, 10, 22, 22, 23, 20, 26, 27, 2, 5],
            "score": [0.9, 0.8, 0.5, 0.7, 0.6, 0.1, 0.9, 0.8, 0.9, 0.5],
            "rank": [1, 2, 3, 1, 2, 3, 1, 2, 1, 2],
        },
        schema=SIMILAR_SCHEMA,
    ).write_parquet(outputs / "candidates" / "similar.parquet")
    pl.DataFrame(
        {
            "track_id": [1, 2, 3, 4, 5, 6, 7, 8],
            "score": [100.0, 90, 80, 70, 60, 50, 40, 30],
            "rank": list(range(1, 9)),
        },
        schema=GLOBAL_SCHEMA,
    ).write_parquet(outputs / "candidates" / "top_popular.parquet")
    return root


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    return write_run(tmp_path_factory.mktemp("project"))


def make_app(root: Path, db: Path, token: str | None = TOKEN, **config):
    return create_app(
        Profile(run_name=RUN),
        root=root,
        db_path=db,
        admin_token=token,
        config=ServiceConfig.model_validate(config),
    )


@pytest.fixture
def client(run_root, tmp_path):
    with TestClient(make_app(run_root, tmp_path / "events.sqlite")) as c:
        yield c


def ids(response) -> list[int]:
    return [t["track_id"] for t in response.json()["tracks"]]


def post(client, user, track, when=None):
    body = {"user_id": user, "track_id": track}
    if when is not None:
        body["timestamp"] = when.isoformat()
    response = client.post("/events", json=body)
    assert response.status_code == 201, response.text
    return response


# blending, pure ------------------------------------------------------------------------------


def test_online_slots_by_hand():
    assert online_slots(10, 0.3) == [4, 7, 10]
    assert online_slots(6, 0.5) == [2, 4, 6]
    assert online_slots(4, 1.0) == [1, 2, 3, 4]
    assert online_slots(5, 0.0) == []
    assert online_slots(9, 1 / 3) == [3, 6, 9]


OFFLINE = Ranked.of([10, 11, 12, 13, 14, 15], [6, 5, 4, 3, 2, 1], "final")
# user 1's online picks from events 25 then 20: 21 .9, 26 .9, 10 .8, 27 .8, 22 .5
ONLINE = Ranked.of([21, 26, 10, 27, 22], [0.9, 0.9, 0.8, 0.8, 0.5], "online_i2i")
POPULAR = Ranked.of([1, 2, 3, 4, 5], [100, 90, 80, 70, 60], "top_popular")


def test_interleave_order_and_dedup():
    picks = blend(OFFLINE, ONLINE, POPULAR, 10, heard=[1, 2, 20, 25], config=BlendingConfig(online_share=0.3))
    # slots 4, 7, 10 online; the offline list runs out after slot 8, so online goes on;
    # its 10 is already placed (slot 1) and is skipped
    assert [p.track_id for p in picks] == [10, 11, 12, 21, 13, 14, 26, 15, 27, 22]
    on, off = "online_i2i", "final"
    assert [p.source for p in picks] == [off, off, off, on, off, off, on, off, on, on]
    assert picks[3].score == pytest.approx(0.9) and picks[0].score == 6
    assert count_sources(picks) == {"final": 6, "online_i2i": 4, "top_popular": 0}
    assert served_by(count_sources(picks)) == "online_blended"


def test_interleave_removes_heard_and_repeats_then_fills_from_popular():
    offline = Ranked.of([10, 11, 10, 12], source="final")  # 10 twice
    online = Ranked.of([11, 30, 31], source="online_i2i")  # 11 also offline
    picks = blend(offline, online, POPULAR, 8, heard=[12, 31, 2], config=BlendingConfig(online_share=0.5))
    # offline clean: 10, 11; online clean: 11, 30. Slot 1 offline 10, slot 2 online 11,
    # slot 3 offline 11 (placed: skip; the list is out), online 30, then popular 1, 3, 4, 5
    assert [p.track_id for p in picks] == [10, 11, 30, 1, 3, 4, 5]
    assert [p.source for p in picks] == ["final", "online_i2i", "online_i2i"] + ["top_popular"] * 4


def test_blend_share_extremes_offline_strategy_and_short_k():
    assert [
        p.track_id for p in blend(OFFLINE, ONLINE, POPULAR, 3, config=BlendingConfig(online_share=1.0))
    ] == [21, 26, 10]
    assert [
        p.track_id for p in blend(OFFLINE, ONLINE, POPULAR, 3, config=BlendingConfig(online_share=0.0))
    ] == [10, 11, 12]
    only = blend(OFFLINE, ONLINE, POPULAR, 8, config=BlendingConfig(strategy="offline", online_share=1.0))
    assert [p.track_id for p in only] == [10, 11, 12, 13, 14, 15, 1, 2]
    assert blend(OFFLINE, ONLINE, POPULAR, 0) == []
    empty = Ranked.empty("final")
    assert [p.track_id for p in blend(empty, Ranked.empty("online_i2i"), POPULAR, 3, heard=[1])] == [2, 3, 4]
    # fewer unheard tracks than k: a shorter list, no repeats
    assert [p.track_id for p in blend(empty, empty, POPULAR, 10, heard=[1, 2])] == [3, 4, 5]


def test_rrf_by_hand():
    picks = blend(OFFLINE, ONLINE, POPULAR, 10, heard=[1, 2], config=BlendingConfig(strategy="rrf", rrf_k=60))
    # 10: 1/61 + 1/63; 21: 1/61; 11 and 26: 1/62 (tie: 11 has an offline rank); 12: 1/63;
    # 13 and 27: 1/64; 14 and 22: 1/65; 15: 1/66
    assert [p.track_id for p in picks] == [10, 21, 11, 26, 12, 13, 27, 14, 22, 15]
    assert picks[0].score == pytest.approx(1 / 61 + 1 / 63)
    assert picks[0].source == "final" and picks[1].source == "online_i2i"
    weighted = blend(OFFLINE, ONLINE, POPULAR, 2, config=BlendingConfig(strategy="rrf", online_weight=2.0))
    # online weight 2: 10 has 1/61 + 2/63 = 0.04814, 21 has 2/61 = 0.03279, 26 has 2/62
    assert [p.track_id for p in weighted] == [10, 21]
    assert weighted[0].source == "online_i2i"  # 2/63 > 1/61


# settings --------------------------------------------------------------------------------------


def test_config_defaults_and_validation():
    cfg = ServiceConfig()
    assert (cfg.host, cfg.port, cfg.blending.strategy, cfg.blending.online_share, cfg.max_k) == (
        "127.0.0.1",
        8000,
        "interleave",
        0.3,
        100,
    )
    cfg = ServiceConfig.model_validate({"experiment": EXPERIMENT})
    assert cfg.blending_for("offline_only").strategy == "offline"
    assert cfg.blending_for("final") == cfg.blending
    bad_shares = {**EXPERIMENT, "variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.6}]}
    with pytest.raises(ValidationError, match="add up to 1"):
        ServiceConfig.model_validate({"experiment": bad_shares})
    bad_key = {**EXPERIMENT, "variants": [{"name": "a", "share": 1.0, "blending": {"stratgy": "rrf"}}]}
    with pytest.raises(ValidationError, match="stratgy"):
        ServiceConfig.model_validate({"experiment": bad_key})
    with pytest.raises(ValidationError, match="blendng"):
        ServiceConfig.model_validate({"blendng": {}})  # a misspelt key
    with pytest.raises(ValidationError, match="default_k"):
        ServiceConfig(default_k=20, max_k=10)


# endpoints --------------------------------------------------------------------------------------


def test_health_ready_and_fallback_to_top_popular(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["run"] == RUN and ready.json()["users_with_lists"] == 3
    r = client.get("/recommendations/9", params={"k": 5})  # no list, no history, no events
    assert r.status_code == 200
    body = r.json()
    assert ids(r) == [1, 2, 3, 4, 5]
    assert body["sources"] == {"final": 0, "online_i2i": 0, "top_popular": 5}
    assert body["served_by"] == "top_popular" and body["experiment"] is None and body["variant"] is None
    assert [t["score"] for t in body["tracks"]] == [100, 90, 80, 70, 60]


def test_personal_list_short_list_and_cold_list(client):
    r = client.get("/recommendations/1", params={"k": 4})
    assert ids(r) == [10, 11, 12, 13] and r.json()["served_by"] == "final"
    # the default k (10): six of the ranker, then top-popular without the heard 1 and 2
    assert ids(client.get("/recommendations/1")) == [10, 11, 12, 13, 14, 15, 3, 4, 5, 6]
    # user 2: three tracks, then top-popular without the heard 3
    assert ids(client.get("/recommendations/2", params={"k": 5})) == [10, 16, 17, 1, 2]
    # user 3 (cold): the run's top-popular list; the test-window listen of 4 is not heard (heard: fit)
    r = client.get("/recommendations/3", params={"k": 3})
    assert ids(r) == [4, 1, 2] and r.json()["served_by"] == "top_popular"


def test_heard_all_removes_the_test_window_too(run_root, tmp_path):
    with TestClient(make_app(run_root, tmp_path / "e.sqlite", heard="all")) as c:
        assert ids(c.get("/recommendations/3", params={"k": 3})) == [1, 2, 3]


def test_disliked_tracks_are_never_offered(tmp_path):
    """A source's disliked pairs (Yambda) leave the offline list, the online picks and the
    top-popular fill; with ``heard: fit`` only the dislikes before the test window count."""
    root = write_run(tmp_path / "project")
    pl.DataFrame(
        {
            "user_id": [1, 1, 2],
            "track_id": [11, 21, 16],
            "disliked_at": [dt.datetime(2022, 11, 5), dt.datetime(2022, 11, 6), dt.datetime(2022, 12, 20)],
        },
        schema={"user_id": pl.Int32, "track_id": pl.Int32, "disliked_at": pl.Datetime("ns")},
    ).write_parquet(root / "data" / RUN / "disliked_pairs.parquet")
    with TestClient(make_app(root, tmp_path / "e.sqlite")) as c:
        assert ids(c.get("/recommendations/1", params={"k": 4})) == [10, 12, 13, 14]
        post(c, 1, 20, utc(2022, 12, 20, 10))  # its similar tracks: 21 (disliked), 10, 22
        assert 21 not in ids(c.get("/recommendations/1", params={"k": 10}))
        # user 2's dislike of 16 falls in the test window: not known at the fit's end
        assert ids(c.get("/recommendations/2", params={"k": 3})) == [10, 16, 17]
    with TestClient(make_app(root, tmp_path / "f.sqlite", heard="all")) as c:
        assert ids(c.get("/recommendations/2", params={"k": 3})) == [10, 17, 1]


def test_online_blending_from_events(client):
    post(client, 1, 20, utc(2022, 12, 20, 10))
    post(client, 1, 25, utc(2022, 12, 20, 11))
    r = client.get("/recommendations/1", params={"k": 10})
    # online picks (recent 25, 20): 21, 26 (.9), 10, 27 (.8), 22 (.5); interleave 0.3: slots 4, 7, 10
    assert ids(r) == [10, 11, 12, 21, 13, 14, 26, 15, 27, 22]
    assert r.json()["sources"] == {"final": 6, "online_i2i": 4, "top_popular": 0}
    assert r.json()["served_by"] == "online_blended"
    # replaying at a time before the second event: only 20 counts (21 .9, 10 .8, 22 .5)
    early = client.get("/recommendations/1", params={"k": 10, "at": "2022-12-20T10:30:00"}, headers=ADMIN)
    assert ids(early) == [10, 11, 12, 21, 13, 14, 22, 15, 3, 4]
    assert early.json()["served_at"].startswith("2022-12-20T10:30:00")


def test_events_are_heard(client):
    post(client, 2, 16)  # 16 has no similar list: no online pick, but it is heard now
    r = client.get("/recommendations/2", params={"k": 5})
    assert ids(r) == [10, 17, 1, 2, 4] and r.json()["served_by"] == "final"


def test_names(client):
    r = client.get("/recommendations/1", params={"k": 2, "names": "true"})
    assert [(t["track"], t["artist"]) for t in r.json()["tracks"]] == [
        ("Track 10", "Artist 101"),
        ("Track 11", "Artist 102"),
    ]
    assert "track" not in client.get("/recommendations/1", params={"k": 2}).json()["tracks"][0]
    s = client.get("/similar/20", params={"k": 2, "names": True}).json()
    assert s["similar"][0] == {
        "track_id": 21,
        "score": pytest.approx(0.9),
        "track": "Track 21",
        "artist": "Artist 100",
    }


@pytest.mark.parametrize(
    "url",
    [
        "/recommendations/abc",
        "/recommendations/1.5",
        "/recommendations/-1",
        f"/recommendations/{2**31}",
        "/recommendations/1?k=0",
        "/recommendations/1?k=101",
        "/recommendations/1?k=ten",
        "/recommendations/1?names=maybe",
        "/recommendations/1?at=yesterday",
        "/events/abc",
        "/events/1?k=0",
        "/events/1?k=1001",
        "/similar/abc",
        "/similar/20?k=0",
        "/similar/20?k=101",
        "/ab/bad%20name/results",
        "/ab/exp/results?window_hours=0",
    ],
)
def test_bad_query_is_a_4xx_with_a_message(client, url):
    r = client.get(url)
    assert r.status_code == 422, (url, r.status_code, r.text)
    assert r.json()["detail"]


def test_similar(client):
    r = client.get("/similar/20", params={"k": 2})
    assert r.status_code == 200
    assert [(s["track_id"], round(s["score"], 3)) for s in r.json()["similar"]] == [(21, 0.9), (10, 0.8)]
    assert client.get("/similar/30").json() == {"track_id": 30, "similar": []}  # in the catalogue, no list
    missing = client.get("/similar/999")
    assert missing.status_code == 404 and "999" in missing.json()["detail"]


def test_post_and_get_events(client):
    r = client.post("/events", json={"user_id": 5, "track_id": 7, "timestamp": "2022-12-20T08:00:00"})
    assert r.status_code == 201 and r.json()["stored"] == 1
    r = client.post(
        "/events",
        json=[
            {"user_id": 5, "track_id": 8, "timestamp": "2022-12-20T09:00:00Z"},
            {"user_id": 5, "track_id": 9, "timestamp": "2022-12-20T07:00:00+00:00"},
            {"user_id": 6, "track_id": 9},
        ],
    )
    assert r.status_code == 201 and r.json()["stored"] == 3 and len(set(r.json()["ids"])) == 3
    events = client.get("/events/5").json()["events"]
    assert [e["track_id"] for e in events] == [8, 7, 9]  # newest first by the listen's time
    assert events[0]["timestamp"].startswith("2022-12-20T09:00:00")
    assert [e["track_id"] for e in client.get("/events/5", params={"k": 2}).json()["events"]] == [8, 7]
    assert client.get("/events/77").json() == {"user_id": 77, "events": []}


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": 1, "track_id": 999},  # unknown track
        [{"user_id": 1, "track_id": 5}, {"user_id": 1, "track_id": 999}],  # all or nothing
        {"user_id": "x", "track_id": 5},
        {"user_id": 1.5, "track_id": 5},
        {"user_id": -1, "track_id": 5},
        {"user_id": 1},
        {"user_id": 1, "track_id": 5, "extra": 1},
        {"user_id": 1, "track_id": 5, "timestamp": "soon"},
        [],
        "text",
        5,
    ],
)
def test_bad_events_are_refused_and_nothing_stored(client, body):
    r = client.post("/events", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    assert client.get("/stats").json()["events_in_store"] == 0


def test_malformed_json_is_a_4xx(client):
    r = client.post("/events", content=b'{"user_id": 1,', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"]
    assert "999" in client.post("/events", json={"user_id": 1, "track_id": 999}).json()["detail"]


def test_stats_count_sources_errors_and_events(client):
    client.get("/recommendations/9")  # top-popular fallback
    client.get("/recommendations/3")  # the cold user's top-popular list
    client.get("/recommendations/1")  # personal
    post(client, 1, 20)
    client.get("/recommendations/1")  # online blended
    client.get("/recommendations/abc")  # client error
    client.get("/similar/999")  # client error
    stats = client.get("/stats").json()
    assert stats["recommendations"]["by_source"] == {"final": 1, "online_blended": 1, "top_popular": 2}
    assert stats["recommendations"]["total"] == 4
    assert stats["errors"] == {"client": 2, "server": 0}
    assert stats["events_stored"] == 1 and stats["events_in_store"] == 1
    assert stats["requests"] == 7  # not yet this /stats request: counted once it has answered
    assert stats["artefacts"]["run"] == RUN


# store ----------------------------------------------------------------------------------------


def test_events_and_log_survive_a_restart(run_root, tmp_path):
    db = tmp_path / "store" / "events.sqlite"
    with TestClient(make_app(run_root, db, experiment=EXPERIMENT)) as c:
        post(c, 1, 20, utc(2022, 12, 20, 10))
        post(c, 1, 21, utc(2022, 12, 20, 11))
        rec_id = c.get("/recommendations/4").json()["recommendation_id"]
    with TestClient(make_app(run_root, db)) as c:  # no experiment now: everyone gets the default blending
        assert [e["track_id"] for e in c.get("/events/1").json()["events"]] == [21, 20]
        results = c.get("/ab/exp/results").json()  # logged, no longer configured
        assert results["configured"] is False and results["variants"][0]["recommendations"] == 1
        # online picks from 21 then 20: 22 (.7 + .5), 10 (.8), 23 (.6); k = 4: slot 4 is online
        assert ids(c.get("/recommendations/1", params={"k": 4})) == [10, 11, 12, 22]
    assert [r.rec_id for r in EventStore(db).recommendations("exp")] == [rec_id]


def test_concurrent_posts_through_the_app_are_all_stored(client):
    def worker(w: int) -> list[int]:
        return [
            client.post("/events", json={"user_id": 1000 + w, "track_id": 1 + i % 40}).status_code
            for i in range(25)
        ]

    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(worker, range(8)) for s in result]
    assert statuses == [201] * 200
    assert client.get("/stats").json()["events_in_store"] == 200
    assert all(
        len(client.get(f"/events/{1000 + w}", params={"k": 100}).json()["events"]) == 25 for w in range(8)
    )


def test_buffered_log_is_written_by_the_flusher_on_reads_and_on_close(tmp_path):
    db = tmp_path / "buffered.sqlite"
    store = EventStore(db, log_flush_ms=50)
    other = sqlite3.connect(db)  # another process's view: only what has been committed

    def committed() -> int:
        return other.execute("SELECT count(*) FROM recommendations").fetchone()[0]

    store.log_recommendation("a", 1, 7, "exp", "x", [1, 2], 2)
    deadline = time.monotonic() + 10
    while committed() == 0 and time.monotonic() < deadline:  # the flusher, with no read asking
        time.sleep(0.01)
    assert committed() == 1
    store._closing.set()  # the flusher stops: what follows stays buffered until a read or close
    store._flusher.join()
    store.log_recommendation("b", 2, 7, "exp", "y", [3], 1)
    assert committed() == 1
    assert [r.rec_id for r in store.recommendations("exp")] == ["a", "b"]  # a read flushes first
    store.log_recommendation("c", 3, 8, "exp", "y", [4], 1)
    store.close()
    assert committed() == 3
    assert [r.rec_id for r in EventStore(db).recommendations()] == ["a", "b", "c"]


def test_a_failed_flush_keeps_the_lists_for_the_next(tmp_path, monkeypatch):
    store = EventStore(tmp_path / "s.sqlite", log_flush_ms=60_000)  # the flusher never fires in this test
    store.log_recommendation("a", 1, 7, None, None, [1], 1)
    store.log_recommendation("b", 2, 7, None, None, [2], 1)

    def locked():
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "transaction", locked)
    with pytest.raises(sqlite3.OperationalError):
        store.flush()
    monkeypatch.undo()
    store.log_recommendation("c", 3, 7, None, None, [3], 1)
    assert store.flush() == 3
    assert [r.rec_id for r in store.recommendations()] == ["a", "b", "c"]
    store.close()


WRITER = """
import sys, time
from pathlib import Path
from musicrec.service.events import EventStore
store = EventStore(sys.argv[1], busy_timeout_ms=30000)
w, go = int(sys.argv[2]), Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
for i in range(N):
    store.add_events([(w, i, None)])
"""
N_WRITES = 1000


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    db, go = tmp_path / "shared.sqlite", tmp_path / "go"
    EventStore(db).close()
    code = WRITER.replace("range(N)", f"range({N_WRITES})")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(db), str(w), str(go)], stdout=subprocess.PIPE, text=True
        )
        for w in range(3)
    ]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
    store = EventStore(db)
    go.touch()  # every writer starts now
    for i in range(N_WRITES):  # and this process writes at the same time
        store.add_events([(9, i, None)])
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert store.count_events() == 4 * N_WRITES
    con = store.connection()
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(con.execute("SELECT user_id, count(DISTINCT track_id) FROM events GROUP BY user_id")) == {
        0: N_WRITES,
        1: N_WRITES,
        2: N_WRITES,
        9: N_WRITES,
    }
    # the writers overlapped in time: each one's span of arrival times meets the others'
    spans = con.execute("SELECT user_id, min(received_at), max(received_at) FROM events GROUP BY user_id")
    spans = {u: (lo, hi) for u, lo, hi in spans}
    assert max(lo for lo, _ in spans.values()) < min(hi for _, hi in spans.values())


# readiness and admin -----------------------------------------------------------------------------


def test_not_ready_until_loaded_then_reload_swaps_in(tmp_path):
    root = tmp_path / "empty"
    with TestClient(make_app(root, tmp_path / "e.sqlite")) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and "recommendations.parquet" in r.json()["detail"]
        assert c.get("/recommendations/1").status_code == 503
        assert c.post("/events", json={"user_id": 1, "track_id": 1}).status_code == 503
        failed = c.post("/admin/reload", headers={"X-Admin-Token": TOKEN})
        assert failed.status_code == 503 and "still serving version None" in failed.json()["detail"]
        write_run(root)
        r = c.post("/admin/reload", headers={"X-Admin-Token": TOKEN})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert c.get("/ready").status_code == 200
        assert ids(c.get("/recommendations/1", params={"k": 2})) == [10, 11]


def test_background_load(run_root, tmp_path):
    app = create_app(
        Profile(run_name=RUN), root=run_root, db_path=tmp_path / "e.sqlite", background_load=True
    )
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        deadline = time.time() + 20
        while c.get("/ready").status_code == 503 and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/ready").status_code == 200


def test_reload_while_serving(client):
    statuses, versions = [], set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            r = client.get("/recommendations/1", params={"k": 3})
            statuses.append(r.status_code)
            versions.add(r.json().get("artefacts_version"))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(3):
        assert client.post("/admin/reload", headers={"X-Admin-Token": TOKEN}).status_code == 200
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}
    assert client.get("/ready").json()["version"] == 4 and versions <= {1, 2, 3, 4}
    assert client.get("/stats").json()["reloads"] == 3


def test_a_reload_asked_of_one_worker_reaches_the_others(run_root, tmp_path):
    """Workers share the store: a reload asked of one is seen by the others' watchers."""
    db = tmp_path / "shared.sqlite"
    with (
        TestClient(make_app(run_root, db, reload_poll_seconds=0.05)) as asked,
        TestClient(make_app(run_root, db, reload_poll_seconds=0.05)) as other,
        TestClient(make_app(run_root, db, reload_poll_seconds=0)) as deaf,
    ):
        assert [c.get("/ready").json()["version"] for c in (asked, other, deaf)] == [1, 1, 1]
        assert asked.post("/admin/reload", headers={"X-Admin-Token": TOKEN}).json()["version"] == 2
        deadline = time.monotonic() + 10
        while other.get("/ready").json()["version"] == 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert other.get("/ready").json()["version"] == 2
        assert other.get("/stats").json()["reloads"] == 1
        time.sleep(0.3)  # several polls: the worker asked does not load a second time, nor the other
        assert [c.get("/ready").json()["version"] for c in (asked, other, deaf)] == [2, 2, 1]
    with TestClient(make_app(run_root, db, reload_poll_seconds=0.05)) as restarted:
        time.sleep(0.3)  # a new worker starts at the store's generation: nothing to follow
        assert restarted.get("/ready").json()["version"] == 1


def test_admin_refused_without_the_token(run_root, tmp_path, monkeypatch):
    monkeypatch.delenv("MUSICREC_ADMIN_TOKEN", raising=False)
    with TestClient(make_app(run_root, tmp_path / "a.sqlite")) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"X-Admin-Token": "nope"}).status_code == 403
        assert c.delete("/ab/exp/results").status_code == 401
        assert c.delete("/ab/exp/results", headers={"X-Admin-Token": "nope"}).status_code == 403
        assert c.post("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    with TestClient(make_app(run_root, tmp_path / "b.sqlite", token=None)) as c:
        r = c.post("/admin/reload", headers={"X-Admin-Token": TOKEN})
        assert r.status_code == 403 and "disabled" in r.json()["detail"]
        assert c.delete("/ab/exp/results", headers={"X-Admin-Token": ""}).status_code == 403


def test_admin_token_from_the_environment(run_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSICREC_ADMIN_TOKEN", "from-env")
    app = create_app(Profile(run_name=RUN), root=run_root, db_path=tmp_path / "e.sqlite")
    with TestClient(app) as c:
        assert c.post("/admin/reload", headers={"X-Admin-Token": "from-env"}).status_code == 200
        assert c.post("/admin/reload", headers={"X-Admin-Token": TOKEN}).status_code == 403


# A/B -----------------------------------------------------------------------------------------------


def test_bucket_is_sha256_of_salt_and_user():
    import hashlib

    digest = hashlib.sha256(b"s1:42").digest()
    assert ab.bucket(42, "s1") == int.from_bytes(digest[:8], "big") / 2**64


def test_assignment_is_stable_and_follows_the_shares():
    exp = ExperimentConfig(
        name="e",
        salt="pepper",
        variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.3}, {"name": "c", "share": 0.2}],
    )
    users = range(20_000)
    first = [ab.assign(u, exp) for u in users]
    assert first == [ab.assign(u, exp.model_copy()) for u in users]
    shares = {v: first.count(v) / len(first) for v in "abc"}
    assert shares == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2}, abs=0.02)
    other = ExperimentConfig(name="e", salt="salt2", variants=exp.variants)
    moved = sum(a != b for a, b in zip(first, (ab.assign(u, other) for u in users), strict=True)) / len(first)
    assert 0.5 < moved < 0.7  # a new salt reshuffles: 1 - (.25 + .09 + .04) = 0.62 expected


def test_variants_change_the_blending(run_root, tmp_path):
    exp = ExperimentConfig.model_validate(EXPERIMENT)
    by_variant = {}
    for user in range(100, 200):
        by_variant.setdefault(ab.assign(user, exp), user)
    with TestClient(make_app(run_root, tmp_path / "e.sqlite", experiment=EXPERIMENT)) as c:
        for variant, user in by_variant.items():
            post(c, user, 20)
            r = c.get(f"/recommendations/{user}", params={"k": 3}).json()
            assert (r["experiment"], r["variant"]) == ("exp", variant)
            # offline_only: no online picks, top-popular fills; final: online picks 21, 10, 22
            expected = [1, 2, 3] if variant == "offline_only" else [21, 10, 22]
            assert [t["track_id"] for t in r["tracks"]] == expected
        assert c.get("/stats").json()["recommendations"]["by_variant"] == {"final": 1, "offline_only": 1}


def test_every_response_is_logged(run_root, tmp_path):
    db = tmp_path / "e.sqlite"
    with TestClient(make_app(run_root, db, experiment=EXPERIMENT, replay_mode=True)) as c:
        r = c.get("/recommendations/1", params={"k": 3, "at": "2022-12-20T00:00:00"}).json()
    (logged,) = EventStore(db).recommendations()
    assert (logged.rec_id, logged.user_id, logged.experiment, logged.variant, logged.tracks) == (
        r["recommendation_id"],
        1,
        "exp",
        r["variant"],
        [10, 11, 12],
    )
    assert logged.served_at == to_micros(dt.datetime(2022, 12, 20))


def hand_log(store: EventStore) -> None:
    """Variant final: 1 success of 4 lists, 1 of 3 users; offline_only: 2 of 4, 2 of 3 users."""
    day = dt.datetime(2022, 12, 20)
    h = dt.timedelta(hours=1)
    log = [
        ("a1", 1, "final", day, [10, 11]),
        ("a2", 1, "final", day + 24 * h, [12]),
        ("a3", 2, "final", day, [13]),
        ("a4", 3, "final", day, [14]),
        ("b1", 5, "offline_only", day, [10]),
        ("b2", 6, "offline_only", day, [11]),
        ("b3", 6, "offline_only", day + 48 * h, [12]),
        ("b4", 7, "offline_only", day, [13]),
    ]
    for rec_id, user, variant, served, tracks in log:
        store.log_recommendation(rec_id, to_micros(served), user, "exp", variant, tracks, len(tracks))
    store.add_events(
        [
            (1, 11, to_micros(day + 5 * h)),  # a1: success, 5 h after serving
            (1, 12, to_micros(day + 49 * h)),  # a2: 25 h after serving: outside the window
            (2, 13, to_micros(day - 1 * h)),  # a3: before serving
            (4, 14, to_micros(day + 1 * h)),  # a4: another user's listen
            (5, 10, to_micros(day)),  # b1: at the moment of serving: counts
            (6, 11, to_micros(day + 24 * h)),  # b2: exactly at the end of the window: counts
            (7, 99, to_micros(day + 1 * h)),  # b4: a track not in the list
        ]
    )


def test_ab_results_on_a_hand_made_log(run_root, tmp_path):
    db = tmp_path / "e.sqlite"
    # a replay's log: the listens' own timestamps decide the outcomes
    with TestClient(make_app(run_root, db, experiment=EXPERIMENT, replay_mode=True)) as c:
        hand_log(c.app.state.service.store)
        r = c.get("/ab/exp/results")
        assert r.status_code == 200
        res = r.json()
        final, offline = res["variants"]
        assert (
            final["variant"],
            final["recommendations"],
            final["successes"],
            final["users"],
            final["users_with_success"],
        ) == ("final", 4, 1, 3, 1)
        assert (
            offline["variant"],
            offline["recommendations"],
            offline["successes"],
            offline["users"],
            offline["users_with_success"],
        ) == ("offline_only", 4, 2, 3, 2)
        assert final["success_rate"] == 0.25 and offline["success_rate"] == 0.5
        # Wilson, 1 of 4, z = 1.959964: centre 0.372473, half-width 0.326885
        assert final["ci"] == pytest.approx([0.045587, 0.699358], abs=1e-5)
        # Wilson, 2 of 4: centre 0.5, half-width 1.959964 / 1.960365 * sqrt(1/16 + 3.841459/64)
        assert offline["ci"] == pytest.approx([0.5 - 0.349961, 0.5 + 0.349961], abs=1e-5)
        (lists, users) = res["tests"]
        # pooled 3/8: se = sqrt(.375 * .625 * (1/4 + 1/4)) = 0.342327; z = 0.25 / se
        assert lists["metric"] == "recommendation_success" and lists["difference"] == 0.25
        assert lists["z"] == pytest.approx(0.730297, abs=1e-5)
        assert lists["p_value"] == pytest.approx(0.465209, abs=1e-5) and not lists["significant"]
        # users: 1/3 against 2/3, pooled 1/2: se = sqrt(.25 * 2/3) = 0.408248, z = 0.816497
        assert users["metric"] == "user_success" and users["z"] == pytest.approx(0.816497, abs=1e-5)
        assert users["p_value"] == pytest.approx(0.414216, abs=1e-5)
        # a one-hour window: a1 (5 h) and b2 (24 h) no longer succeed
        short = c.get("/ab/exp/results", params={"window_hours": 1}).json()["variants"]
        assert [v["successes"] for v in short] == [0, 1]
        assert c.get("/ab/other/results").status_code == 404
        assert c.delete("/ab/exp/results", headers={"X-Admin-Token": TOKEN}).json() == {
            "experiment": "exp",
            "deleted": 8,
        }
        after = c.get("/ab/exp/results").json()
        assert [v["recommendations"] for v in after["variants"]] == [0, 0]
        assert after["variants"][0]["success_rate"] is None and after["tests"][0]["z"] is None


def test_ab_replay_through_the_api(run_root, tmp_path):
    exp = ExperimentConfig.model_validate(EXPERIMENT)
    user = next(u for u in range(100, 200) if ab.assign(u, exp) == "final")
    with TestClient(make_app(run_root, tmp_path / "e.sqlite", experiment=EXPERIMENT, replay_mode=True)) as c:
        served = c.get(f"/recommendations/{user}", params={"k": 3, "at": "2022-12-20T00:00:00"}).json()
        assert [t["track_id"] for t in served["tracks"]] == [1, 2, 3]
        post(c, user, 2, utc(2022, 12, 20, 3))
        res = c.get("/ab/exp/results").json()
        final = next(v for v in res["variants"] if v["variant"] == "final")
        assert (final["recommendations"], final["successes"], final["users"]) == (1, 1, 1)
        assert c.get("/ab").json()["logged"] == {"exp": 1}


def test_wilson_and_z_test_edge_cases():
    assert ab.wilson_interval(0, 0) is None
    lo, hi = ab.wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(3.841459 / (10 + 3.841459), abs=1e-6)  # z^2 / (n + z^2)
    assert ab.two_proportion_test(0, 0, 1, 2)["z"] is None
    assert ab.two_proportion_test(5, 5, 5, 5)["p_value"] is None  # no variance
    big = ab.two_proportion_test(100, 1000, 150, 1000)
    # pooled .125: se = sqrt(.125 * .875 * .002) = 0.0147902; z = .05 / se = 3.380617
    assert big["z"] == pytest.approx(3.380617, abs=1e-5) and big["significant"]
    assert math.isclose(big["p_value"], math.erfc(3.380617 / math.sqrt(2)), rel_tol=1e-4)


# running ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def live_service(run_root, tmp_path, *extra: str, profile: str = "run_name: hand\n"):
    """``python -m musicrec.service`` over the hand-made run on a free loopback port; yields its URL."""
    params = tmp_path / "params" / "hand.yaml"
    params.parent.mkdir(exist_ok=True)
    params.write_text(profile)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "musicrec.service",
            "--params",
            str(params),
            "--root",
            str(run_root),
            "--port",
            str(port),
            "--db-path",
            str(tmp_path / "e.sqlite"),
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, ready = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{url}/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, proc.poll()
        yield url, params
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_python_m_musicrec_service_binds_to_loopback(run_root, tmp_path):
    with live_service(run_root, tmp_path) as (url, _):
        assert url.startswith("http://127.0.0.1:")
        r = httpx.get(f"{url}/recommendations/1", params={"k": 2})
        assert [t["track_id"] for t in r.json()["tracks"]] == [10, 11]


def test_a_request_head_above_the_limit_gets_431_and_the_service_stays_up(run_root, tmp_path):
    profile = "run_name: hand\nservice:\n  max_head_bytes: 4096\n"
    with live_service(run_root, tmp_path, profile=profile) as (url, _):
        port = int(url.rsplit(":", 1)[1])

        def ask(header_bytes: int) -> bytes:
            head = f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * header_bytes}\r\n\r\n"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(head.encode())
                return s.recv(4096)

        assert ask(8_000).startswith(b"HTTP/1.1 431 ") and b"request head above 4,096 bytes" in ask(8_000)
        assert ask(3_000).startswith(b"HTTP/1.1 200 ")  # under the limit: served
        assert httpx.get(f"{url}/health").status_code == 200


@pytest.mark.parametrize("client, workers", [("python", 1), ("python", 2), ("wrk", 2)])
def test_load_generator_counts_requests_and_every_event_is_stored(run_root, tmp_path, client, workers):
    if client == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian's package wrk); the Python client is tested instead")
    with live_service(run_root, tmp_path, "--workers", str(workers)) as (url, params):
        out = tmp_path / "bench.json"
        code = loadtest.main(
            [
                "--params",
                str(params),
                "--root",
                str(run_root),
                "--url",
                url,
                "--seconds",
                "2",
                "--concurrency",
                "4",
                "--client",
                client,
                "--out",
                str(out),
            ]
        )
        result = json.loads(out.read_text())
    assert code == 0 and result["client"] == client
    assert result["requests"] > 0 and result["errors"] == 0 and result["failures"] == {}
    assert result["events_acknowledged"] > 0 and result["events_lost"] == 0
    # every acknowledged post is in the store; wrk may stop after the service stored a post (one per
    # connection at most), the Python client waits for every answer
    slack = 4 if client == "wrk" else 0
    assert result["events_acknowledged"] <= result["events_stored"] <= result["events_acknowledged"] + slack
    lat = result["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_wrk_output_is_read_with_its_errors():
    output = "\n".join(
        [
            "Running 2s test @ http://127.0.0.1:8000",
            "  Socket errors: connect 0, read 2, write 0, timeout 1",
            "Requests/sec:   1000.00",
            "musicrec created=5 ok=10 failed=3 last_failure=503",
            "musicrec p50=1.500",
            "musicrec p90=2.000",
            "musicrec p99=9.250",
            "musicrec max=12.000 requests=18 seconds=2.000",
        ]
    )
    result = loadtest._wrk_result(output, "http://x", 4, loadtest.DEFAULT_MIX, events_stored=4)
    assert (result["requests"], result["requests_per_second"], result["errors"]) == (18, 9.0, 6)
    assert result["failures"] == {"read": 2, "timeout": 1, "non-2xx (last: 503)": 3}
    assert result["latency_ms"] == {"p50": 1.5, "p90": 2.0, "p99": 9.25, "max": 12.0}
    assert (result["events_acknowledged"], result["events_stored"], result["events_lost"]) == (5, 4, 1)
    with pytest.raises(RuntimeError, match="wrk printed no summary"):
        loadtest._wrk_result("Running 2s test", "http://x", 4, loadtest.DEFAULT_MIX, events_stored=0)


def test_wrk_script_follows_the_mix():
    mix = {"warm": 2, "cold": 1, "online": 1, "event": 0}
    script = loadtest.wrk_script([1, 2], [900], [3], [10, 11], mix)
    assert "local warm = {1,2}" in script and "local cold = {900}" in script
    assert "local cumulative = {0.500000,0.750000,1.000000}" in script  # shares normalised: no posts at all


def test_python_m_musicrec_service_bad_profile(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "musicrec.service", "--params", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no such profile" in r.stderr


def test_artefact_arrays_are_compact(client):
    artefacts = client.app.state.service.artefacts
    assert artefacts.offline.values.dtype == np.int32 and artefacts.offline.scores.dtype == np.float32
    assert list(artefacts.offline.keys) == [1, 2, 3] and list(artefacts.offline.indptr) == [0, 6, 9, 14]
    assert list(artefacts.heard_by(1)) == [1, 2]  # 30 is in the test window


def test_openapi_lists_every_endpoint(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    assert set(r.json()["paths"]) == {
        "/health",
        "/ready",
        "/recommendations/{user_id}",
        "/events",
        "/events/{user_id}",
        "/similar/{track_id}",
        "/stats",
        "/ab",
        "/ab/{experiment}/results",
        "/admin/reload",
    }
    assert client.get("/docs").status_code == 200


def test_the_recommender_computes_lists_without_http(run_root, tmp_path):
    """The service's logic, called directly: the same lists as the endpoint, NotReady before loading."""
    from musicrec.io import RunPaths
    from musicrec.service.events import EventStore, to_micros
    from musicrec.service.recommender import NotReady, Recommender

    rec = Recommender(RunPaths(run_root, RUN), ServiceConfig(), tmp_path / "direct.sqlite", None)
    with pytest.raises(NotReady, match="still loading"):
        rec.recommend(1, 4)
    rec.load()
    with pytest.raises(NotReady, match="event store is not open"):
        rec.recommend(1, 4)
    rec.store = EventStore(tmp_path / "direct.sqlite")
    try:
        served = rec.recommend(1, 4)
        assert [p.track_id for p in served.picks] == [10, 11, 12, 13] and served.served_by == "final"
        assert served.body()["tracks"][0] == {"track_id": 10, "score": 6.0, "source": "final"}
        # an event makes online picks (20's similar tracks: 21, 10, 22); replayed before it, none
        rec.store.add_events([(1, 20, to_micros(utc(2022, 12, 20, 10)))])
        assert rec.recommend(1, 10).sources["online_i2i"] > 0
        before = rec.recommend(1, 10, at=to_micros(utc(2022, 12, 20, 9)))
        assert before.sources["online_i2i"] == 0 and before.body()["served_at"].startswith("2022-12-20T09:00")
        assert rec.stats.snapshot()["recommendations"]["total"] == 3
    finally:
        rec.store.close()


# hardening (issue 13) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-14:00", "1960-01-01T00:00:00", "2999-01-01T00:00:00+00:00"]
)
def test_event_times_outside_the_range_are_refused_by_name(client, when):
    r = client.post(
        "/events", json=[{"user_id": 77, "track_id": 10}, {"user_id": 77, "track_id": 11, "timestamp": when}]
    )
    assert r.status_code == 422 and "item 1" in r.json()["detail"] and "time range" in r.json()["detail"]
    assert client.get("/events/77").json()["events"] == [], "all or none: nothing stored"


def test_at_outside_the_range_is_a_422(client):
    r = client.get("/recommendations/5", params={"at": "0001-01-01T00:00:00+14:00"}, headers=ADMIN)
    assert r.status_code == 422 and "at outside the accepted time range" in r.json()["detail"]
    assert (
        client.get("/recommendations/5", params={"at": "2022-12-20T10:00:00"}, headers=ADMIN).status_code
        == 200
    )


def test_a_stored_extreme_time_never_breaks_a_read(client):
    store = client.app.state.service.store
    store.add_events([(77, 10, 253_402_300_799_000_000 + 14 * 3_600_000_000)])  # 9999-12-31T23:59:59-14:00
    for k in (1, 5, 20):
        r = client.get("/events/77", params={"k": k})
        assert r.status_code == 200 and r.json()["events"][0]["timestamp"].startswith("9999-12-30")
    assert client.get("/recommendations/77").status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        '{"user_id": NaN, "track_id": 1}',
        '{"user_id": 1e400, "track_id": 1}',
        '{"user_id": Infinity, "track_id": 1}',
    ],
)
def test_values_json_cannot_hold_get_a_422_not_a_500(client, raw):
    r = client.post("/events", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == "user_id"


def test_a_422_names_a_few_items_never_the_whole_body(client):
    body = [{"user_id": -1, "track_id": "x" * 300}] * 3000  # 1 MB, under the body limit
    r = client.post("/events", json=body)
    assert r.status_code == 422
    assert len(r.json()["detail"]) <= 5 and r.json()["errors"] > 5
    assert len(r.content) < 10_000, "the reply does not echo the request"


@pytest.mark.parametrize("user", ["+5", "%205", "1_000", "5%20", "0x5"])
def test_ids_are_decimal_digits(client, user):
    assert client.get(f"/recommendations/{user}").status_code == 422
    assert client.get(f"/similar/{user}").status_code == 422


def test_head_health_and_an_empty_admin_header_does_not_hide_a_bearer_token(client):
    assert client.head("/health").status_code == 200
    r = client.delete(
        "/ab/nothing/results", headers={"X-Admin-Token": "", "Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200, r.text


def test_a_body_above_the_limit_gets_413_and_the_service_stays_up(run_root, tmp_path):
    with TestClient(make_app(run_root, tmp_path / "e.sqlite", max_body_bytes=1000)) as c:
        big = [{"user_id": 1, "track_id": 10}] * 100  # about 3 kB
        r = c.post("/events", json=big)
        assert r.status_code == 413 and "1,000 bytes" in r.json()["detail"]

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b" " * 200

        assert (
            c.post("/events", content=chunks(), headers={"content-type": "application/json"}).status_code
            == 413
        )
        assert c.get("/health").status_code == 200
        assert c.post("/events", json={"user_id": 1, "track_id": 10}).status_code == 201
        assert c.get("/events/1").json()["events"][0]["track_id"] == 10


def test_a_body_that_stops_arriving_gets_408_instead_of_holding_the_connection():
    import asyncio

    from musicrec.service.app import _GuardBody

    sent, seen_by_app = [], []

    async def app(scope, receive, send):
        seen_by_app.append(await receive())  # the first chunk
        seen_by_app.append(await receive())  # the rest never comes

    chunks = [{"type": "http.request", "body": b'{"user_id": ', "more_body": True}]

    async def receive():
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)  # a body shorter than its Content-Length

    async def send(message):
        sent.append(message)

    guard = _GuardBody(app, max_bytes=1000, idle_seconds=0.05)
    scope = {"type": "http", "headers": [(b"content-length", b"100")]}
    asyncio.run(asyncio.wait_for(guard(scope, receive, send), 10))
    assert sent[0]["status"] == 408 and b"no request body byte for 0.05 s" in sent[1]["body"]
    assert seen_by_app[-1] == {"type": "http.disconnect"}  # the app stops reading


def test_a_large_batch_is_parsed_off_the_event_loop(run_root, tmp_path, monkeypatch):
    import asyncio
    import time

    import musicrec.service.routes as routes

    parse = routes.parse_events

    finished = []

    def slow_parse(raw):  # blocks whichever thread runs it, as validating 10,000 listens does
        time.sleep(0.5)
        finished.append(("parsed", None))
        return parse(raw)

    monkeypatch.setattr(routes, "parse_events", slow_parse)
    app = make_app(run_root, tmp_path / "e.sqlite")

    async def main():
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://t")
        async with app.router.lifespan_context(app), client as c:
            while (await c.get("/ready")).status_code != 200:
                await asyncio.sleep(0.05)

            async def post():
                r = await c.post("/events", json=[{"user_id": 1, "track_id": 10}] * 1000)
                finished.append(("post", r.status_code))

            async def health():
                await asyncio.sleep(0.1)  # the POST is being parsed by now
                r = await c.get("/health")
                finished.append(("health", r.status_code))

            await asyncio.gather(post(), health())

    asyncio.run(main())
    assert finished == [("health", 200), ("parsed", None), ("post", 201)]


def test_a_locked_store_is_a_503_with_retry_after_and_health_never_waits(run_root, tmp_path):
    import sqlite3
    import threading
    import time

    db = tmp_path / "locked.sqlite"
    with TestClient(make_app(run_root, db, busy_timeout_ms=3000)) as c:
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            answer = {}

            def post_one():
                answer["r"] = c.post("/events", json={"user_id": 1, "track_id": 10})

            writer = threading.Thread(target=post_one)
            writer.start()
            time.sleep(0.3)  # the POST now waits for the lock, in a thread
            start = time.perf_counter()
            assert c.get("/health").status_code == 200
            assert time.perf_counter() - start < 1.5, "/health did not wait for the 3 s lock"
            writer.join()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        r = answer["r"]
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
        assert c.post("/events", json={"user_id": 1, "track_id": 10}).status_code == 201, "free again"


def test_a_store_that_cannot_write_makes_ready_say_so(client, monkeypatch):
    import sqlite3

    store = client.app.state.service.store

    def full(rows):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "add_events", full)
    monkeypatch.setattr(store, "try_add_events", full)  # a full disk fails the inline write too
    r = client.post("/events", json={"user_id": 1, "track_id": 10})
    assert r.status_code == 503 and "disk is full" in r.json()["detail"]
    ready = client.get("/ready")
    assert ready.status_code == 503 and "cannot write" in ready.json()["detail"]
    assert "sqlite" in ready.json()["detail"], "the store's file is named"
    monkeypatch.undo()
    assert client.post("/events", json={"user_id": 1, "track_id": 10}).status_code == 201
    assert client.get("/ready").status_code == 200


def test_clients_cannot_decide_an_ab_test_outside_replay_mode(run_root, tmp_path):
    """Issue 13: 400 requests with at=2020-01-01 and events posted an hour "later" turned the verdict.
    Now at= needs the admin token, and outcomes count listens by when they arrived."""
    exp = ExperimentConfig.model_validate(EXPERIMENT)
    user = next(u for u in range(100, 200) if ab.assign(u, exp) == "final")
    with TestClient(make_app(run_root, tmp_path / "e.sqlite", experiment=EXPERIMENT)) as c:
        r = c.get(f"/recommendations/{user}", params={"k": 3, "at": "2020-01-01T00:00:00"})
        assert r.status_code == 403 and "replay feature" in r.json()["detail"]
        served = c.get(f"/recommendations/{user}", params={"k": 3}).json()  # served now
        track = served["tracks"][0]["track_id"]
        post(c, user, track, utc(2022, 12, 20, 3))  # dated in the past, received after serving
        final = next(v for v in c.get("/ab/exp/results").json()["variants"] if v["variant"] == "final")
        assert final["successes"] == 1, "counted by when it arrived: after the list was served"
    with TestClient(make_app(run_root, tmp_path / "f.sqlite", experiment=EXPERIMENT)) as c:
        post(c, user, 1, utc(2022, 12, 20, 3))  # received before the list is served
        c.get(f"/recommendations/{user}", params={"k": 3})
        final = next(v for v in c.get("/ab/exp/results").json()["variants"] if v["variant"] == "final")
        assert final["successes"] == 0, "a listen received before serving never counts, whatever its date"


def test_the_difference_interval_stays_inside_minus_one_one():
    # 1 of 10 against 10 of 10: the normal interval, 0.9 +- 1.96 * 0.0949, reaches 1.086
    out = ab.two_proportion_test(1, 10, 10, 10)
    assert out["difference"] == pytest.approx(0.9) and out["ci"][1] == 1.0
    assert out["ci"][0] == pytest.approx(0.9 - 1.959964 * (0.09 / 10) ** 0.5, abs=1e-4)


def test_a_request_reads_only_the_latest_events(tmp_path):
    store = EventStore(tmp_path / "many.sqlite")
    try:
        # track 7 heard long ago, then 3,000 listens of 100..199, newest last
        store.add_events([(5, 7, 1_000)] + [(5, 100 + i % 100, 2_000 + i) for i in range(3000)])
        every = store.user_tracks(5)
        assert every[:3] == [199, 198, 197] and 7 in every and len(every) == 101
        latest = store.user_tracks(5, latest=1000)
        assert latest == every[:100], "the same order, newest first, each track once"
        assert 7 not in latest
        assert store.user_tracks(5, until=1_500, latest=10) == [7]
    finally:
        store.close()


def test_a_worker_stops_when_its_supervisor_is_gone():
    import threading

    from musicrec.service.app import exit_with_parent

    parents = iter([41, 41, 1])  # the supervisor, twice, then init: it was killed
    stopped = threading.Event()
    watcher = exit_with_parent(41, poll_seconds=0.01, getppid=lambda: next(parents), stop=stopped.set)
    watcher.join(timeout=5)
    assert stopped.is_set() and not watcher.is_alive()


def test_a_killed_supervisor_takes_its_workers_down(tmp_path):
    """kill -9 of the uvicorn supervisor with two workers: the workers exit and the port is free."""
    import contextlib
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import os, sys, uvicorn; os.environ['SUPERVISOR'] = str(os.getpid()); "
        "uvicorn.run('tests_worker_app:app', factory=True, host='127.0.0.1', port=int(sys.argv[1]), "
        "workers=2)"
    )
    (tmp_path / "tests_worker_app.py").write_text(
        "from fastapi import FastAPI\n"
        "from musicrec.service.app import exit_with_parent\n"
        "import os\n"
        "def app():\n"
        "    exit_with_parent(int(os.environ['SUPERVISOR']), poll_seconds=0.2)\n"
        "    return FastAPI()\n"
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-c", code, str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "log", "w"),  # noqa: SIM115
    )
    workers: list = []
    try:
        log = tmp_path / "log"
        deadline = time.time() + 60
        while time.time() < deadline and log.read_text().count("Application startup complete") < 2:
            time.sleep(0.3)
        workers = [
            p
            for p in psutil.Process(supervisor.pid).children(recursive=True)
            if "spawn_main" in " ".join(p.cmdline())  # not multiprocessing's resource tracker
        ]
        assert len(workers) == 2, log.read_text()
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        gone, alive = psutil.wait_procs(workers, timeout=15)
        assert not alive, "every worker exited after its supervisor died: " + log.read_text()
    finally:  # never leave a server behind, even when the test fails
        for p in [*psutil.Process().children(recursive=True), *workers]:
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_not_ready_names_the_missing_file_without_the_machines_paths(tmp_path):
    empty = tmp_path / "nothing here"
    empty.mkdir()
    with TestClient(make_app(empty, tmp_path / "e.sqlite")) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "outputs/hand" in r.json()["detail"]
        assert str(tmp_path) not in r.json()["detail"]


def test_an_inline_write_never_waits_for_the_lock(tmp_path):
    """try_add_events stores at once when the write lock is free, and gives up at once (None) when
    another process holds it, leaving the wait to a thread; the WAL is checkpointed by others."""
    import sqlite3

    import musicrec.service.events as events

    db = tmp_path / "e.sqlite"
    store = EventStore(db, busy_timeout_ms=5000)
    assert store.try_add_events([(1, 10, None), (1, 11, None)]) == [1, 2]
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer
    try:
        assert store.try_add_events([(1, 12, None)]) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.try_add_events([(1, 12, None)]) == [3]
    assert [e.track_id for e in store.latest(1, 10)] == [12, 11, 10]
    checkpoints = []
    store._checkpoint = lambda: checkpoints.append(1)
    for _ in range(events.INLINE_CHECKPOINT_EVERY - 2):  # two inline commits above
        store.try_add_events([(2, 10, None)])
    deadline = time.time() + 10
    while not checkpoints and time.time() < deadline:  # the checkpoint runs in its own thread
        time.sleep(0.01)
    assert checkpoints == [1]
    store.close()
