"""End to end on Spark: ``make all PARAMS=params/tiny.yaml ENGINE=spark`` in a copy of the project,
after the same run on the local engine, ends with the same artefacts' schemas, an index page, and,
for every model that does not come from ALS (Spark's ALS is another implementation: its quality is
checked in tests/test_spark_als.py), the local engine's metrics table: values and intervals.

Skipped with a reason without pyspark or Java, unless MUSICREC_REQUIRE_SPARK=1 (as tests/test_spark.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest
from spark_support import require_spark
from test_pipeline import copy_project, make

pytestmark = pytest.mark.slow
#: The models whose lists depend on the ALS fit (i2i from history ranks ALS's similar tracks; the
#: ranker has ALS's scores among its features): their values differ between the engines.
FROM_ALS = {"personal_als", "i2i_history", "final"}
KEYS = ["model", "k", "metric", "segment"]
TOL = 1e-9


def _schemas(project: Path) -> dict[str, dict]:
    """``{artefact: schema}`` of the run's parquet artefacts (the data, candidates, ranking and
    metrics; not ``models/``, where each engine keeps its own model files)."""
    found = {}
    for folder in ("data/tiny", "outputs/tiny"):
        for path in sorted((project / folder).rglob("*.parquet")):
            relative = path.relative_to(project).as_posix()
            if "/models/" not in relative and path.is_file():
                found[relative] = dict(pl.read_parquet_schema(path))
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict, pl.DataFrame]:
    """The project copy after the Spark run, with the local run's schemas and metrics."""
    if not (Path(sys.prefix) / ".installed").is_file():
        pytest.skip("runs inside the project's virtual environment (make test)")
    require_spark()
    project = copy_project(tmp_path_factory.mktemp("spark-project"))
    local = make(project, "all", "PARAMS=params/tiny.yaml")
    assert local.returncode == 0, local.stdout + local.stderr
    local_schemas = _schemas(project)
    local_metrics = pl.read_parquet(project / "outputs/tiny/metrics.parquet")
    spark = make(project, "all", "PARAMS=params/tiny.yaml", "ENGINE=spark")
    assert spark.returncode == 0, spark.stdout + spark.stderr
    return project, local_schemas, local_metrics


def test_every_stage_reran_on_spark(runs):
    project, _, _ = runs
    plan = make(project, "plan", "PARAMS=params/tiny.yaml", "ENGINE=spark")
    assert plan.returncode == 0 and "every stage is fresh" in plan.stdout, plan.stdout
    stale = make(project, "plan", "PARAMS=params/tiny.yaml")  # the local engine's run is now stale
    assert "ENGINE changed ('spark' -> 'local')" in stale.stdout, stale.stdout


def test_the_artefacts_have_the_local_schemas_and_an_index_page(runs):
    project, local_schemas, _ = runs
    assert _schemas(project) == local_schemas
    assert len(local_schemas) > 20
    index = (project / "outputs/tiny/reports/index.html").read_text()
    assert "05_evaluation.html" in index


def test_the_metrics_of_the_models_not_from_als_equal_local(runs):
    project, _, local = runs
    spark = pl.read_parquet(project / "outputs/tiny/metrics.parquet")
    assert spark.select(KEYS).equals(local.select(KEYS))
    same = ~pl.col("model").is_in(list(FROM_ALS))
    a, b = local.filter(same), spark.filter(same)
    assert set(a.get_column("model")) >= {"top_popular", "item_knn", "content", "random", "oracle"}
    for column in ("value", "lower", "upper"):
        diff = (a.get_column(column) - b.get_column(column)).abs().fill_nan(0.0)
        assert diff.max() <= TOL, column
    assert a.filter(pl.col("metric") == "ndcg").get_column("value").max() > 0
