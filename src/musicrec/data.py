"""The data stage: generate or adapt a source, check the contract, split, write artefacts."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import polars as pl

from musicrec.config import Profile
from musicrec.io import RunPaths, write_json, write_parquet
from musicrec.schema import (
    C,
    DropReport,
    validate_catalog_names,
    validate_interactions,
    validate_interactions_lazy,
    validate_tracks,
)
from musicrec.spark import run_split
from musicrec.spark.adapters import SOURCES as SPARK_SOURCES
from musicrec.split import per_user_split, user_boundaries


def build_dataset(profile: Profile, paths: RunPaths, progress: bool = True) -> dict:
    """Write ``data/<run>/`` for the profile's source and return the data summary.

    The summary (also written to ``data/<run>/summary.json``) holds the counts, the
    rows dropped on purpose by reason, and the adapter's notes; ``split.json`` is
    written last, so its presence means the stage finished. The split is computed on the
    profile's engine (:func:`musicrec.spark.run_split`: on Spark with ``engine: spark``).
    """
    source = profile.data.source
    paths.data.mkdir(parents=True, exist_ok=True)
    paths.split.unlink(missing_ok=True)
    dropped = DropReport()
    notes: list[str] = []
    if source == "synthetic":
        from musicrec.sources.synthetic import generate

        synthetic = profile.data.synthetic
        # the windows must fit the span to be generated: say so before minutes of generating
        if not profile.split.uses_shares:
            profile.split.resolve(synthetic.start_date, synthetic.end_date)
        generated = generate(profile.data.synthetic, profile.seed, paths.data, progress=progress)
        notes += generated.notes
        tracks = validate_tracks(pl.read_parquet(paths.tracks), file=str(paths.tracks))
        validate_catalog_names(pl.read_parquet(paths.catalog_names), file=str(paths.catalog_names))
        written = set(generated.files.values())
    else:
        written = _adapt(profile, paths, dropped, notes)
        tracks = pl.read_parquet(paths.tracks)
    _remove_stale(paths, written)

    lf = pl.scan_parquet(paths.interactions)
    counts = (
        lf.select(
            pl.len().alias("rows"),
            pl.col(C.user_id).n_unique().alias("users"),
            pl.col(C.track_id).n_unique().alias("tracks_listened"),
        )
        .collect(engine="streaming")
        .to_dicts()[0]
    )
    notes += _missing_metadata_notes(tracks)
    summary = {
        "source": source,
        "raw_path": None if source == "synthetic" else str(paths.raw_source(profile)),
        **{k: int(v) for k, v in counts.items()},
        "tracks": tracks.height,
        "dropped": dropped.counts,
        "notes": notes,
    }
    write_json(summary, paths.data_summary)
    if profile.split.per_user:  # each user's own boundaries (small real sets; the local engine)
        boundaries = user_boundaries(lf, profile.split)
        write_parquet(boundaries, paths.user_boundaries)
        split = per_user_split(lf, boundaries, profile.split, str(paths.interactions))
    else:  # the time split on the profile's engine (engine: spark counts the windows on Spark)
        split = run_split(profile, paths.interactions)
    write_json(split, paths.split)
    return summary


def _adapt(profile: Profile, paths: RunPaths, dropped: DropReport, notes: list[str]) -> set[Path]:
    source = profile.data.source
    raw = paths.raw_source(profile)
    label = f"{source} data in {raw}"
    if profile.engine == "spark" and source in SPARK_SOURCES:
        written = _adapt_on_spark(profile, paths, raw, label, notes)
        if written is not None:
            return written
    module = importlib.import_module(f"musicrec.sources.{source}")
    data = module.load(raw, getattr(profile.data, source))
    tracks = validate_tracks(data.tracks, file=f"{label} (tracks)")
    names = validate_catalog_names(data.catalog_names, file=f"{label} (catalog names)")
    checks = (
        validate_interactions_lazy if isinstance(data.interactions, pl.LazyFrame) else validate_interactions
    )
    interactions = checks(
        data.interactions, track_ids=tracks.get_column(C.track_id), file=f"{label} (interactions)"
    )
    for reason, n in data.dropped.counts.items():
        dropped.add(reason, n)
    notes += data.notes
    written = {
        write_parquet(interactions, paths.interactions),  # streams a lazy frame
        write_parquet(tracks, paths.tracks),
        write_parquet(names, paths.catalog_names),
    }
    if data.track_features is not None:
        written.add(write_parquet(data.track_features, paths.track_features))
    for name, frame in data.extra.items():
        written.add(write_parquet(frame, paths.extra(name)))
    return written


def _adapt_on_spark(
    profile: Profile, paths: RunPaths, raw: Path, label: str, notes: list[str]
) -> set[Path] | None:
    """The adapter on Spark (:mod:`musicrec.spark.adapters`), or ``None`` where this input needs
    the local one (the reason goes into the notes)."""
    from musicrec.spark import adapters, spark_session

    adapters.require(raw)
    spark = spark_session(profile)
    reason = adapters.local_reason(raw, profile.data.yandex, spark)
    if reason is not None:
        notes.append(f"the adapter ran on the local engine: {reason}")
        return None
    out = {"interactions": paths.interactions, "tracks": paths.tracks, "catalog_names": paths.catalog_names}
    written = adapters.adapt_yandex(spark, raw, label, out)
    notes.append("the interactions were checked against the data contract and written on Spark")
    return written


def _remove_stale(paths: RunPaths, written: set[Path]) -> None:
    """Drop files a previous run of another source left (a stale oracle, say)."""
    keep = {Path(p).resolve() for p in written} | {paths.data_summary.resolve()}
    for item in paths.data.iterdir():
        if item.name.startswith("."):
            continue
        if item.is_dir():
            if not any(Path(p).resolve().is_relative_to(item.resolve()) for p in written):
                shutil.rmtree(item)
        elif item.resolve() not in keep:
            item.unlink()


def _missing_metadata_notes(tracks: pl.DataFrame) -> list[str]:
    """Tracks kept although they lack an album, artist or genre: counted, not dropped."""
    out = []
    for column in (C.albums, C.artists, C.genres):
        n = tracks.select(pl.col(column).list.len().eq(0).sum()).item()
        if n:
            out.append(f"{n:,} tracks have no {column[:-1]} (kept)")
    return out
