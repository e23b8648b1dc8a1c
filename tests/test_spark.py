"""engine: spark gives the local engine's results: top-popular, per-user metrics, candidate recall,
the split (on the tiny profile's data), also with two executor processes (``local-cluster``).

The Spark tests skip with a reason when pyspark or Java is missing, unless MUSICREC_REQUIRE_SPARK=1
(``.ci/run`` sets it), which turns the skip into a failure. The EngineUnavailable tests need
neither pyspark nor Java.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from spark_support import SMALL, tiny_spark_run

from musicrec import metrics as local_metrics
from musicrec.candidates.base import USER_RECS_SCHEMA
from musicrec.candidates.popular import top_popular as local_top_popular
from musicrec.candidates.recall import candidate_recall as local_candidate_recall
from musicrec.config import Profile, SparkConfig, SplitConfig
from musicrec.io import write_parquet
from musicrec.schema import INTERACTIONS_SCHEMA, C
from musicrec.spark.frames import to_polars
from musicrec.spark.session import EngineUnavailable, require_engine, spark_session
from musicrec.split import compute_split as local_compute_split
from musicrec.split import window_expr

MASTER = "local[2]"
CLUSTER_MASTER = "local-cluster[2,1,1024]"
KS = [1, 3, 10, 50]  # 50: longer than every list below
TOL = 1e-9


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile's data (generated and split) in a scratch root, on ``local[2]``."""
    profile, paths = tiny_spark_run(tmp_path_factory.mktemp("spark-run"), MASTER)
    yield profile, paths
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


@pytest.fixture
def spark(tiny):
    """The ``local[2]`` session (started once, reused by every test; restarted after the
    local-cluster test)."""
    return spark_session(tiny[0])


def _listens(paths) -> pl.DataFrame:
    return pl.read_parquet(paths.interactions)


def _lists(paths, seed: int, max_len: int = 30) -> pl.DataFrame:
    """Random lists for the users of the test window and a few others: lengths 0..max_len, some
    repeated tracks, ties and gaps in rank (the metrics' ordering rules all come into play), and a
    third of the rows taken from the user's own test listens so that there are hits."""
    rng = np.random.default_rng(seed)
    listens = _listens(paths)
    tracks = listens.get_column(C.track_id).unique().sort().to_numpy()
    test = listens.filter(pl.col(C.started_at) >= pl.datetime(2022, 12, 16))
    heard = test.group_by(C.user_id).agg(pl.col(C.track_id)).sort(C.user_id)
    rows = []
    for user, own in heard.iter_rows():
        length = int(rng.integers(0, max_len + 1))
        picks = rng.choice(tracks, size=length)
        mask = rng.random(length) < 0.35
        picks[mask] = rng.choice(np.asarray(own), size=int(mask.sum()))
        ranks = np.sort(rng.integers(1, 2 * length + 2, size=length))  # ties and gaps
        rows += [(user, int(t), int(r), float(-r)) for t, r in zip(picks, ranks, strict=True)]
    others = listens.filter(~pl.col(C.user_id).is_in(heard.get_column(C.user_id).implode()))
    extra = others.get_column(C.user_id).unique().sort().to_numpy()[:5]  # users without test listens
    rows += [(int(u), int(tracks[i]), i + 1, 0.0) for u in extra for i in range(5)]
    frame = pl.DataFrame(rows, schema=[C.user_id, C.track_id, C.rank, C.score], orient="row")
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)  # row order must not matter


def _relevant(paths) -> pl.DataFrame:
    listens = _listens(paths)
    return listens.filter(pl.col(C.started_at) >= pl.datetime(2022, 12, 16)).select(C.user_id, C.track_id)


def _spark_frame(spark, frame: pl.DataFrame):
    return spark.createDataFrame(frame.to_pandas())


# --------------------------------------------------------------------------- top-popular


@pytest.mark.parametrize("days", [None, 1, 7, 30])
def test_top_popular_equals_local(tiny, spark, days):
    from musicrec.spark.frames import read_interactions
    from musicrec.spark.popular import top_popular

    profile, paths = tiny
    expected = local_top_popular(pl.scan_parquet(paths.interactions), 200, days)
    got = top_popular(read_interactions(spark, paths.interactions), 200, days)
    assert got.schema == expected.schema
    assert got.equals(expected)


