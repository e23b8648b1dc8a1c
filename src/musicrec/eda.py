"""Summaries for the EDA stage, computed lazily with polars over ``data/<run>/``.

Each function returns a small frame for display; the heavy group-bys stream over
the parquet files, so they work at the full scale.
"""

from __future__ import annotations

import polars as pl

from musicrec.io import RunPaths
from musicrec.reference import YANDEX_MUSIC
from musicrec.schema import C

QUANTILES = {"p25": 0.25, "median": 0.5, "p90": 0.9, "p99": 0.99}


def _scan(paths: RunPaths) -> pl.LazyFrame:
    return pl.scan_parquet(paths.interactions)


def listens_per_user(paths: RunPaths) -> pl.Series:
    """Distinct tracks per user (one row per pair, so listens = tracks)."""
    return (
        _scan(paths)
        .group_by(C.user_id)
        .agg(pl.len().alias("listens"))
        .collect(engine="streaming")
        .get_column("listens")
    )


def listens_per_track(paths: RunPaths) -> pl.Series:
    return (
        _scan(paths)
        .group_by(C.track_id)
        .agg(pl.len().alias("listens"))
        .collect(engine="streaming")
        .get_column("listens")
    )


def distribution(values: pl.Series) -> dict[str, float]:
    """Mean, min, quantiles and max of a count distribution."""
    out = {"mean": float(values.mean()), "min": float(values.min())}
    out.update({k: float(values.quantile(q, "nearest")) for k, q in QUANTILES.items()})
    out["max"] = float(values.max())
    return out


def events_by_day(paths: RunPaths) -> pl.DataFrame:
    """Listens and active users per day."""
    return (
        _scan(paths)
        .group_by(pl.col(C.started_at).dt.date().alias("day"))
        .agg(pl.len().alias("listens"), pl.col(C.user_id).n_unique().alias("users"))
        .sort("day")
        .collect(engine="streaming")
    )


def events_by_month(paths: RunPaths) -> pl.DataFrame:
    """Listens and active users per calendar month (``YYYY-MM``)."""
    return (
        _scan(paths)
        .group_by(pl.col(C.started_at).dt.strftime("%Y-%m").alias("month"))
        .agg(pl.len().alias("listens"), pl.col(C.user_id).n_unique().alias("users"))
        .sort("month")
        .collect(engine="streaming")
    )


def _names(paths: RunPaths, kind: str) -> pl.LazyFrame:
    return (
        pl.scan_parquet(paths.catalog_names)
        .filter(pl.col(C.type) == kind)
        .select(pl.col(C.id), pl.col(C.name))
    )


def listens_by(paths: RunPaths, column: str, top: int = 15) -> pl.DataFrame:
    """Listens per genre or artist (a track counts for each of its ids), with names.

    Ids missing from ``catalog_names`` show as ``(unnamed <id>)``; tracks with no id
    in ``column`` show as ``(none)``.
    """
    kind = column.removesuffix("s")
    per_track = _scan(paths).group_by(C.track_id).agg(pl.len().alias("listens"))
    ids = pl.scan_parquet(paths.tracks).select(C.track_id, column)
    joined = (
        per_track.join(ids, on=C.track_id, how="left")
        .with_columns(
            pl.when(pl.col(column).list.len() > 0)
            .then(pl.col(column))
            .otherwise(pl.lit([None], dtype=pl.List(pl.Int32)))
            .alias(column)
        )
        .explode(column)
    )
    total = per_track.select(pl.col("listens").sum()).collect().item()
    table = (
        joined.group_by(column)
        .agg(pl.col("listens").sum())
        .sort("listens", descending=True)
        .head(top)
        .join(_names(paths, kind), left_on=column, right_on=C.id, how="left")
        .with_columns(
            pl.when(pl.col(column).is_null())
            .then(pl.lit("(none)"))
            .when(pl.col(C.name).is_null())
            .then(pl.lit("(unnamed ") + pl.col(column).cast(pl.Utf8) + pl.lit(")"))
            .otherwise(pl.col(C.name))
            .alias(C.name),
            (pl.col("listens") / total).alias("share"),
        )
        .sort("listens", descending=True)
        .collect(engine="streaming")
    )
    return table.select(column, C.name, "listens", "share")


def catalogue_gaps(paths: RunPaths) -> dict[str, int]:
    """Tracks without album, artist or genre; genre ids without a name."""
    tracks = pl.scan_parquet(paths.tracks)
    out = (
        tracks.select(
            *[
                (pl.col(c).list.len() == 0).sum().alias(f"tracks without {c[:-1]}")
                for c in (C.albums, C.artists, C.genres)
            ]
        )
        .collect()
        .to_dicts()[0]
    )
    genres = tracks.select(pl.col(C.genres).explode().drop_nulls().unique()).collect().to_series()
    named = _names(paths, "genre").collect().get_column(C.id)
    out["genre ids referenced"] = genres.len()
    out["genre ids without a name"] = int((~genres.is_in(named.implode())).sum())
    return {k: int(v) for k, v in out.items()}


