"""The Spark session of ``engine: spark``: built from the profile's ``spark`` section, reused.

pyspark is imported only inside the functions, so that :mod:`musicrec.spark` imports (and the
local engine runs) without it. Before a JVM is started, :func:`require_engine` checks that
pyspark imports and that a ``java`` is there, and raises :class:`EngineUnavailable` saying what
is missing and how to install it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from musicrec.config import Profile

#: Settings used unless the profile's ``spark.conf`` sets them.
DEFAULTS: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "1g",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # polars writes started_at as parquet TIMESTAMP(NANOS), which Spark cannot read as a timestamp:
    # it comes in as its int64 nanoseconds, exact (see musicrec.spark.frames.read_interactions)
    "spark.sql.legacy.parquet.nanosAsLong": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}
#: Extra defaults for a ``local[...]`` or ``local-cluster[...]`` master: a few shuffle partitions
#: instead of 200 (small data, few cores), and no adaptive re-planning noise in tests.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
}

INSTALL_HINT = "make spark-setup (or: pip install -e '.[spark]')"
JAVA_HINT = "install Java 17 (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"


class EngineUnavailable(RuntimeError):
    """``engine: spark`` cannot run here: pyspark or Java is missing (the message says how to fix it)."""


def java_executable() -> str | None:
    """The ``java`` Spark would start: ``$JAVA_HOME/bin/java`` when JAVA_HOME is set, else the one
    on PATH; None when there is none."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        return str(candidate) if candidate.is_file() and os.access(candidate, os.X_OK) else None
    return shutil.which("java")


def require_engine() -> None:
    """Raise :class:`EngineUnavailable` unless pyspark imports and Java is present.

    >>> require_engine()  # doctest: +SKIP
    """
    missing = []
    try:
        found = importlib.util.find_spec("pyspark") is not None
    except (ImportError, ValueError):  # a broken or blocked install
        found = False
    if not found:
        missing.append(f"pyspark is not installed: {INSTALL_HINT}")
    if java_executable() is None:
        where = (
            f"JAVA_HOME={os.environ['JAVA_HOME']} has no bin/java"
            if os.environ.get("JAVA_HOME")
            else ("no java on PATH")
        )
        missing.append(f"{where}: {JAVA_HINT}")
    if missing:
        raise EngineUnavailable("engine: spark cannot start: " + "; ".join(missing))


def session_conf(profile: Profile) -> dict[str, str]:
    """The settings of the profile's session: :data:`DEFAULTS` (and :data:`LOCAL_DEFAULTS` for a
    local master) under the profile's ``spark.conf``.

    >>> from musicrec.config import Profile
    >>> session_conf(Profile())["spark.sql.shuffle.partitions"]
    '4'
    """
    conf = dict(DEFAULTS)
    if profile.spark.master.startswith("local"):
        conf.update(LOCAL_DEFAULTS)
    conf.update(profile.spark.conf)
    return conf


def app_name(profile: Profile) -> str:
    """``musicrec-<run>`` (``musicrec`` for a profile not loaded from a file)."""
    return f"musicrec-{profile.run_name}" if profile.run_name else "musicrec"


def spark_session(profile: Profile) -> SparkSession:
    """The Spark session for ``profile``: the running one when its master and app name match,
    else a new one (a running session with another master is stopped first: one JVM per process).

    Settings that only apply when the JVM starts (``spark.driver.memory``) take effect for the
    first session of a process. With a ``local`` master the Python workers run this interpreter
    (``PYSPARK_PYTHON``, unless set).
    """
    require_engine()
    from pyspark.sql import SparkSession

    name = app_name(profile)
    master = profile.spark.master
    active = SparkSession.getActiveSession()
    if active is not None:
        context = active.sparkContext
        if context.master == master and context.appName == name:
            return active
        active.stop()
    if master.startswith("local"):
        # Python workers (pandas UDFs: musicrec.spark.als) run this interpreter, which has musicrec;
        # Spark's default is the first python3 on PATH. On a cluster, set PYSPARK_PYTHON yourself.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master).appName(name)
    for key, value in session_conf(profile).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
