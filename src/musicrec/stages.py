"""The pipeline's stages, declared once, and what makes a stage stale.

:data:`STAGES` names every stage: its notebook, title, make target, upstream stages, the
profile sections it reads and the artefacts it writes. The CLI, the report, the bench and
the Makefile's stage rules come from it (``musicrec makefile-rules`` prints the rules; a
test checks that the Makefile holds them).

A stage is **stale** (:func:`plan`) when it has no stamp, when a run of it was interrupted,
when one of its artefacts is missing or was changed since it ran, or when its fingerprint
changed: the notebook's bytes, the source of every ``musicrec`` module the notebook imports
(transitively; presentation modules excepted, see :data:`PRESENTATION`), the values of the
profile sections it reads, ``DATA_PATH`` (the data stage), the engine (``engine``, or make's
``ENGINE``), and the artefacts of its upstream stages as they were when it ran. A stale stage
makes every stage downstream of it stale.

Runs are whole-stage atomic (:func:`transaction`): the stamp and the previous artefacts are
moved aside when a stage starts and come back if it fails, or at the next start if it was
killed, so a run holds the previous complete artefacts or the new ones, never a mix. A lock
per run folder keeps a second run of the same run name out.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from musicrec.config import Profile
from musicrec.io import RunPaths, read_json, write_json

PACKAGE_ROOT = Path(__file__).resolve().parent
#: Modules that only draw, lay out or report the progress of what a stage computes: editing them
#: makes no stage stale (the next run of a stage redraws its figures; ``make report`` re-renders the pages).
PRESENTATION = ("musicrec.plots", "musicrec.report", "musicrec.results", "musicrec.progress")


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline (see the module docstring)."""

    name: str
    target: str
    title: str  # the report's
    short: str  # the bench tables'
    summary: str
    upstream: tuple[str, ...]
    sections: tuple[str, ...]
    #: Paths written by the stage, relative to the project root, with ``{data}`` and
    #: ``{outputs}`` for the run's folders; a trailing ``*`` globs, a leading ``?`` marks
    #: an artefact that only some sources write.
    artefacts: tuple[str, ...]
    on_demand: bool = False
    reads_data_path: bool = False
    #: An on-demand stage's make variable of notebook parameters (``ABTEST="max_users=null"``):
    #: set, the stage always reruns.
    param_var: str = ""

    @property
    def notebook(self) -> Path:
        return Path("notebooks") / f"{self.name}.ipynb"


STAGES: tuple[Stage, ...] = (
    Stage(
        "01_data",
        "data",
        "Data",
        "data",
        "generate or adapt the data, check it, split it (data/<run>/)",
        (),
        ("seed", "data", "split"),
        (
            "{data}/interactions.parquet",
            "{data}/tracks.parquet",
            "{data}/catalog_names.parquet",
            "?{data}/track_features.parquet",
            "{data}/split.json",
            "{data}/summary.json",
            "?{data}/oracle",
        ),
        reads_data_path=True,
    ),
    Stage(
        "02_eda",
        "eda",
        "Exploratory analysis",
        "EDA",
        "exploratory analysis and calibration (plots/<run>/)",
        ("01_data",),
        ("data",),
        (),
    ),
    Stage(
        "03_candidates",
        "candidates",
        "Candidates",
        "candidates",
        "fit every candidate generator on history and on history + labels",
        ("01_data",),
        ("seed", "candidates", "ranking.train_users"),
        ("{outputs}/candidates", "?{outputs}/models/history", "?{outputs}/models/als*"),
    ),
    Stage(
        "04_ranking",
        "ranking",
        "Ranking",
        "ranking",
        "CatBoost over the merged candidates: outputs/<run>/recommendations.parquet",
        ("01_data", "03_candidates"),
        ("seed", "ranking", "candidates.audio"),
        ("{outputs}/recommendations.parquet", "{outputs}/ranking", "{outputs}/models/ranker*"),
    ),
    Stage(
        "05_evaluation",
        "evaluate",
        "Evaluation",
        "evaluation",
        "every model on the test window with intervals: outputs/<run>/metrics.parquet",
        ("01_data", "03_candidates", "04_ranking"),
        ("seed", "evaluation"),
        ("{outputs}/metrics.parquet", "{outputs}/metrics.json", "{outputs}/evaluation.json"),
    ),
    Stage(
        "06_ab_test",
        "abtest",
        "A/B test (the test window replayed through the service)",
        "A/B replay",
        'replay the test window through the service as an A/B test (ABTEST="max_users=null")',
        ("01_data", "03_candidates", "04_ranking"),
        ("seed", "service"),
        ("{outputs}/service/abtest.json", "?{outputs}/service/abtest.sqlite*"),
        on_demand=True,
        param_var="ABTEST",
    ),
    Stage(
        "07_tuning",
        "tune",
        "Tuning (the models' parameters searched on the labels window)",
        "tuning",
        "search the generators' and the ranker's parameters on the labels window (TUNE=\"trials=5\")",
        ("01_data", "03_candidates"),
        ("seed", "tuning", "candidates", "ranking"),
        ("{outputs}/tuning",),
        on_demand=True,
        param_var="TUNE",
    ),
)
BY_NAME = {s.name: s for s in STAGES}
#: What ``make all`` runs, in order; the on-demand stages run only when asked.
PIPELINE = tuple(s.name for s in STAGES if not s.on_demand)
ON_DEMAND = tuple(s.name for s in STAGES if s.on_demand)


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise KeyError(f"no stage {name!r} (stages: {', '.join(BY_NAME)})")
    return BY_NAME[name]