def calibration_table(paths: RunPaths, split: dict) -> pl.DataFrame:
    """Real Yandex Music statistics beside the generated ones.

    Scale-free statistics (shares, ratios, per-user quantiles) compare directly;
    counts that grow with size are given per user or per track.
    """
    real = YANDEX_MUSIC
    per_user = distribution(listens_per_user(paths))
    per_track = listens_per_track(paths)
    track_dist = distribution(per_track)
    months = events_by_month(paths)
    gaps = catalogue_gaps(paths)
    n_tracks = pl.scan_parquet(paths.tracks).select(pl.len()).collect().item()
    n_users = int(_scan(paths).select(pl.col(C.user_id).n_unique()).collect().item())
    n_listens = int(per_track.sum())
    names = pl.scan_parquet(paths.catalog_names).group_by(C.type).len().collect()
    by_type = dict(zip(names.get_column(C.type), names.get_column("len"), strict=True))

    def month(table: pl.DataFrame, m: str, col: str) -> float:
        row = table.filter(pl.col("month").str.ends_with(m))
        return float(row.get_column(col).sum()) if row.height else float("nan")

    rows: list[tuple[str, float, float]] = [
        ("users per track", real["users"] / real["tracks"], n_users / n_tracks),
        ("listens per user (mean)", real["tracks_per_user"]["mean"], per_user["mean"]),
    ]
    rows += [
        (f"listens per user ({k})", real["tracks_per_user"][k], per_user[k])
        for k in ("p25", "median", "p90", "p99", "max")
    ]
    rows += [
        ("listens per track (min)", real["listens_per_track"]["min"], track_dist["min"]),
        (
            "listens per track (median / mean)",
            real["listens_per_track"]["median"] / (real["listens"] / real["tracks"]),
            track_dist["median"] / track_dist["mean"],
        ),
        (
            "listens per track (p99 / mean)",
            real["listens_per_track"]["p99"] / (real["listens"] / real["tracks"]),
            track_dist["p99"] / track_dist["mean"],
        ),
        (
            "top track's share of listens",
            real["listens_per_track"]["max"] / real["listens"],
            track_dist["max"] / n_listens,
        ),
    ]
    ev = real["events_per_month_millions"]
    act = real["active_users_per_month"]
    rows += [
        (
            "January share of listens",
            ev["2022-01"] * 1e6 / real["listens"],
            month(months, "-01", "listens") / n_listens,
        ),
        (
            "November share of listens",
            ev["2022-11"] * 1e6 / real["listens"],
            month(months, "-11", "listens") / n_listens,
        ),
        (
            "December share of listens",
            ev["2022-12"] * 1e6 / real["listens"],
            month(months, "-12", "listens") / n_listens,
        ),
        (
            "January active users share",
            act["2022-01"] / real["users"],
            month(months, "-01", "users") / n_users,
        ),
        (
            "November active users share",
            act["2022-11"] / real["users"],
            month(months, "-11", "users") / n_users,
        ),
        (
            "albums per track",
            real["catalog_names"]["album"] / real["tracks"],
            by_type.get("album", 0) / n_tracks,
        ),
        (
            "artists per track",
            real["catalog_names"]["artist"] / real["tracks"],
            by_type.get("artist", 0) / n_tracks,
        ),
        (
            "share of tracks without artist",
            real["tracks_without"]["artist"] / real["tracks"],
            gaps["tracks without artist"] / n_tracks,
        ),
        (
            "share of tracks without genre",
            real["tracks_without"]["genre"] / real["tracks"],
            gaps["tracks without genre"] / n_tracks,
        ),
        (
            "genre ids without a name",
            real["genre_ids_referenced"] - real["catalog_names"]["genre"],
            gaps["genre ids without a name"],
        ),
    ]
    test = split["windows"]["test"]
    ref = real["test_from_2022_12_16"]
    rows += [
        ("test window share of listens", ref["test_rows"] / real["listens"], test["rows"] / n_listens),
        (
            "cold users share of test users",
            ref["cold_test_users"] / ref["test_users"],
            test["cold_users"] / max(test["users"], 1),
        ),
    ]
    table = pl.DataFrame(rows, schema=["statistic", "yandex_music", "generated"], orient="row")
    return table.with_columns((pl.col("generated") / pl.col("yandex_music")).alias("ratio"))
