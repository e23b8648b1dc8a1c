"""Looking at users: one user's history beside every model's list, with names and the test hits.

A reading aid in the spirit of RecTools' visual app: pick a user, see the latest
listens the final lists were made from (the ``history`` and ``labels`` windows) in
one column and each model's top ``k`` in the next ones, with track and artist names
from ``catalog_names``; the tracks the user went on to listen to in the ``test``
window are the hits, highlighted and marked ``✓``.

* :func:`user_view`: the data for one user, read with filters on ``user_id`` (every
  artefact is sorted by user, so a read touches one row group of each file and takes
  a fraction of a second at the full scale);
* :func:`sample_users`: a light, a medium and a heavy listener (the evaluation's
  history-length terciles), chosen reproducibly;
* :func:`explorer_html`: a static HTML fragment for a few users (the rendered
  report strips code and runs no widgets);
* :func:`explorer_widget`: the same HTML under a user box, a ``k`` slider and a
  model selection, for JupyterLab.

The models and their lists are the evaluation's (:func:`musicrec.evaluation.model_lists`):
``final`` (the user's rows of ``recommendations.parquet``; a cold user's is the
top-popular list), then each generator fitted on history + labels that wrote a
per-user file (``random``, ``personal_als``, ``i2i_history``, ``item_knn``, ``content``, ``audio``),
and ``top_popular`` made per user (heard tracks removed, from
:func:`musicrec.evaluation.popular_order`). The item-to-item files keyed by track
(``similar``, ``content_similar``, ``audio_similar``) are not shown as such: the
evaluation judges them through the per-user lists the candidates stage made from
them (``i2i_history``, ``content``, ``audio``), and so does the explorer.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from musicrec.evaluation.common import GENERATORS, HEAVY, LIGHT, MEDIUM
from musicrec.evaluation.lists import _cut_lists, popular_order, popularity
from musicrec.evaluation.segments import user_segments
from musicrec.io import RunPaths
from musicrec.names import with_names
from musicrec.schema import C
from musicrec.split import Windows

FINAL = "final"
#: The explorer's column order: the final list first, then the evaluation's generators.
MODEL_ORDER = (FINAL, *(name for name in GENERATORS if name != "random"), "random")
#: The widget's largest k (the final list holds 100 tracks a user).
WIDGET_MAX_K = 50
_LISTENERS_SCHEMA = {C.track_id: pl.Int32, "listeners": pl.Int64}
_NAMED = {C.track_id: pl.Int32, "track": pl.Utf8, "artist": pl.Utf8}


class UnknownUserError(LookupError):
    """A user id with no listen and no list in the run."""


class NotRankedError(FileNotFoundError):
    """A run whose ranking (or an earlier) stage has not written its artefacts yet."""


@dataclass(frozen=True)
class UserView:
    """One user's side of the run: latest history, each model's list, the test listens.

    Attributes
    ----------
    user_id
        The user, in the source's id space.
    history
        ``started_at, window, track_id, track, artist``: the latest listens before
        ``test_start`` (``window`` is ``history`` or ``labels``), latest first.
    n_history
        The number of all the user's listens before ``test_start`` (0: a cold user).
    test
        ``started_at, track_id, track, artist, found``: the user's listens in the
        ``test`` window, in time order; ``found``: in at least one shown list.
    lists
        ``{model: rank, track_id, track, artist, hit}``, in :data:`MODEL_ORDER`;
        ``hit``: the user listened to the track in the ``test`` window. A model with
        no list for the user has an empty frame.
    final_source
        The ``source`` of the user's rows of ``recommendations.parquet`` (``final``
        for the ranker's list, ``top_popular`` for a cold user's), or ``None``.
    test_start
        The first day of the ``test`` window, for captions.
    """

    user_id: int
    history: pl.DataFrame
    n_history: int
    test: pl.DataFrame
    lists: dict[str, pl.DataFrame] = field(default_factory=dict)
    final_source: str | None = None
    test_start: str = ""

    @property
    def cold(self) -> bool:
        """No listen before the test window: served the top-popular list."""
        return self.n_history == 0

    def hits(self) -> pl.DataFrame:
        """``model, listed, hits``: each model's list length and its test-window hits.

        >>> view = UserView(1, pl.DataFrame(), 3, pl.DataFrame(),
        ...                 {"final": pl.DataFrame({"track_id": [5, 6], "hit": [True, False]})})
        >>> view.hits().row(0)
        ('final', 2, 1)
        """
        return pl.DataFrame(
            {
                "model": list(self.lists),
                "listed": [frame.height for frame in self.lists.values()],
                "hits": [int(frame.get_column("hit").sum()) for frame in self.lists.values()],
            },
            schema={"model": pl.Utf8, "listed": pl.Int64, "hits": pl.Int64},
        )

    def top(self, k: int, models: Iterable[str] | None = None, n_history: int | None = None) -> UserView:
        """The same view cut to the top ``k`` of ``models`` (default: all) and ``n_history`` listens.

        ``test.found`` is recomputed over the lists kept.
        """
        keep = list(self.lists) if models is None else [m for m in models if m in self.lists]
        lists = {m: self.lists[m].filter(pl.col(C.rank) <= k) for m in keep}
        history = self.history if n_history is None else self.history.head(n_history)
        return replace(self, lists=lists, history=history, test=_mark_found(self.test, lists))


def _make_hint(paths: RunPaths, target: str) -> str:
    """``make <target> PARAMS=...`` for the run; a scratch run (``<run>-lab``) names make's profile."""
    own = paths.root / "params" / f"{paths.run}.yaml"
    base, sep, _ = paths.run.rpartition("-")
    if not own.is_file() and sep and (paths.root / "params" / f"{base}.yaml").is_file():
        return (
            f"run `make {target} PARAMS=params/{base}.yaml`, then delete outputs/{paths.run}/ so that the "
            f"scratch run is seeded again from make's run (or run the stage's notebook by hand)"
        )
    return f"run `make {target} PARAMS=params/{paths.run}.yaml` (the profile whose run_name is {paths.run!r})"