def test_engine_switch_writes_the_same_top_popular_file(tiny, spark, tmp_path):
    from musicrec.spark import run_top_popular

    profile, paths = tiny
    local = profile.model_copy(update={"engine": "local"})
    run_top_popular(local, paths.interactions, tmp_path / "local.parquet")
    run_top_popular(profile, paths.interactions, tmp_path / "spark.parquet")
    expected, got = pl.read_parquet(tmp_path / "local.parquet"), pl.read_parquet(tmp_path / "spark.parquet")
    assert got.schema == expected.schema and got.equals(expected) and got.height == 200


# --------------------------------------------------------------------------- metrics


def _local_per_user(recos, relevant, users=None) -> dict[tuple[str, int], pl.DataFrame]:
    classes = {
        "precision": local_metrics.Precision,
        "recall": local_metrics.Recall,
        "ndcg": local_metrics.NDCG,
        "map": local_metrics.MAP,
        "hitrate": local_metrics.HitRate,
    }
    wanted = [(name, k) for name in classes for k in KS]
    series = None if users is None else pl.Series(users)
    results = local_metrics.evaluate_per_user(recos, relevant, [classes[n](k) for n, k in wanted], series)
    return dict(zip(wanted, results, strict=True))


def _assert_close(got: pl.DataFrame, expected: pl.DataFrame, what: str) -> None:
    assert got.get_column(C.user_id).to_list() == expected.get_column(C.user_id).to_list(), what
    diff = np.abs(got.get_column("value").to_numpy() - expected.get_column("value").to_numpy())
    assert diff.size == 0 or diff.max() <= TOL, f"{what}: largest difference {diff.max()}"


@pytest.mark.parametrize("with_users", [False, True])
def test_per_user_metrics_equal_local(tiny, spark, with_users):
    from musicrec.spark.metrics import RANKING_METRICS, metric_means, per_user_frame, per_user_metrics

    _, paths = tiny
    recos, relevant = _lists(paths, seed=3), _relevant(paths)
    users = None
    if with_users:  # half the test users, plus users with no relevant item (left out by both)
        test_users = relevant.get_column(C.user_id).unique().sort().to_list()
        users = test_users[::2] + [10_000_001, 10_000_002]
    expected = _local_per_user(recos, relevant, users)
    table = per_user_metrics(_spark_frame(spark, recos), _spark_frame(spark, relevant), KS, users).cache()
    collected = per_user_frame  # one collect, then every (metric, k) from it
    from musicrec.spark.frames import to_polars

    rows = to_polars(table)
    assert any(frame.height for frame in expected.values())
    for (name, k), frame in expected.items():
        _assert_close(collected(rows, name, k), frame, f"{name}@{k}")
    zero_hits = rows.filter((pl.col("k") == max(KS)) & (pl.col("n_hits") == 0)).height
    assert zero_hits > 0, "the lists should leave some users without a hit"
    means = metric_means(table, KS)
    for row in means.iter_rows(named=True):
        local = expected[(row["metric"], row["k"])].get_column("value").mean()
        assert abs(row["value"] - local) <= TOL, row
    assert set(means.get_column("metric")) == set(RANKING_METRICS)


def test_metrics_of_nobody_are_nan_like_local(tiny, spark):
    from musicrec.spark.metrics import metric_means, per_user_metrics

    recos = pl.DataFrame({C.user_id: [1, 1], C.track_id: [5, 6], C.rank: [1, 2]})
    relevant = pl.DataFrame({C.user_id: [2], C.track_id: [5]})
    table = per_user_metrics(_spark_frame(spark, recos), _spark_frame(spark, relevant), [5], users=[1])
    assert table.count() == 0
    assert np.isnan(metric_means(table, [5]).get_column("value").to_numpy()).all()
    assert np.isnan(local_metrics.Precision(5).calc(recos, relevant, pl.Series([1])))


def test_coverage_equals_local(tiny, spark):
    from musicrec.spark.metrics import coverage

    _, paths = tiny
    recos, relevant = _lists(paths, seed=5), _relevant(paths)
    n_items = 3000
    for k in (1, 10, 50):
        for users in (None, relevant.get_column(C.user_id).unique().sort().to_list()[::3]):
            expected = local_metrics.Coverage(k, n_items=n_items).calc(
                recos, relevant, None if users is None else pl.Series(users)
            )
            got = coverage(_spark_frame(spark, recos), k, n_items, _spark_frame(spark, relevant), users)
            assert got == pytest.approx(expected, abs=TOL)
    # neither users nor relevant: every user of the lists
    expected = local_metrics.Coverage(10, n_items=n_items).calc(recos)
    assert coverage(_spark_frame(spark, recos), 10, n_items) == pytest.approx(expected, abs=TOL)