# --------------------------------------------------------------------------- artefacts
def artefact_paths(s: Stage, paths: RunPaths) -> list[tuple[Path, bool]]:
    """``(path, required)`` of every artefact of ``s`` that exists or must exist."""
    out = []
    for pattern in s.artefacts:
        required = not pattern.startswith("?")
        text = pattern.lstrip("?").format(data=paths.data, outputs=paths.outputs)
        if text.endswith("*"):
            path = Path(text)
            out += [(p, False) for p in sorted(path.parent.glob(path.name))]
        else:
            out.append((Path(text), required))
    out.append((paths.notebook(s.name), True))
    return out


def _relative(path: Path, paths: RunPaths) -> str:
    return str(path.relative_to(paths.root)) if path.is_relative_to(paths.root) else str(path)


def signature(s: Stage, paths: RunPaths) -> dict[str, list[int]]:
    """Size and modification time of every file of the stage's artefacts (folders walked)."""
    sig = {}
    for path, _ in artefact_paths(s, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and not f.name.startswith("."):
                st = f.stat()
                sig[_relative(f, paths)] = [st.st_size, st.st_mtime_ns]
    return sig


# --------------------------------------------------------------------------- code
def _module_file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_modules(package: str) -> list[str]:
    folder = PACKAGE_ROOT.joinpath(*package.split(".")[1:])
    return sorted(f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


def _import_nodes(tree: ast.AST, top_level_only: bool) -> Iterator[ast.AST]:
    """The nodes that can import: everywhere (functions' imports run when they are called), or at
    module level only; never under ``if TYPE_CHECKING:``."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack += node.orelse
            continue
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        stack += ast.iter_child_nodes(node)


def imported_modules(tree: ast.AST, top_level_only: bool = False) -> set[str]:
    """``musicrec`` modules a piece of code imports: import statements, and
    ``importlib.import_module(f"musicrec.pkg.{name}")`` (every module of ``musicrec.pkg``)."""
    found: set[str] = set()
    for node in _import_nodes(tree, top_level_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "musicrec"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "musicrec":
            found.add(node.module)
            # ``from musicrec import evaluation``: a submodule, when there is such a file
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if _module_file(f"{node.module}.{a.name}") is not None
            }
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
        ):
            arg = node.args[0]
            text = (
                arg.value
                if isinstance(arg, ast.Constant)
                else arg.values[0].value
                if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant)
                else ""
            )
            if isinstance(text, str) and text.startswith("musicrec."):
                if isinstance(arg, ast.JoinedStr):
                    found |= set(_package_modules(text.rstrip(".")))
                else:
                    found.add(text)
    return found


_IMPORTS: dict[tuple[Path, int, int], set[str]] = {}


def _file_imports(file: Path) -> set[str]:
    """:func:`imported_modules` of a module file, cached by its size and time."""
    stat = file.stat()
    key = (file, stat.st_size, stat.st_mtime_ns)
    if key not in _IMPORTS:
        # a package's __init__ runs on import, but not the functions it defines (lazy imports)
        tree = ast.parse(file.read_text())
        _IMPORTS[key] = imported_modules(tree, top_level_only=file.name == "__init__.py")
    return _IMPORTS[key]


def _with_parents(module: str) -> set[str]:
    """A module and the packages above it (importing it runs their ``__init__``)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def notebook_code(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def code_files(notebook: Path) -> dict[str, Path]:
    """Every ``musicrec`` module the notebook imports, transitively, by name (presentation
    modules and what only they import left out). Conservative: a module counts with every
    import in it, those inside functions included."""
    pending = set(imported_modules(ast.parse(notebook_code(notebook))))
    seen: dict[str, Path] = {}
    while pending:
        module = pending.pop()
        for name in _with_parents(module):
            if name in seen or name in PRESENTATION:
                continue
            file = _module_file(name)
            if file is None:
                continue
            seen[name] = file
            pending |= _file_imports(file)
    return dict(sorted(seen.items()))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# --------------------------------------------------------------------------- fingerprints
def section_values(profile: Profile, sections: tuple[str, ...]) -> dict[str, object]:
    """The profile's values at dotted ``sections`` (``ranking``, ``ranking.train_users``), as JSON."""
    dumped = profile.model_dump(mode="json")
    values = {}
    for key in sections:
        value: object = dumped
        for part in key.split("."):
            value = value[part] if isinstance(value, dict) else None
        values[key] = value
    return values


def fingerprint(s: Stage, profile: Profile, paths: RunPaths, data_path: str | None = None) -> dict:
    """What the stage's outputs depend on (see the module docstring); stored in its stamp."""
    notebook = paths.root / s.notebook
    code = code_files(notebook) if notebook.is_file() else {}
    upstream = {}
    for name in s.upstream:
        stamp = read_stamp(paths, name)
        upstream[name] = stamp.get("artefacts") if stamp else None
    return {
        "notebook": _sha(notebook) if notebook.is_file() else None,
        "code": {name: _sha(file) for name, file in code.items()},
        "sections": section_values(profile, s.sections),
        "data_path": (data_path or "") if s.reads_data_path else None,
        "engine": profile.engine,
        "upstream": upstream,
    }


def stamp_path(paths: RunPaths, name: str) -> Path:
    return paths.stamps / name


def read_stamp(paths: RunPaths, name: str) -> dict | None:
    path = stamp_path(paths, name)
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _differences(old: dict, new: dict) -> list[str]:
    why = []
    if old.get("notebook") != new["notebook"]:
        why.append("its notebook changed")
    old_code = old.get("code", {})
    changed = sorted(m for m in set(old_code) | set(new["code"]) if old_code.get(m) != new["code"].get(m))
    if changed:
        why.append("code changed: " + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else ""))
    old_sections = old.get("sections", {})
    keys = sorted(k for k in new["sections"] if old_sections.get(k) != new["sections"][k])
    if keys:
        why.append("profile changed: " + ", ".join(keys))
    if old.get("data_path") != new["data_path"]:
        why.append(f"DATA_PATH changed ({old.get('data_path')!r} -> {new['data_path']!r})")
    # stamps from before the engine switch have no engine: they ran on the local engine
    if old.get("engine", "local") != new["engine"]:
        why.append(f"ENGINE changed ({old.get('engine', 'local')!r} -> {new['engine']!r})")
    ups = sorted(n for n in new["upstream"] if old.get("upstream", {}).get(n) != new["upstream"][n])
    if ups:
        why.append("upstream artefacts changed: " + ", ".join(ups))
    return why


def staleness(s: Stage, profile: Profile, paths: RunPaths, data_path: str | None = None) -> list[str]:
    """Why ``s`` must run (empty: it is fresh), upstream staleness not included."""
    if (paths.previous / s.name).exists():
        return ["its last run was interrupted"]
    stamp = read_stamp(paths, s.name)
    if stamp is None:
        return ["it has not run"]
    missing = [_relative(p, paths) for p, required in artefact_paths(s, paths) if required and not p.exists()]
    if missing:
        return ["artefacts missing: " + ", ".join(missing)]
    if stamp.get("artefacts") != signature(s, paths):
        return ["its artefacts changed since it ran"]
    return _differences(stamp.get("fingerprint", {}), fingerprint(s, profile, paths, data_path))


def plan(
    profile: Profile,
    paths: RunPaths,
    data_path: str | None = None,
    names: tuple[str, ...] = PIPELINE + ON_DEMAND,
) -> dict[str, list[str]]:
    """``{stage: reasons}`` of the stale stages among ``names``, in pipeline order; a stage
    downstream of a stale one is stale ("upstream X reruns"). An on-demand stage that never ran
    is left out: nothing asked for it (its rule runs it anyway when asked, its stamp being absent)."""
    stale: dict[str, list[str]] = {}
    for s in STAGES:
        if s.name not in names:
            continue
        if s.on_demand and read_stamp(paths, s.name) is None and not (paths.previous / s.name).exists():
            continue
        ups = [u for u in s.upstream if u in stale]
        why = staleness(s, profile, paths, data_path)
        if ups:
            why = [f"upstream {', '.join(ups)} reruns", *why]
        if why:
            stale[s.name] = why
    return stale


# --------------------------------------------------------------------------- runs
class RunLocked(RuntimeError):
    """Another process holds the run folder."""


@contextlib.contextmanager
def run_lock(paths: RunPaths, what: str) -> Iterator[None]:
    """Hold ``outputs/<run>/.lock`` (an advisory lock) while the block runs; refuse at once, naming the
    holder, when another process holds it."""
    paths.outputs.mkdir(parents=True, exist_ok=True)
    lock = paths.lock
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunLocked(
                f"run {paths.run!r} is in use by {holder}: wait for it to finish, "
                f"or stop it (lock file {lock})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} ({what}, since {dt.datetime.now().isoformat(timespec='seconds')})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _move(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError:  # another file system
        shutil.move(str(source), str(target))


def _aside(paths: RunPaths, name: str) -> Path:
    return paths.previous / name


def _drop(aside: Path) -> None:
    shutil.rmtree(aside)
    with contextlib.suppress(OSError):
        aside.parent.rmdir()  # .previous/ itself, once no stage is running


def recover(s: Stage, paths: RunPaths) -> bool:
    """Undo an interrupted run of ``s``: its partial artefacts removed, the previous ones (and their
    stamp) back in place, leftover temporary files removed. True when there was one to undo."""
    aside = _aside(paths, s.name)
    for leftover in paths.notebooks.glob(f".{s.name}.*"):
        leftover.unlink(missing_ok=True)
    if not aside.exists():
        return False
    index = read_json(aside / "index.json") if (aside / "index.json").is_file() else {}
    for path, _ in artefact_paths(s, paths):
        if path.exists():
            _remove(path)
    for moved, original in index.get("moved", {}).items():
        if (aside / moved).exists():
            _move(aside / moved, Path(original))
    _drop(aside)
    return True


@contextlib.contextmanager
def transaction(s: Stage, profile: Profile, paths: RunPaths, data_path: str | None = None) -> Iterator[None]:
    """Run a stage all or nothing (see the module docstring); on success write its stamp."""
    recover(s, paths)
    started = fingerprint(s, profile, paths, data_path)  # an edit made while it runs: stale again
    aside = _aside(paths, s.name)
    aside.mkdir(parents=True)
    moved = {}
    stamp = stamp_path(paths, s.name)
    for i, path in enumerate([stamp] + [p for p, _ in artefact_paths(s, paths)]):
        if path.exists():
            _move(path, aside / str(i))
            moved[str(i)] = str(path)
    write_json({"stage": s.name, "moved": moved}, aside / "index.json")
    try:
        yield
    except BaseException:
        recover(s, paths)
        raise
    write_json(
        {
            "stage": s.name,
            "fingerprint": started,
            "artefacts": signature(s, paths),
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
        },
        stamp,
    )
    _drop(aside)


def makefile_rules() -> str:
    """The Makefile's stage rules, generated from :data:`STAGES` (``musicrec makefile-rules``)."""
    lines = []
    for s in STAGES:
        ups = " ".join(f"$(STAMPS)/{u}" for u in s.upstream)
        # an on-demand stage takes notebook parameters from make (ABTEST), and then always reruns
        extra = f" $(if $({s.param_var}),always)" if s.param_var else ""
        lines.append(
            f"$(STAMPS)/{s.name}: $(call stale,{s.name}){extra}{' ' + ups if ups else ''} | $(READY)"
        )
        if s.on_demand:  # not part of `all`: its page is rendered when it runs
            params = f" $(foreach p,$({s.param_var}),--param '$(p)')" if s.param_var else ""
            lines.append(f"\t$(STAGE) {s.name}{params}")
            lines.append("\t$(REPORT)")
        else:
            lines.append(f"\t$(STAGE) {s.name}")
        lines.append("")
    pipeline = " ".join(f"$(STAMPS)/{n}" for n in PIPELINE)
    lines.append(f"outputs/$(RUN)/reports/index.html: {pipeline} src/musicrec/report.py | $(READY)")
    lines.append("\t$(REPORT)")
    lines.append("")
    width = max(len(s.target) for s in STAGES) + 1
    for s in STAGES:
        lines.append(f"{(s.target + ':'):<{width}} $(STAMPS)/{s.name} ## {s.summary}")
    return "\n".join(lines) + "\n"