def _require(paths: RunPaths, ranked: bool = True) -> None:
    """Clear errors for a run the explorer cannot read yet (no data; not ranked), naming the make target."""
    if not paths.interactions.is_file() or not paths.split.is_file():
        raise NotRankedError(
            f"run {paths.run!r} has no data yet ({paths.interactions} or {paths.split} is missing): "
            + _make_hint(paths, "data")
        )
    if ranked and not paths.recommendations.is_file():
        raise NotRankedError(
            f"run {paths.run!r} has not been ranked yet ({paths.recommendations} is missing): "
            + _make_hint(paths, "ranking")
        )


def available_models(paths: RunPaths) -> list[str]:
    """The models the explorer can show for the run, in :data:`MODEL_ORDER`.

    ``final`` when ``recommendations.parquet`` exists, and each generator whose
    per-user file (``top_popular``: its global list) the candidates stage wrote.
    """
    present = {FINAL} if paths.recommendations.is_file() else set()
    present |= {name for name in GENERATORS if paths.candidate_list(name).is_file()}
    return [m for m in MODEL_ORDER if m in present]


def _one_user(path, user_id: int) -> pl.LazyFrame:
    # an equality filter is pushed into the parquet scan and skips the other users' row groups
    # (a semi join with a one-row frame would read the whole file)
    return pl.scan_parquet(path).filter(pl.col(C.user_id) == user_id)


def _test_start(windows: Windows, listens: pl.DataFrame) -> str:
    """When the test window begins, as the page says it: the common date, or under the per-user
    protocol this user's own first test listen."""
    if windows.per_user is None:
        return windows.test_start.isoformat()
    test = listens.filter(pl.col("window") == "test").get_column(C.started_at)
    return f"{test.min():%Y-%m-%d %H:%M}, this user's own boundary" if test.len() else "none for this user"


@functools.lru_cache(maxsize=4)
def _popularity(paths: RunPaths, stamp: float) -> pl.DataFrame:
    return popularity(paths)


def _catalogue_size(paths: RunPaths) -> int:
    return int(pl.scan_parquet(paths.tracks).select(pl.len()).collect().item())