def test_engine_switch_metrics(tiny, spark, tmp_path):
    from musicrec.spark import run_metrics

    profile, paths = tiny
    write_parquet(_lists(paths, seed=11), tmp_path / "recos.parquet")
    write_parquet(_relevant(paths), tmp_path / "relevant.parquet")
    local = run_metrics(profile.model_copy(update={"engine": "local"}), *_files(tmp_path), KS)
    got = run_metrics(profile, *_files(tmp_path), KS)
    joined = local.join(got, on=["metric", "k"], suffix="_spark")
    assert joined.height == local.height == got.height == 5 * len(KS)
    assert (joined.get_column("value") - joined.get_column("value_spark")).abs().max() <= TOL
    from musicrec.spark.metrics import evaluate_parquet

    out = tmp_path / "per_user.parquet"  # a folder of part files, readable by polars too
    written = evaluate_parquet(spark, *_files(tmp_path), KS, out=out)
    assert out.is_dir() and written.select("metric", "k").equals(got.select("metric", "k"))
    assert (written.get_column("value") - got.get_column("value")).abs().max() <= TOL
    per_user = pl.read_parquet(out / "*.parquet")
    assert per_user.height == _relevant(paths).get_column(C.user_id).n_unique() * len(KS)


def _files(folder: Path) -> tuple[Path, Path]:
    return folder / "recos.parquet", folder / "relevant.parquet"


def test_evaluation_table_on_spark_equals_local(tiny, spark):
    """The evaluation stage's table and curves (every ranking metric, segment, relevance segment and
    the cold users) with Spark's per-user values: the local values and bootstrap intervals."""
    from musicrec import evaluation as ev
    from musicrec.spark import ranking_values

    profile, paths = tiny
    test = ev.held_out_listens(paths)
    segments = ev.user_segments(paths, test)
    assert set(segments.get_column("segment")) >= {"cold", "light", "heavy"}
    lists = {"a": _lists(paths, seed=21), "b": _lists(paths, seed=22, max_len=60)}
    organic = test.filter(pl.col(C.track_id) % 2 == 0)  # a relevance segment: a subset of the test
    kwargs = dict(
        cold=_lists(paths, seed=23),
        relevance={"organic": organic},
        curve_ks=[1, 5, 10, 40],
        ks=KS,
        beyond_k=10,
        n_items=3000,
        n_boot=200,
        seed=4,
    )
    local = ev.evaluate_each_model(lists, test, segments, 50, **kwargs)
    engine = ranking_values(profile)
    assert engine is not None and ranking_values(profile.model_copy(update={"engine": "local"})) is None
    got = ev.evaluate_each_model(lists, test, segments, 50, ranking_values=engine, **kwargs)
    keys = ["model", "k", "metric", "segment"]
    assert got.results.select(keys).equals(local.results.select(keys))
    assert set(local.results.get_column("segment")) >= {"all", "cold", "organic", "light"}
    for column in ("value", "lower", "upper"):
        diff = (got.results.get_column(column) - local.results.get_column(column)).abs().fill_nan(0.0)
        assert diff.max() <= TOL, column
    ranking_rows = local.results.filter(pl.col("metric") == "ndcg").get_column("value")
    assert ranking_rows.max() > 0  # the lists find test listens: the comparison is not of zeros
    joined = local.curves.join(got.curves, on=["model", "k", "metric"], suffix="_spark")
    assert joined.height == local.curves.height == got.curves.height > 0
    assert (joined.get_column("value") - joined.get_column("value_spark")).abs().max() <= TOL


# --------------------------------------------------------------------------- candidate recall


