"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA_ENV = "MUSICREC_SHARED_DATA"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real datasets (``../shared/data``), named by ``MUSICREC_SHARED_DATA``.

    Skips when the variable is unset (a fresh clone has no such folder); fails
    when it is set but the folder is missing, since the run asked for it.
    """
    value = os.environ.get(SHARED_DATA_ENV)
    if not value:
        pytest.skip(f"{SHARED_DATA_ENV} is not set (the path to ../shared/data)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"{SHARED_DATA_ENV}={value} is not a folder")
    return path
