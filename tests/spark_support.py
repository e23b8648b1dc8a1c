"""What the Spark tests share: skipping (or, with MUSICREC_REQUIRE_SPARK=1, failing) without pyspark
or Java, and the tiny profile's data built in a scratch root for a Spark session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from musicrec.config import Profile, SparkConfig, load_profile
from musicrec.io import RunPaths
from musicrec.spark.session import java_executable

ROOT = Path(__file__).resolve().parents[1]
#: Driver and executor memory of the tests' sessions: the machine runs other work beside them.
SMALL = {"spark.driver.memory": "1g", "spark.executor.memory": "1g"}


def unavailable(reason: str) -> None:
    """Skip with ``reason``; fail instead where CI requires the Spark engine."""
    if os.environ.get("MUSICREC_REQUIRE_SPARK") == "1":
        pytest.fail(f"MUSICREC_REQUIRE_SPARK=1 and {reason}")
    pytest.skip(reason)


def require_spark() -> None:
    """Skip (see :func:`unavailable`) without pyspark or Java."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        unavailable("pyspark is not installed (make spark-setup)")
    if java_executable() is None:
        unavailable("no java on PATH or in JAVA_HOME (the Spark engine needs Java 17)")


def tiny_spark_run(root: Path, master: str = "local[2]") -> tuple[Profile, RunPaths]:
    """The tiny profile on ``engine: spark`` (``master``, small memory) and its data built under
    ``root``; skips (see :func:`unavailable`) without pyspark or Java."""
    require_spark()
    from musicrec.data import build_dataset

    profile = load_profile(ROOT / "params" / "tiny.yaml", engine="spark")
    profile = profile.model_copy(update={"spark": SparkConfig(master=master, conf=SMALL)})
    paths = RunPaths.for_profile(profile, root)
    build_dataset(profile, paths, progress=False)
    return profile, paths