def _top_popular(paths: RunPaths, heard: pl.Series, k: int, listeners: pl.DataFrame | None) -> pl.DataFrame:
    """The global top-popular order without the user's heard tracks, ranks recomputed.

    For one user this is :func:`musicrec.evaluation.top_popular_lists`. The global
    order is :func:`musicrec.evaluation.popular_order`; its head (the top-popular
    file) needs no popularity count, so the count over every listen is made (once per
    run and process) only when ``listeners`` is not given and the user has heard so
    much of the head that fewer than ``k`` tracks are left.
    """
    order = popular_order(
        paths, listeners if listeners is not None else pl.DataFrame(schema=_LISTENERS_SCHEMA)
    )
    unheard = order.filter(~pl.col(C.track_id).is_in(heard.cast(pl.Int32).implode()))
    if unheard.height < k and listeners is None and order.height < _catalogue_size(paths):
        return _top_popular(paths, heard, k, _popularity(paths, paths.interactions.stat().st_mtime))
    return unheard.head(k).select(C.track_id, pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias(C.rank))


def _nearest_users(paths: RunPaths, user_id: int) -> list[int]:
    """The listed users just below and above ``user_id`` (for an error message)."""
    ids = pl.scan_parquet(paths.recommendations).select(C.user_id)
    below = ids.filter(pl.col(C.user_id) < user_id).select(pl.col(C.user_id).max()).collect().item()
    above = ids.filter(pl.col(C.user_id) > user_id).select(pl.col(C.user_id).min()).collect().item()
    return [int(u) for u in (below, above) if u is not None]


def _mark_found(test: pl.DataFrame, lists: Mapping[str, pl.DataFrame]) -> pl.DataFrame:
    listed = [frame.get_column(C.track_id) for frame in lists.values() if frame.height]
    ids = pl.concat(listed).unique() if listed else pl.Series(C.track_id, [], dtype=pl.Int32)
    return test.with_columns(pl.col(C.track_id).is_in(ids.implode()).alias("found"))