def _candidates(paths, folder: Path) -> None:
    """A candidates folder: top-popular and two per-user generators' lists (random, written in
    the generators' schema, ranks 1..n per user)."""
    listens = _listens(paths)
    write_parquet(local_top_popular(listens, 200), folder / "top_popular.parquet")
    for seed, name in ((1, "personal_als"), (2, "random")):
        lists = _lists(paths, seed=seed, max_len=60).sort([C.user_id, C.rank, C.track_id])
        lists = lists.unique([C.user_id, C.track_id], keep="first", maintain_order=True).with_columns(
            pl.int_range(1, pl.len() + 1).over(C.user_id).alias(C.rank)
        )
        write_parquet(lists.select(list(USER_RECS_SCHEMA)).cast(USER_RECS_SCHEMA), folder / f"{name}.parquet")


def test_candidate_recall_equals_local(tiny, spark, tmp_path):
    from musicrec.spark import run_candidate_recall

    profile, paths = tiny
    _candidates(paths, tmp_path)
    targets = (
        _listens(paths).filter(pl.col(C.started_at) >= pl.datetime(2022, 12, 1)).select(C.user_id, C.track_id)
    )
    write_parquet(targets, tmp_path / "targets.parquet")
    ns = [10, 50, 200]
    expected = local_candidate_recall(tmp_path, targets, ns)
    got = run_candidate_recall(profile, tmp_path, tmp_path / "targets.parquet", ns)
    assert got.equals(expected), (got, expected)
    assert set(got.get_column("generator")) == {"top_popular", "personal_als", "random", "union"}


# --------------------------------------------------------------------------- split


@pytest.mark.parametrize(
    "cfg",
    [
        SplitConfig(),
        SplitConfig(label_start=30, test_start=10),
        SplitConfig(label_start="12%", test_start="5%"),
    ],
    ids=["dates", "days", "shares"],
)
def test_split_equals_local(tiny, spark, cfg):
    from musicrec.spark.split import compute_split

    _, paths = tiny
    expected = local_compute_split(paths.interactions, cfg)
    assert compute_split(spark, paths.interactions, cfg) == expected


def test_window_labels_equal_local(tiny, spark):
    import datetime as dt

    from musicrec.spark.frames import read_interactions, to_polars
    from musicrec.spark.split import with_windows

    _, paths = tiny
    label_start, test_start = dt.date(2022, 12, 1), dt.date(2022, 12, 16)
    cols = [C.user_id, C.track_id, "window"]
    expected = _listens(paths).with_columns(window_expr(label_start, test_start)).select(cols).sort(cols)
    got = to_polars(with_windows(read_interactions(spark, paths.interactions), label_start, test_start))
    assert got.select(cols).sort(cols).equals(expected)
    assert set(expected.get_column("window")) == {"history", "labels", "test"}


# --------------------------------------------------------------------------- the data contract

#: Interactions files each breaking the contract one way (over test_schema's valid five rows):
#: ``(name, changes)``, and the valid file itself.
CONTRACT_CASES = [
    ("valid", {}),
    ("repeated pair", {"track_id": [10, 11, 10, 10, 11]}),
    ("repeated pairs, weight given", {"track_id": [10, 10, 10, 11, 11], "weight": [1.0] * 5}),
    ("unknown track", {"track_id": [10, 11, 10, 99, 11]}),
    ("null user", {"user_id": [1, None, 2, 2, 3]}),
    ("null date", {"started_at": [None, *[dt.datetime(2022, 1, 2)] * 4]}),
    ("user beyond int32", {"user_id": [1, 1, 2, 2, 2**40]}),
    ("track_seq beyond int16", {"track_seq": [1, 2, 1, 40_000, 1]}),
    ("text user", {"user_id": ["a", "a", "b", "b", "c"]}),
    ("text date", {"started_at": ["2022-01-01"] * 5}),
    ("a date in the future", {"started_at": [dt.datetime(2022, 1, 1)] * 4 + [dt.datetime(2999, 1, 1)]}),
    ("no track_seq", {"track_seq": None}),
    ("misspelled track_id", {"track_id": None, "trackid": [10, 11, 10, 12, 11]}),
]


def _contract_file(folder: Path, changes: dict) -> Path:
    from test_schema import interactions

    frame = interactions().with_columns(pl.Series("track_seq", [1, 2, 1, 2, 1], dtype=pl.Int16))
    for name, values in changes.items():
        frame = (
            frame.drop(name, strict=False) if values is None else frame.with_columns(pl.Series(name, values))
        )
    path = folder / "events.parquet"
    write_parquet(frame, path)
    return path


