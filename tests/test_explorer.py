"""The user explorer on a hand-made run whose answers are worked out in the comments."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from musicrec import evaluation as ev
from musicrec.explorer import (
    NotRankedError,
    UnknownUserError,
    available_models,
    explorer_html,
    explorer_widget,
    sample_users,
    user_view,
    view_html,
)
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.schema import CATALOG_NAMES_SCHEMA, INTERACTIONS_SCHEMA, TRACKS_SCHEMA

ROOT = Path(__file__).resolve().parents[1]
LIST_SCHEMA = {"user_id": pl.Int32, "track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int16}


def day(month: int, d: int) -> dt.datetime:
    return dt.datetime(2022, month, d)


def write_listens(paths: RunPaths, listens: list[tuple[int, int, dt.datetime]]) -> None:
    """Interactions (``track_seq``: the order of each user's rows) and a split at 12-01 / 12-16."""
    frame = pl.DataFrame(
        listens,
        schema={"user_id": pl.Int32, "track_id": pl.Int32, "started_at": pl.Datetime("ns")},
        orient="row",
    ).with_columns(
        pl.int_range(1, pl.len() + 1).over("user_id").alias("track_seq"), pl.lit(1.0).alias("weight")
    )
    write_parquet(frame.cast(INTERACTIONS_SCHEMA), paths.interactions)
    write_json({"label_start": "2022-12-01", "test_start": "2022-12-16"}, paths.split)


def write_lists(path: Path, lists: dict[int, list[int]]) -> None:
    rows = [(u, t, 1.0 / r, r) for u, tracks in lists.items() for r, t in enumerate(tracks, 1)]
    write_parquet(pl.DataFrame(rows, schema=LIST_SCHEMA, orient="row"), path)


# Tracks 10..19. Artists: 100 "Ana" (even tracks), 101 "Bo & Co" (odd tracks); track 19 has none.
# Track 13 is called "<b>&"; album 10 ("Album X") shares an id with track 10.
#
# Listens (history < 12-01 <= labels < 12-16 <= test):
#   user 1: 10 (11-01), 11 (11-02, seq 2), 13 (11-02, seq 3), 14 (12-05, labels); test 12 (12-20), 15 (12-21)
#   user 2: 15 (10-01), 16 (10-02); test 10 (12-17)
#   user 3: 15, 10, 17 (10-05..07), 11 (12-02, labels); test 13 (12-18)
#   user 4: cold, only a test listen of 10 (12-20)
# Distinct listeners before 12-16: 10, 11, 15: 2; 13, 14, 16, 17: 1; 12, 18, 19: 0.
# top_popular.parquet holds 10, 11, 15; the global order goes on by listeners, ties by id:
#   10, 11, 15, 13, 14, 16, 17, 12, 18, 19
LISTENS = [
    (1, 10, day(11, 1)),
    (1, 11, day(11, 2)),
    (1, 13, day(11, 2)),
    (1, 14, day(12, 5)),
    (1, 12, day(12, 20)),
    (1, 15, day(12, 21)),
    (2, 15, day(10, 1)),
    (2, 16, day(10, 2)),
    (2, 10, day(12, 17)),
    (3, 15, day(10, 5)),
    (3, 10, day(10, 6)),
    (3, 17, day(10, 7)),
    (3, 11, day(12, 2)),
    (3, 13, day(12, 18)),
    (4, 10, day(12, 20)),
]
FINAL_LISTS = {1: [15, 16, 12, 17, 18], 2: [10, 11], 3: [13, 16]}
ALS = {1: [12, 16, 18], 2: [10, 17], 3: [13, 12]}


@pytest.fixture
def run(tmp_path: Path) -> RunPaths:
    paths = RunPaths(tmp_path, "t")
    write_listens(paths, LISTENS)
    tracks = list(range(10, 20))
    artists = [[] if t == 19 else [100 if t % 2 == 0 else 101] for t in tracks]
    write_parquet(
        pl.DataFrame(
            {"track_id": tracks, "albums": [[1]] * 10, "artists": artists, "genres": [[1]] * 10}
        ).cast(TRACKS_SCHEMA),
        paths.tracks,
    )
    names = [(t, "track", "<b>&" if t == 13 else f"Song {t}") for t in tracks]
    names += [(100, "artist", "Ana"), (101, "artist", "Bo & Co"), (10, "album", "Album X")]
    write_parquet(pl.DataFrame(names, schema=CATALOG_NAMES_SCHEMA, orient="row"), paths.catalog_names)

    write_parquet(
        pl.DataFrame({"track_id": [10, 11, 15], "score": [2.0, 2.0, 2.0], "rank": [1, 2, 3]}).cast(
            {"track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int16}
        ),
        paths.candidate_list("top_popular"),
    )
    write_lists(paths.candidate_list("personal_als"), ALS)
    write_lists(paths.candidate_list("random"), {1: [19, 15], 2: [18, 19], 3: [18, 19]})
    # the generators fitted on history alone: never what the explorer shows
    write_lists(paths.candidate_list("personal_als", "history"), {1: [19, 18], 2: [19], 3: [19]})
    # an item-to-item file keyed by track: not a per-user list
    write_parquet(
        pl.DataFrame({"track_id": [10], "similar_track_id": [11], "score": [1.0], "rank": [1]}).cast(
            {"track_id": pl.Int32, "similar_track_id": pl.Int32, "score": pl.Float32, "rank": pl.Int16}
        ),
        paths.candidate_list("similar"),
    )
    rows = [(u, t, 1.0, r, "final") for u, ts in FINAL_LISTS.items() for r, t in enumerate(ts, 1)]
    rows += [(4, t, 1.0, r, "top_popular") for r, t in enumerate([10, 11, 15], 1)]
    write_parquet(
        pl.DataFrame(rows, schema={**LIST_SCHEMA, "source": pl.Utf8}, orient="row"), paths.recommendations
    )
    return paths


def tracks_of(frame: pl.DataFrame) -> list[int]:
    return frame.get_column("track_id").to_list()


# --------------------------------------------------------------------------- user_view


def test_models_are_the_per_user_lists_of_history_plus_labels(run):
    # no i2i_history/content/audio files; "similar" is keyed by track
    assert available_models(run) == ["final", "top_popular", "personal_als", "random"]


def test_history_latest_first_with_windows_and_names(run):
    view = user_view(run, 1, k=3)
    # 14 (labels, 12-05), then 11-02: 13 (seq 3) before 11 (seq 2), then 10; test listens left out
    assert tracks_of(view.history) == [14, 13, 11, 10]
    assert view.history.get_column("window").to_list() == ["labels", "history", "history", "history"]
    assert view.history.get_column("track").to_list() == ["Song 14", "<b>&", "Song 11", "Song 10"]
    assert view.history.get_column("artist").to_list() == ["Ana", "Bo & Co", "Bo & Co", "Ana"]
    assert view.n_history == 4 and not view.cold
    assert user_view(run, 1, n_history=2).history.height == 2
    assert user_view(run, 1, n_history=2).n_history == 4


def test_lists_and_hits(run):
    view = user_view(run, 1, k=3)
    assert list(view.lists) == ["final", "top_popular", "personal_als", "random"]
    assert tracks_of(view.lists["final"]) == [15, 16, 12]
    assert view.lists["final"].get_column("rank").to_list() == [1, 2, 3]
    assert tracks_of(view.lists["personal_als"]) == [12, 16, 18]  # not history/'s 19, 18
    assert tracks_of(view.lists["random"]) == [19, 15]
    # user 1 heard 10, 11, 13, 14: the global order without them is 15, 16, 17, ...
    assert tracks_of(view.lists["top_popular"]) == [15, 16, 17]
    # test listens of user 1: 12 and 15
    assert view.lists["final"].get_column("hit").to_list() == [True, False, True]
    assert view.lists["personal_als"].get_column("hit").to_list() == [True, False, False]
    assert view.lists["random"].get_column("hit").to_list() == [False, True]
    assert view.hits().rows() == [
        ("final", 3, 2),
        ("top_popular", 3, 1),
        ("personal_als", 3, 1),
        ("random", 2, 1),
    ]
    assert tracks_of(view.test) == [12, 15] and view.test.get_column("found").all()
    assert view.lists["random"].get_column("artist").to_list() == [None, "Bo & Co"]  # 19 has no artist


def test_top_popular_reaches_past_the_head(run):
    # the head (10, 11, 15) minus user 1's heard tracks leaves 15 alone: k=4 needs the order beyond it
    assert tracks_of(user_view(run, 1, k=4).lists["top_popular"]) == [15, 16, 17, 12]
    # and is what the evaluation makes per user
    expected = ev.top_popular_lists(run, [1, 2, 3], 4).collect()
    for user in (1, 2, 3):
        mine = user_view(run, user, k=4).lists["top_popular"].select("track_id", "rank")
        theirs = expected.filter(pl.col("user_id") == user).select("track_id", "rank")
        assert mine.cast(pl.Int32).equals(theirs.cast(pl.Int32)), user


def test_cold_user_gets_top_popular_final_list(run):
    view = user_view(run, 4, k=3)
    assert view.cold and view.history.height == 0
    assert view.final_source == "top_popular"
    assert tracks_of(view.lists["final"]) == [10, 11, 15]
    assert view.lists["final"].get_column("hit").to_list() == [True, False, False]


def test_models_can_be_chosen_and_cut(run):
    view = user_view(run, 1, k=5, models=["personal_als", "final"])
    assert list(view.lists) == ["personal_als", "final"]
    short = view.top(1, models=["final"])
    assert list(short.lists) == ["final"] and tracks_of(short.lists["final"]) == [15]
    assert short.test.get_column("found").to_list() == [False, True]  # 12 is no longer listed
    with pytest.raises(ValueError, match="no model 'similar'"):
        user_view(run, 1, models=["similar"])


def test_unknown_user_says_so_and_suggests_users(run):
    with pytest.raises(UnknownUserError) as error:
        user_view(run, 99)
    message = str(error.value)
    assert "user 99 is not in run 't'" in message
    assert "try user 4" in message and "sample_users" in message


def test_run_not_ranked_names_the_target(run):
    run.recommendations.unlink()
    with pytest.raises(NotRankedError, match=r"not been ranked yet.*make ranking PARAMS=params/t\.yaml"):
        user_view(run, 1)
    with pytest.raises(NotRankedError, match="make ranking"):
        explorer_html(run, [1])


def test_scratch_run_not_ranked_names_makes_profile(run):
    (run.root / "params").mkdir()
    (run.root / "params" / "t.yaml").write_text("")
    scratch = RunPaths(run.root, "t-lab")
    shutil.copytree(run.data, scratch.data)
    with pytest.raises(
        NotRankedError, match=r"make ranking PARAMS=params/t\.yaml`, then delete outputs/t-lab/"
    ):
        user_view(scratch, 1)


def test_run_without_data_names_the_target(tmp_path):
    with pytest.raises(NotRankedError, match="make data"):
        user_view(RunPaths(tmp_path, "nothing"), 1)


# --------------------------------------------------------------------------- sample_users


@pytest.fixture
def sample_run(tmp_path: Path) -> RunPaths:
    """Users 1..9 with 1..9 listens before the test window and one in it; user 10 (one listen)
    has none in it, user 11 is cold. Terciles of 1..9: light 1-3, medium 4-6, heavy 7-9."""
    paths = RunPaths(tmp_path, "s")
    listens = [(u, t, day(11, 1 + t)) for u in range(1, 10) for t in range(u)]
    listens += [(u, 50, day(12, 20)) for u in range(1, 10)]
    listens += [(10, 1, day(11, 3)), (11, 2, day(12, 20))]
    write_listens(paths, listens)
    return paths


def test_sample_users_one_per_segment_reproducibly(sample_run):
    users = sample_users(sample_run, seed=3)
    assert list(users) == ["light", "medium", "heavy"]
    assert users["light"] in {1, 2, 3} and users["medium"] in {4, 5, 6} and users["heavy"] in {7, 8, 9}
    assert sample_users(sample_run, seed=3) == users
    assert len({tuple(sample_users(sample_run, seed=s).values()) for s in range(20)}) > 1


def test_sample_users_only_test_users(sample_run):
    users = sample_users(sample_run, n=5, seed=0)
    # only three users a segment have a test listen: user 10 (light, no test listen) and cold 11 never
    assert users == {
        "light 1": 1, "light 2": 2, "light 3": 3,
        "medium 1": 4, "medium 2": 5, "medium 3": 6,
        "heavy 1": 7, "heavy 2": 8, "heavy 3": 9,
    }  # fmt: skip


def test_sample_users_from_given_segments():
    segments = pl.DataFrame({"user_id": [5, 6, 7], "segment": ["heavy", "cold", "light"]})
    assert sample_users(None, seed=1, segments=segments) == {"light": 7, "heavy": 5}


# --------------------------------------------------------------------------- HTML


def columns_of(page: str) -> list[str]:
    return re.findall(r'<th class="mr-model" data-model="([^"]+)"', page)


def test_html_escapes_names(run):
    page = explorer_html(run, [1], k=3)
    assert "&lt;b&gt;&amp;" in page  # track 13, in user 1's history
    assert "<b>&" not in page
    assert "Bo &amp; Co" in page and "Bo & Co" not in page


def test_html_marks_hits_and_has_a_column_per_model(run):
    page = explorer_html(run, {"light": 1}, k=3, show_test=False)
    assert columns_of(page) == ["final", "top_popular", "personal_als", "random"]
    # hits of user 1 at k=3: final 15, 12; top_popular 15; personal_als 12; random 15
    assert page.count('class="mr-hit"') == 5
    assert page.count('<span class="mr-mark"') == 5
    assert "2 hits of 3" in page and "light listener" in page
    assert 'class="mr-test"' not in page


def test_html_rows_and_test_column(run):
    page = explorer_html(run, [1], k=3, n_history=2)
    table = page.split("<tbody>")[1]
    rows = table.split("</tr>")[:-1]
    assert len(rows) == 3  # max(history 2, k 3)
    cells = re.findall(r"<td[^>]*>", rows[0])
    assert len(cells) == 1 + 1 + 4 + 1  # rank, history, four models, test window
    assert 'class="mr-found"' in page  # 12 and 15 are listed by some model
    assert "test window<small>2 listens, 2 listed</small>" in page


def test_html_several_users_one_style_no_external_resources(run):
    page = explorer_html(run, [1, 4, 2], k=2)
    assert re.findall(r'data-user="(\d+)"', page) == ["1", "4", "2"]
    assert page.count("<style>") == 1
    assert "cold: no listen before the test window" in page and "none (cold)" in page
    assert "final (top_popular)" in page  # the cold user's final list is the top-popular one
    for forbidden in ("<script", "http://", "https://", "src=", "url(", "@import", "<link"):
        assert forbidden not in page


def test_view_html_with_no_lists_is_still_a_table(run):
    view = user_view(run, 2, k=3, models=[])
    page = view_html(view)
    assert columns_of(page) == [] and 'data-user="2"' in page


# --------------------------------------------------------------------------- widget


def test_widget_builds_and_rerenders(run):
    explorer = explorer_widget(run, k=2, users={"first": 1, "second": 2})
    assert explorer.user.options == ("1 (first)", "2 (second)")
    assert 'data-user="1"' in explorer.html
    assert columns_of(explorer.html) == ["final", "top_popular", "personal_als", "random"]
    assert "Song 16" in explorer.html and "Song 12" not in explorer.html.split("mr-test")[0]

    explorer.user.value = "2 (second)"
    assert 'data-user="2"' in explorer.html and 'data-user="1"' not in explorer.html

    explorer.user.value = "3"  # a typed id, not among the options
    assert 'data-user="3"' in explorer.html

    explorer.k.value = 1
    assert len(explorer.html.split("<tbody>")[1].split("</tr>")[:-1]) == 4  # user 3's history: 4 rows
    explorer.history.value = 0
    assert len(explorer.html.split("<tbody>")[1].split("</tr>")[:-1]) == 1

    explorer.models.value = ("personal_als",)
    assert columns_of(explorer.html) == ["personal_als"]


def test_widget_shows_errors_instead_of_raising(run):
    explorer = explorer_widget(run, users={"one": 1})
    explorer.user.value = "99"
    assert 'class="mr-x mr-error"' in explorer.html and "user 99 is not in run" in explorer.html
    assert "1 (one)" in explorer.html  # the sample users are suggested
    explorer.user.value = "abc"
    assert "type a user id" in explorer.html
    explorer.user.value = "1"
    assert 'class="mr-x mr-error"' not in explorer.html and 'data-user="1"' in explorer.html


def test_widget_reads_each_user_once(run, monkeypatch):
    import musicrec.explorer as module

    calls = []
    real = module.user_view
    monkeypatch.setattr(module, "user_view", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
    explorer = explorer_widget(run, users={"one": 1})
    explorer.k.value = 3
    explorer.models.value = ("final",)
    explorer.user.value = "2"
    explorer.user.value = "1"
    assert calls == [1, 2]


# --------------------------------------------------------------------------- the tiny run


def test_on_the_tiny_run(tmp_path):
    real = RunPaths(ROOT, "tiny")
    if not (real.recommendations.is_file() and real.interactions.is_file()):
        pytest.skip("no tiny run in outputs/tiny and data/tiny (make test builds one)")
    if real.lock.is_file() and real.lock.read_text().strip():
        pytest.skip(f"a stage of the tiny run is running ({real.lock.read_text().strip()})")
    # a copy, so that a stage started meanwhile cannot change the files under the test
    paths = RunPaths(tmp_path, "tiny")
    shutil.copytree(real.data, paths.data)
    shutil.copytree(real.candidates, paths.candidates)
    shutil.copy2(real.recommendations, paths.recommendations)
    users = sample_users(paths, seed=0)
    assert list(users) == ["light", "medium", "heavy"]
    test_start = paths.windows().test_start
    listens = pl.read_parquet(paths.interactions).filter(pl.col("user_id").is_in(list(users.values())))
    models = available_models(paths)
    assert models[0] == "final" and "personal_als" in models
    for user in users.values():
        view = user_view(paths, user, k=10)
        mine = listens.filter(pl.col("user_id") == user)
        test = set(mine.filter(pl.col("started_at") >= test_start).get_column("track_id"))
        assert test, "a sample user has a test listen"
        assert view.n_history == mine.filter(pl.col("started_at") < test_start).height
        assert view.history.get_column("started_at").is_sorted(descending=True)
        final = (
            pl.read_parquet(paths.recommendations)
            .filter(pl.col("user_id") == user)
            .sort("rank")
            .head(10)
            .get_column("track_id")
            .to_list()
        )
        assert tracks_of(view.lists["final"]) == final
        for model, frame in view.lists.items():
            assert frame.height == 10, model
            hits = [t in test for t in frame.get_column("track_id")]
            assert frame.get_column("hit").to_list() == hits, model
        assert view.history.get_column("track").null_count() == 0
    page = explorer_html(paths, users, k=10)
    assert columns_of(page) == models * len(users)
