"""Running a stage notebook by hand (JupyterLab) as make runs it, without touching make's run.

Every stage notebook starts with :func:`open_run`. Under make (``musicrec stage``), papermill
passes the project root, the profile's absolute path, ``DATA_PATH``, ``ENGINE`` (``engine``, empty
for the profile's own) and ``scratch=""``: the notebook reads and writes the profile's own run.
Opened in JupyterLab, the kernel's working directory is ``notebooks/`` and the parameters are
the notebook's defaults: the project root is found from the working directory, ``params_path``
is read relative to it, and the notebook works on
a **scratch run** ``<run>-<scratch>`` (``default-lab``: ``data/default-lab/``,
``outputs/default-lab/``, ``plots/default-lab/``).

The first time a scratch run is opened it starts as make's run: every artefact of
``data/<run>/``, ``outputs/<run>/`` and ``plots/<run>/`` is hard-linked into it (copied where
links are not possible), so any notebook can run on its own, reading what make's upstream
stages wrote. The pipeline writes every artefact to a temporary file and renames it, so a
scratch write replaces the link and never changes make's file. Make's bookkeeping (stamps,
executed notebooks, reports) and the service's SQLite stores (written in place) are not
linked. Delete the scratch folders to start again from make's run.

>>> profile, paths = open_run("params/tiny.yaml", root=".", scratch="")  # doctest: +SKIP
>>> paths.outputs.name                                                    # doctest: +SKIP
'tiny'
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

from musicrec import progress
from musicrec.config import Profile, ProfileError, load_profile
from musicrec.io import RunPaths, write_json

#: Left out of a scratch run's seed: make's bookkeeping, and stores written in place.
NOT_SEEDED = ("notebooks", "reports", "service")
SEED_MARK = ".lab.json"


def find_root(start: str | Path | None = None) -> Path:
    """The project root: ``start`` (the working directory when None) or the nearest folder above
    it that holds ``params/`` and ``notebooks/``."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params").is_dir() and (folder / "notebooks").is_dir():
            return folder
    raise ProfileError(
        f"{here}: not inside a musicrec project (no folder above it holds params/ and notebooks/); "
        "set the notebook's root parameter to the project folder"
    )


def open_run(
    params_path: str | Path,
    data_path: str | None = None,
    root: str | Path | None = None,
    scratch: str = "",
    engine: str | None = None,
) -> tuple[Profile, RunPaths]:
    """The profile and the run folders a notebook works on (see the module docstring); also
    starts :func:`musicrec.progress.watch`, a line after every 25 s without one.

    ``root``: the project root, found from the working directory when empty. ``params_path``:
    absolute, or relative to the working directory or else to the root. ``scratch``: empty for
    make's run, else the suffix of the scratch run (``lab``: ``<run>-lab``). ``engine``: ``local``
    or ``spark`` (make's ``ENGINE``, passed by ``musicrec stage``) over the profile's ``engine``;
    empty: the profile's.
    """
    progress.watch()  # no long silence in the notebook, nor on make's console
    project = find_root(root or None)
    params = Path(params_path)
    if not params.is_absolute() and not params.is_file():
        params = project / params
    profile = load_profile(params, data_path=data_path or None, engine=engine or None)
    if not scratch:
        return profile, RunPaths.for_profile(profile, project)
    made = RunPaths.for_profile(profile, project)
    profile = profile.model_copy(update={"run_name": f"{profile.run}-{scratch}"})
    paths = RunPaths.for_profile(profile, project)
    seeded = seed_scratch(made, paths)
    print(
        f"Scratch run {paths.run}: writes to {paths.outputs.relative_to(project)}/, never to make's "
        f"run {made.run}" + (f" ({seeded} of its files linked in to start from)" if seeded else "")
    )
    return profile, paths


def seed_scratch(made: RunPaths, scratch: RunPaths) -> int:
    """Link make's artefacts into a new scratch run (once: a seeded run is left alone); returns
    the number of files linked or copied."""
    mark = scratch.outputs / SEED_MARK
    if mark.is_file():
        return 0
    seeded = 0
    for source, target in (
        (made.data, scratch.data),
        (made.outputs, scratch.outputs),
        (made.plots, scratch.plots),
    ):
        if not source.is_dir():
            continue
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if not path.is_file() or relative.parts[0] in NOT_SEEDED or _hidden(relative):
                continue
            destination = target / relative
            if destination.exists():
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, destination)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(path, destination)
            seeded += 1
    write_json(
        {"seeded_from": made.run, "files": seeded, "at": dt.datetime.now().isoformat(timespec="seconds")},
        mark,
    )
    return seeded


def _hidden(relative: Path) -> bool:
    """Stamps, moved-aside previous artefacts, locks: every name starting with a dot."""
    return any(part.startswith(".") for part in relative.parts)