@pytest.mark.parametrize("case", [name for name, _ in CONTRACT_CASES])
def test_contract_errors_on_spark_equal_local(tiny, spark, tmp_path, case):
    """Each broken file: the same error (file, column, problem) on both engines, and examples that
    are offending rows; the valid file: the same rows in the canonical columns."""
    from test_schema import FILE, TRACK_IDS

    from musicrec.schema import DataContractError, validate_interactions_lazy
    from musicrec.spark.contract import validate_interactions

    path = _contract_file(tmp_path, dict(CONTRACT_CASES)[case])
    errors, results = [], []
    for check in (
        lambda: validate_interactions_lazy(pl.scan_parquet(path), TRACK_IDS, FILE).collect(),
        lambda: to_polars(validate_interactions(spark, path, TRACK_IDS, FILE)),
    ):
        try:
            results.append(check())
        except DataContractError as error:
            errors.append(error)
    if case == "valid":
        assert not errors and len(results) == 2
        local, on_spark = results
        assert on_spark.columns == local.columns == list(INTERACTIONS_SCHEMA)
        assert_frame_equal(on_spark.drop(C.started_at), local.drop(C.started_at))
        return
    assert len(errors) == 2, f"{case}: raised by {len(errors)} of the 2 engines"
    local, on_spark = errors
    assert (on_spark.file, on_spark.column, on_spark.problem) == (local.file, local.column, local.problem)
    assert str(on_spark).startswith(f"{FILE}, column '{local.column}': {local.problem}.")
    shown = str(local).split(" Examples: ")[1:]  # the local examples' rows, without row numbers
    if shown and on_spark.column != "started_at":
        for key in on_spark.column.split(", "):
            assert f"{key}=" in str(on_spark), str(on_spark)


# --------------------------------------------------------------------------- two executors


def test_two_executor_processes_give_the_same_results(tiny, tmp_path):
    """A local-cluster master: a standalone master and two workers with one executor JVM each, so
    the shuffles of the group-bys, windows and joins cross processes."""
    from musicrec.spark.frames import read_interactions
    from musicrec.spark.metrics import per_user_frame, per_user_metrics
    from musicrec.spark.popular import top_popular

    profile, paths = tiny
    cluster = profile.model_copy(update={"spark": SparkConfig(master=CLUSTER_MASTER, conf=SMALL)})
    spark = spark_session(cluster)
    app = spark.sparkContext.applicationId
    try:
        assert spark.sparkContext.master == CLUSTER_MASTER
        listens = read_interactions(spark, paths.interactions).repartition(4)
        executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
        assert executors == 2
        expected = local_top_popular(pl.scan_parquet(paths.interactions), 200, 7)
        assert top_popular(listens, 200, 7).equals(expected)
        recos, relevant = _lists(paths, seed=9), _relevant(paths)
        local = _local_per_user(recos, relevant)
        rows = per_user_metrics(
            _spark_frame(spark, recos).repartition(3), _spark_frame(spark, relevant).repartition(3), KS
        )
        from musicrec.spark.frames import to_polars

        rows = to_polars(rows)
        for (name, k), frame in local.items():
            _assert_close(per_user_frame(rows, name, k), frame, f"{name}@{k} on two executors")
    finally:
        spark.stop()
        # the in-process workers keep each executor's logs in <SPARK_HOME>/work/<app>: remove ours
        import pyspark

        shutil.rmtree(Path(pyspark.__file__).parent / "work" / app, ignore_errors=True)


# --------------------------------------------------------------------------- without the engine


def test_engine_unavailable_names_java_and_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no java
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(EngineUnavailable, match="no java on PATH.*openjdk-17-jre-headless"):
        require_engine()
    profile = Profile(run_name="x", engine="spark")
    with pytest.raises(EngineUnavailable, match="java"):  # raised before any JVM is started
        spark_session(profile)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nojdk"))
    with pytest.raises(EngineUnavailable, match="JAVA_HOME=.*nojdk has no bin/java"):
        require_engine()
    assert issubclass(EngineUnavailable, RuntimeError)


def test_engine_unavailable_names_pyspark(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyspark" else real(name, *a)
    )
    with pytest.raises(EngineUnavailable, match=r"pyspark is not installed: make spark-setup"):
        require_engine()


def test_the_package_imports_without_starting_spark():
    import musicrec.spark as engine

    assert callable(engine.run_top_popular) and engine.EngineUnavailable is EngineUnavailable