def user_view(
    paths: RunPaths,
    user_id: int,
    k: int = 10,
    n_history: int = 20,
    models: Iterable[str] | None = None,
    listeners: pl.DataFrame | None = None,
) -> UserView:
    """Gather one user's latest history, every model's top ``k`` and the test-window hits.

    Parameters
    ----------
    paths
        The run (:class:`musicrec.io.RunPaths`); it must have been ranked.
    user_id
        The user, in the source's id space.
    k
        The length of each model's list.
    n_history
        How many of the latest listens before ``test_start`` to keep.
    models
        The models to read (default: :func:`available_models`).
    listeners
        :func:`musicrec.evaluation.popularity`, when already computed (the evaluation
        notebook has it); only needed for a user who heard most of the top-popular list.

    Returns
    -------
    UserView
        Polars frames with ``track`` and ``artist`` names (null where the catalogue
        has none).

    Raises
    ------
    NotRankedError
        The run has no ``recommendations.parquet`` (or no data): the message names
        the make target.
    UnknownUserError
        The user has no listen and no list in the run: the message suggests users.

    Examples
    --------
    >>> view = user_view(RunPaths(Path("."), "tiny"), 12, k=5)  # doctest: +SKIP
    >>> view.hits()  # doctest: +SKIP
    """
    _require(paths)
    uid = int(user_id)
    windows = paths.windows()
    wanted = available_models(paths) if models is None else list(models)
    listens = (
        windows.with_window(
            _one_user(paths.interactions, uid).select(C.user_id, C.track_id, C.started_at, C.track_seq)
        )
        .drop(C.user_id)
        .collect()
    )
    recs = _one_user(paths.recommendations, uid).collect()
    if listens.height == 0 and recs.height == 0:
        near = " or ".join(str(u) for u in _nearest_users(paths, uid))
        raise UnknownUserError(
            f"user {uid} is not in run {paths.run!r}: no listen in {paths.interactions} and no list in "
            f"{paths.recommendations}; try user {near or '(none listed)'}, or one of "
            "musicrec.explorer.sample_users(paths) (a light, a medium and a heavy listener)"
        )
    before = listens.filter(pl.col("window").is_in(("history", "labels")))  # what the models saw
    history = before.sort([C.started_at, C.track_seq], descending=True).head(n_history)
    test = listens.filter(pl.col("window") == "test").sort([C.started_at, C.track_seq])

    one = pl.DataFrame({C.user_id: pl.Series([uid], dtype=pl.Int32)})
    lists: dict[str, pl.DataFrame] = {}
    for name in wanted:
        if name == FINAL:
            frame = _cut_lists(recs, one, k).collect()
        elif name == "top_popular":
            frame = _top_popular(paths, before.get_column(C.track_id), k, listeners)
        elif name in GENERATORS and paths.candidate_list(name).is_file():
            frame = _cut_lists(_one_user(paths.candidate_list(name), uid), one, k).collect()
        else:
            raise ValueError(f"no model {name!r} in run {paths.run!r}; models: {available_models(paths)}")
        lists[name] = frame.select(C.track_id, C.rank).sort(C.rank)

    shown = [history, test, *lists.values()]
    ids = pl.concat([f.get_column(C.track_id).cast(pl.Int32) for f in shown]).unique()
    named = with_names(pl.DataFrame({C.track_id: ids}), paths).select(list(_NAMED)).cast(_NAMED)
    hits = test.get_column(C.track_id).implode()

    def names(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(pl.col(C.track_id).cast(pl.Int32)).join(
            named, on=C.track_id, how="left", maintain_order="left"
        )

    lists = {
        m: names(f).select(C.rank, C.track_id, "track", "artist", pl.col(C.track_id).is_in(hits).alias("hit"))
        for m, f in lists.items()
    }
    sources = recs.get_column("source").unique().sort().to_list() if "source" in recs.columns else []
    return UserView(
        user_id=uid,
        history=names(history).select(C.started_at, "window", C.track_id, "track", "artist"),
        n_history=before.height,
        test=_mark_found(names(test).select(C.started_at, C.track_id, "track", "artist"), lists),
        lists=lists,
        final_source=", ".join(sources) if sources else None,
        test_start=_test_start(windows, listens),
    )


def sample_users(
    paths: RunPaths | None, n: int = 1, seed: int = 0, segments: pl.DataFrame | None = None
) -> dict[str, int]:
    """A few users to look at: ``n`` light, medium and heavy listeners with a test listen.

    The segments are the evaluation's (:func:`musicrec.evaluation.user_segments`: the
    warm users with a test-window listen, in terciles of their number of listens
    before ``test_start``), so a sample user's rows are part of the metrics. The
    choice is uniform within each segment and the same for the same ``seed``.

    Parameters
    ----------
    paths
        The run (``None`` only with ``segments``).
    n
        Users per segment.
    seed
        The choice's seed (the notebook passes the profile's).
    segments
        ``user_id, segment`` when already computed (the evaluation notebook has it);
        computing it reads every listen once (some 3 s and 1 GB at the full scale).

    Returns
    -------
    dict
        ``{label: user_id}``, labels ``light``, ``medium``, ``heavy`` (``light 2`` ...
        when ``n > 1``), in that order.

    Examples
    --------
    >>> segments = pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6],
    ...                          "segment": ["light", "light", "medium", "medium", "heavy", "cold"]})
    >>> users = sample_users(None, seed=0, segments=segments)
    >>> list(users), users["heavy"]
    (['light', 'medium', 'heavy'], 5)
    """
    if segments is None:
        _require(paths, ranked=False)
        segments = user_segments(paths)
    rng = np.random.default_rng(seed)
    chosen: dict[str, int] = {}
    for segment in (LIGHT, MEDIUM, HEAVY):
        ids = np.sort(segments.filter(pl.col("segment") == segment).get_column(C.user_id).to_numpy())
        picks = np.sort(rng.choice(ids, size=min(n, ids.size), replace=False)) if ids.size else []
        for i, user in enumerate(picks, 1):
            chosen[segment if n == 1 else f"{segment} {i}"] = int(user)
    return chosen


# --- HTML ------------------------------------------------------------------------------------

_STYLE = """<style>
.mr-x{font:12px/1.3 system-ui,-apple-system,'Segoe UI',sans-serif;margin:.4em 0 1.1em}
.mr-x h4{font-size:13px;margin:.2em 0 .35em}
.mr-x .mr-scroll{overflow-x:auto;max-width:100%}
.mr-x table{border-collapse:collapse;table-layout:fixed;margin:0}
.mr-x th,.mr-x td{border:1px solid #ddd;padding:2px 5px;width:12em;max-width:12em;overflow:hidden;
text-overflow:ellipsis;white-space:nowrap;vertical-align:top;text-align:left}
.mr-x th{background:#f4f4f4;font-weight:600}
.mr-x th small{display:block;font-weight:400;color:#666}
.mr-x .mr-rank{width:2em;max-width:2em;text-align:right;color:#888}
.mr-x .mr-artist{display:block;color:#777;font-size:11px;overflow:hidden;text-overflow:ellipsis}
.mr-x .mr-day{float:right;color:#999;font-size:10px;margin-left:4px}
.mr-x td.mr-labels{background:#f7f7ff}
.mr-x td.mr-hit,.mr-x td.mr-found{background:#dcf2dc}
.mr-x .mr-mark{color:#17803a;font-weight:700;margin-right:3px}
.mr-x .mr-none{color:#999;font-style:italic}
.mr-x .mr-note{color:#666;margin:.3em 0 0}
.mr-x.mr-error{color:#a40000}
</style>"""

_HIT_MARK = '<span class="mr-mark" title="listened in the test window">✓</span>'
_ROLE = {LIGHT: "light listener", MEDIUM: "medium listener", HEAVY: "heavy listener"}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _track_cell(row: dict, classes: list[str], mark: bool, day: str = "") -> str:
    name = row.get("track")
    artist = row.get("artist") or ""
    title = f"{name or 'track'} — {artist}" if artist else (name or "track")
    title += f" (track {row[C.track_id]})"
    label = _e(name) if name else f'<span class="mr-none">track {_e(row[C.track_id])}</span>'
    parts = [_HIT_MARK if mark else "", f'<span class="mr-day">{_e(day)}</span>' if day else ""]
    parts += [f'<span class="mr-track">{label}</span>']
    if artist:
        parts.append(f'<span class="mr-artist">{_e(artist)}</span>')
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f'<td{cls} title="{_e(title)}">{"".join(parts)}</td>'


def _model_head(model: str, frame: pl.DataFrame, view: UserView) -> str:
    name = model
    if model == FINAL and view.final_source and view.final_source != FINAL:
        name = f"{model} ({view.final_source})"
    note = f"{int(frame.get_column('hit').sum())} hits of {frame.height}" if frame.height else "no list"
    return f'<th class="mr-model" data-model="{_e(model)}">{_e(name)}<small>{_e(note)}</small></th>'


def view_html(view: UserView, label: str | None = None, show_test: bool = True, style: bool = True) -> str:
    """One user's table: history, one column per model, the test listens; hits marked.

    Parameters
    ----------
    view
        :func:`user_view`'s result (cut with :meth:`UserView.top` first to shorten it).
    label
        Shown after the user id (``light`` becomes "light listener").
    show_test
        Add a last column with the user's test-window listens (those found by a shown
        list first, marked).
    style
        Include the ``<style>`` block (:func:`explorer_html` includes it once).

    Returns
    -------
    str
        An HTML fragment: ``<div class="mr-x">`` with a table; every name is escaped,
        a hit's cell has the class ``mr-hit`` and a ``✓`` mark; no external resources.

    Examples
    --------
    >>> empty = pl.DataFrame(schema={"track_id": pl.Int32, "track": pl.Utf8, "artist": pl.Utf8})
    >>> view = UserView(7, empty, 0, empty, {"final": pl.DataFrame(
    ...     {"rank": [1], "track_id": [3], "track": ["<b>&"], "artist": [None], "hit": [True]})})
    >>> "&lt;b&gt;&amp;" in view_html(view) and 'class="mr-hit"' in view_html(view)
    True
    """
    role = _ROLE.get(label or "", label)
    title = f"user {view.user_id}" + (f" · {role}" if role else "")
    if view.cold:
        title += " · cold: no listen before the test window"
    else:
        title += f" · {view.n_history} listens before the test window"
    title += f", {view.test.height} in it"
    k = max((f.height for f in view.lists.values()), default=0)
    test = view.test.sort("found", descending=True, maintain_order=True) if view.test.height else view.test
    n_rows = max(view.history.height, k, 1)

    head = ['<th class="mr-rank">#</th>']
    head.append(
        f'<th class="mr-history">history<small>latest {view.history.height} of {view.n_history}</small></th>'
    )
    head += [_model_head(m, f, view) for m, f in view.lists.items()]
    if show_test:
        found = int(test.get_column("found").sum()) if test.height else 0
        head.append(
            f'<th class="mr-test">test window<small>{test.height} listens, {found} listed</small></th>'
        )

    history = view.history.to_dicts()
    lists = {m: f.to_dicts() for m, f in view.lists.items()}
    tests = test.to_dicts()
    body = []
    for i in range(n_rows):
        cells = [f'<td class="mr-rank">{i + 1}</td>']
        if i < len(history):
            row = history[i]
            day = row[C.started_at].strftime("%m-%d") if row.get(C.started_at) is not None else ""
            cells.append(_track_cell(row, ["mr-labels"] if row["window"] == "labels" else [], False, day))
        else:
            cells.append('<td class="mr-none">none (cold)</td>' if i == 0 and view.cold else "<td></td>")
        for rows in lists.values():
            if i < len(rows):
                hit = bool(rows[i]["hit"])
                cells.append(_track_cell(rows[i], ["mr-hit"] if hit else [], hit))
            else:
                cells.append("<td></td>")
        if show_test:
            if i < len(tests) and (i < n_rows - 1 or len(tests) == n_rows):
                found = bool(tests[i]["found"])
                cells.append(_track_cell(tests[i], ["mr-found"] if found else [], found))
            elif i < len(tests):
                cells.append(f'<td class="mr-none">… {len(tests) - i} more</td>')
            else:
                cells.append("<td></td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        f'<p class="mr-note">✓ and green: listened in the test window (from {_e(view.test_start)}); '
        "history latest first, tinted rows are the labels window.</p>"
    )
    return (
        (_STYLE if style else "")
        + f'<div class="mr-x" data-user="{view.user_id}"><h4>{_e(title)}</h4><div class="mr-scroll">'
        + f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        + note
        + "</div>"
    )


def _labelled(users: Mapping[str, int] | Iterable[int]) -> list[tuple[str | None, int]]:
    if isinstance(users, Mapping):
        return [(str(label), int(u)) for label, u in users.items()]
    if isinstance(users, int | np.integer):
        return [(None, int(users))]
    return [(None, int(u)) for u in users]


def explorer_html(
    paths: RunPaths,
    users: Mapping[str, int] | Iterable[int],
    k: int = 10,
    n_history: int = 10,
    models: Sequence[str] | None = None,
    listeners: pl.DataFrame | None = None,
    show_test: bool = True,
) -> str:
    """A static HTML fragment for a few users: history and each model's top ``k``, hits marked.

    For the rendered report, which strips code and runs no widgets: display it with
    ``IPython.display.HTML``. Self-contained (one ``<style>`` block, scoped to
    ``.mr-x``; no script, no external resource), every name escaped.

    Parameters
    ----------
    paths
        The run; it must have been ranked.
    users
        User ids, or ``{label: user_id}`` (:func:`sample_users`).
    k
        The length of each model's list.
    n_history
        The latest listens shown before the test window.
    models
        The model columns (default: :func:`available_models`).
    listeners
        :func:`musicrec.evaluation.popularity`, when already computed.
    show_test
        Add each user's test-window listens as a last column.

    Examples
    --------
    >>> paths = RunPaths(Path("."), "tiny")  # doctest: +SKIP
    >>> display(HTML(explorer_html(paths, sample_users(paths), k=10)))  # doctest: +SKIP
    """
    parts = [_STYLE]
    for label, user in _labelled(users):
        view = user_view(paths, user, k=k, n_history=n_history, models=models, listeners=listeners)
        parts.append(view_html(view, label, show_test=show_test, style=False))
    return "\n".join(parts)


# --- the widget ------------------------------------------------------------------------------


def _error_html(message: str) -> str:
    return f'{_STYLE}<div class="mr-x mr-error">{_e(message)}</div>'


@dataclass
class Explorer:
    """The widget of :func:`explorer_widget` and its controls (displayed as ``ui``)."""

    ui: Any
    user: Any
    k: Any
    models: Any
    history: Any
    output: Any
    samples: dict[str, int]
    views: dict[int, UserView] = field(default_factory=dict)

    @property
    def html(self) -> str:
        """The HTML shown now."""
        return self.output.outputs[0]["data"]["text/html"] if self.output.outputs else ""

    def _repr_mimebundle_(self, **kwargs):
        return self.ui._repr_mimebundle_(**kwargs)


_USER_ID = re.compile(r"^\s*(-?\d+)")


def _parse_user(text: str) -> int:
    match = _USER_ID.match(text or "")
    if not match:
        raise ValueError(f"type a user id (a number), not {text!r}")
    return int(match.group(1))


def explorer_widget(
    paths: RunPaths,
    k: int = 10,
    users: Mapping[str, int] | None = None,
    n_history: int = 10,
    seed: int = 0,
    segments: pl.DataFrame | None = None,
    listeners: pl.DataFrame | None = None,
    cache: int = 32,
) -> Explorer:
    """An ipywidgets explorer for JupyterLab: pick a user, ``k`` and models; see :func:`view_html`.

    A user box (a combo box: the sample users listed, any id typed, applied on
    Enter), a ``k`` slider, a history slider and a model multi-select over an
    ``Output`` that shows the same HTML as :func:`explorer_html`. A user is read once
    (at the sliders' largest values) and kept (the last ``cache`` users); moving a
    slider or the selection only re-renders.

    Parameters
    ----------
    paths
        The run; it must have been ranked.
    k
        The initial list length.
    users
        ``{label: user_id}`` to offer (default: :func:`sample_users` with ``seed``
        and ``segments``).
    n_history
        The initial number of history listens shown.
    seed, segments
        Passed to :func:`sample_users`.
    listeners
        :func:`musicrec.evaluation.popularity`, when already computed.
    cache
        How many users' views to keep.

    Returns
    -------
    Explorer
        Displayable (the last expression of a cell shows it); its ``user``, ``k``,
        ``models``, ``history`` and ``output`` widgets can be driven from code.

    Examples
    --------
    >>> explorer_widget(RunPaths(Path("."), "tiny"), k=10)  # doctest: +SKIP
    """
    import ipywidgets as w

    _require(paths)
    samples = dict(users) if users is not None else sample_users(paths, seed=seed, segments=segments)
    options = [f"{u} ({label})" for label, u in samples.items()]
    models = available_models(paths)
    max_k = max(WIDGET_MAX_K, k)
    max_history = max(WIDGET_MAX_K, n_history)
    user_box = w.Combobox(
        value=options[0] if options else "",
        options=options,
        placeholder="user id",
        description="user",
        continuous_update=False,
        ensure_option=False,
    )
    k_slider = w.IntSlider(value=k, min=1, max=max_k, description="k", continuous_update=False)
    history_slider = w.IntSlider(
        value=n_history, min=0, max=max_history, description="history", continuous_update=False
    )
    model_select = w.SelectMultiple(
        options=models, value=tuple(models), description="models", rows=min(len(models), 8)
    )
    output = w.Output()
    explorer = Explorer(
        ui=w.VBox([w.HBox([user_box, k_slider, history_slider]), model_select, output]),
        user=user_box,
        k=k_slider,
        models=model_select,
        history=history_slider,
        output=output,
        samples=samples,
    )
    labels = {u: label for label, u in samples.items()}

    def view_of(user: int) -> UserView:
        if user not in explorer.views:
            if len(explorer.views) >= cache:
                explorer.views.pop(next(iter(explorer.views)))
            explorer.views[user] = user_view(
                paths, user, k=max_k, n_history=max_history, models=models, listeners=listeners
            )
        return explorer.views[user]

    def render(_change=None) -> None:
        try:
            user = _parse_user(user_box.value)
            view = view_of(user).top(k_slider.value, model_select.value, history_slider.value)
            text = view_html(view, labels.get(user))
        except (UnknownUserError, ValueError) as error:
            hint = f" Sample users: {', '.join(options)}." if options else ""
            text = _error_html(f"{error}.{hint}" if not str(error).endswith(".") else f"{error}{hint}")
        output.outputs = (
            {
                "output_type": "display_data",
                "data": {"text/html": text, "text/plain": "explorer"},
                "metadata": {},
            },
        )

    for control in (user_box, k_slider, history_slider, model_select):
        control.observe(render, names="value")
    render()
    return explorer
