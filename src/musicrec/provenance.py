"""Where a result came from: the code's commit, the time, the packages and the machine.

:func:`provenance` returns one flat, JSON-ready dict (strings, numbers, booleans and ``None``;
no nesting), so that a page can show it as a two-column table. ``musicrec stage`` records it
after each stage that succeeds, in ``outputs/<run>/provenance.json`` (stage name -> that
dict); ``make compare`` labels each run with it.

Keys:

==================== ==========================================================================
``git_commit``       the commit checked out in the project root, 40 hex digits, or ``"unknown"``
                     (no git, or not a repository: a tarball of the project)
``git_dirty``        ``True`` when tracked files differ from the commit or untracked files (not
                     ignored ones) exist; ``None`` when the commit is unknown
``time``             when it was taken: local time with its UTC offset, ISO 8601, to the second
``profile``          the profile file, relative to the project root where it lies inside it
                     (``None`` when not given)
``python_version``   ``3.11.7``
``<name>_version``   for each of :data:`PACKAGES` (``scikit-learn`` as ``scikit_learn_version``):
                     the installed version, or ``None`` when the package is not installed
``cpu_count``        logical CPUs of the machine
``memory_gb``        the machine's memory, GB (2**30 bytes), one decimal
``platform``         ``platform.platform()``, for example ``Linux-6.1.0-x86_64-with-glibc2.36``
``machine``          the processor architecture (``x86_64``, ``arm64``)
``engine``           in ``provenance.json`` only (:func:`record_stage`): the engine the stage ran
                     on, ``local`` or ``spark`` (the profile's, or make's ``ENGINE``)
==================== ==========================================================================

>>> record = provenance(".")
>>> sorted(record)[:3]
['catboost_version', 'cpu_count', 'git_commit']
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from musicrec.io import RunPaths, read_json, write_json

#: The packages whose versions decide the results (distribution names).
PACKAGES = ("polars", "numpy", "implicit", "catboost", "scikit-learn", "papermill", "musicrec")
UNKNOWN = "unknown"


def _git(root: Path, *args: str) -> str | None:
    """``git -C root ARGS``'s output, or ``None`` when git is missing or the command fails."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: str | Path = ".") -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the repository at ``root``: ``("unknown", None)`` outside one."""
    root = Path(root)
    commit = _git(root, "rev-parse", "--verify", "HEAD")
    if not commit or not commit.strip():
        return UNKNOWN, None
    status = _git(root, "status", "--porcelain")
    return commit.strip(), None if status is None else bool(status.strip())


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _relative(path: str | Path, root: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def provenance(root: str | Path = ".", profile: str | Path | None = None) -> dict[str, Any]:
    """The provenance of work done now in the project at ``root`` on ``profile`` (module docstring)."""
    root = Path(root).resolve()
    commit, dirty = git_state(root)
    record: dict[str, Any] = {
        "git_commit": commit,
        "git_dirty": dirty,
        "time": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "profile": None if profile is None else _relative(profile, root),
        "python_version": platform.python_version(),
    }
    for name in PACKAGES:
        record[f"{name.replace('-', '_')}_version"] = package_version(name)
    record.update(
        cpu_count=os.cpu_count(),
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        platform=platform.platform(),
        machine=platform.machine(),
    )
    return record


def record_stage(
    paths: RunPaths, stage: str, profile: str | Path | None = None, engine: str | None = None
) -> dict[str, Any]:
    """Take :func:`provenance` now and store it as ``stage``'s entry of ``outputs/<run>/provenance.json``
    (written atomically; the other stages' entries kept), with ``engine`` (``local`` or ``spark``, the
    one the stage ran on) when given. Returns the entry."""
    entry = provenance(paths.root, profile)
    if engine is not None:
        entry["engine"] = engine
    try:
        recorded = read_json(paths.provenance)
    except (OSError, ValueError):
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    recorded[stage] = entry
    write_json(recorded, paths.provenance)
    return entry
