"""Synthetic Yandex-Music-like data with a hidden structure that a good model can find.

The generator writes the canonical files (``interactions``, ``tracks``,
``catalog_names``) plus ``track_features`` and, in ``oracle/``, each user's true
preferences, so that later stages can compute the best achievable ranking.

How listens arise (every step vectorised over a chunk of users):

* **Catalogue.** Genres have shares led by pop, rap, allrock, ruspop and rusrap.
  Each artist has a main genre; each track belongs to an artist and to one of the
  artist's albums (an artist's tracks are contiguous, album by album). Tracks have
  a power-law (shifted log-normal) popularity ``w``, calibrated so that listens per
  track have the published median/mean, minimum/mean and maximum shares.
* **Discovery.** A small share of streaks starts at a track drawn uniformly from the
  whole catalogue, so every track, however obscure, finds some listeners (the real
  data has at least 5 listens per track).
* **Users.** Each user has a few favourite genres with Dirichlet weights (drawn in
  proportion to genre popularity) and a few favourite artists from those genres.
  A user's number of distinct tracks follows a log-normal with the published
  median and mean, capped at the published maximum.
* **Streaks.** A user's history is a run of streaks: pick an artist (a favourite
  one, or through a favourite genre by popularity, or with a small probability any
  track at all), then listen to a geometric number of that artist's tracks, often
  continuing through the same album. Repeats are removed, so every (user, track)
  pair occurs once, as in the real data.
* **Time.** Users join uniformly over January to November (fewer in December, the
  cold users of the test window); some churn. Heavier users tend to stay longer
  (a Gaussian copula between activity and the length of the active span), which
  makes monthly listens grow over the year as in the real data; listening intensity
  also rises through the year and dips in the last month.

The true preference of user ``u`` for track ``t`` is the probability that one streak
of ``u`` starts at ``t`` (continuations and top-ups aside)::

    (1 - e - p_u) * ((1 - f) * taste_u[g_t] * P(a_t | g_t) + f * [a_t in fav_u] / F) * P(t | a_t)
    + e / n_tracks + p_u * P(t)

with discovery share ``e``, the user's chart-following share ``p_u`` and favourite-artist
share ``f``; :func:`true_preference` computes it from the compact tables in ``oracle/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import ndtri

from musicrec.candidates.base import IdPositions
from musicrec.config import SyntheticConfig
from musicrec.io import atomic_path, write_json, write_parquet
from musicrec.parallel import in_order
from musicrec.progress import bar
from musicrec.reference import YANDEX_MUSIC
from musicrec.schema import INTERACTIONS_SCHEMA, C, validate_interactions

#: Names of the leading real genres, most listened first; the rest are synthetic.
GENRE_NAMES = (
    "pop",
    "rap",
    "allrock",
    "ruspop",
    "rusrap",
    "electronics",
    "dance",
    "rusrock",
    "rnb",
    "metal",
    "alternative",
    "indie",
    "foreignbard",
    "soundtrack",
    "jazz",
    "classical",
    "folk",
    "reggae",
    "punk",
    "hardrock",
    "house",
    "techno",
    "rock",
    "dubstep",
    "country",
    "blues",
    "soul",
    "lounge",
    "ambient",
    "disco",
)
#: Shares of the five leading genres in listens (55.6M, 37.8M, 31.1M, 26.6M, 25.3M of 222.6M),
#: scaled so that tracks' second genres still leave room for the long tail.
LEADING_GENRE_SHARES = np.array([55.6, 37.8, 31.1, 26.6, 25.3]) / 222.6 * 0.72
SECOND_GENRE_SHARE = 0.25
FEATURES = (
    "danceability",
    "energy",
    "loudness",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "duration_ms",
)
_SYLLABLES = np.array(
    [
        "ka",
        "lo",
        "mi",
        "ra",
        "ve",
        "zu",
        "no",
        "ta",
        "shi",
        "do",
        "re",
        "an",
        "el",
        "ko",
        "sa",
        "ri",
        "mo",
        "na",
        "lu",
        "ve",
        "ya",
        "ze",
        "bo",
        "ni",
        "or",
        "is",
        "ul",
        "da",
    ]
)
_OVERSAMPLE = 1.35
#: Heavy users saturate the top tracks (almost all of them hear the few most popular
#: ones), so the top track gets more than its weight's share; its weight is capped this
#: many times lower than the published top share (calibrated at a tenth of full scale).
_TOP_CONCENTRATION = 5.0
#: Favourite artists, and deeper draws for heavy users, follow popularity to this power.
FAVOURITE_TEMPER = 0.5
#: Most favourite genres a heavy user can have beyond ``genres_per_user``.
_EXTRA_GENRES = 6

INTERACTIONS_ARROW = pa.schema(
    [
        (C.user_id, pa.int32()),
        (C.track_id, pa.int32()),
        (C.started_at, pa.timestamp("ns")),
        (C.track_seq, pa.int16()),
        (C.weight, pa.float32()),
    ]
)


@dataclass
class Catalogue:
    """The generated catalogue in internal order (an artist's tracks are contiguous)."""

    track_ids: np.ndarray  # external id of each internal track index
    track_artist: np.ndarray  # artist index of each track
    track_album: np.ndarray  # album index of each track
    track_weight: np.ndarray  # popularity w (unnormalised)
    artist_genre: np.ndarray  # main genre index of each artist
    artist_start: np.ndarray  # first track index of each artist
    artist_count: np.ndarray  # number of tracks of each artist
    artist_weight: np.ndarray  # sum of its tracks' w
    genre_share: np.ndarray  # target share of each genre
    track_cdf: np.ndarray  # artist index + within-artist cumulative P(t | a)
    deep_track_cdf: np.ndarray  # the same with tempered weights, to dig into the tail
    artist_order: np.ndarray  # artists sorted by genre
    artist_cdf: np.ndarray  # genre index + within-genre cumulative P(a | g)
    favourite_cdf: np.ndarray  # the same with tempered weights, to pick favourites
    global_cdf: np.ndarray  # cumulative P(t)

    @property
    def n_tracks(self) -> int:
        return len(self.track_ids)


def genre_shares(n_genres: int) -> np.ndarray:
    """Leading genres with their published shares, then a decreasing power-law tail."""
    lead = LEADING_GENRE_SHARES[: min(5, n_genres)]
    rest = n_genres - len(lead)
    shares = lead.copy()
    if rest:
        tail = lead[-1] * 0.8 / np.arange(1, rest + 1) ** 0.9
        shares = np.concatenate([lead, tail])
    return shares / shares.sum()


def assign_genres(
    artist_weight: np.ndarray, share: np.ndarray, rng: np.random.Generator, n_greedy: int = 3000
) -> np.ndarray:
    """Main genre of each artist so that genres' total popularity follows ``share``.

    The heaviest artists dominate a genre's total, so they are placed greedily in the
    genre furthest below its target; the rest are drawn at random in proportion to
    what each genre still lacks.
    """
    n = len(artist_weight)
    genre = np.empty(n, dtype=np.int64)
    target = share * artist_weight.sum()
    filled = np.zeros(len(share))
    order = np.argsort(-artist_weight)
    heavy, light = order[:n_greedy], order[n_greedy:]
    for a in heavy:
        g = int(np.argmax((target - filled) / target))
        genre[a] = g
        filled[g] += artist_weight[a]
    lack = np.maximum(target - filled, 0) + 1e-12
    genre[light] = rng.choice(len(share), size=len(light), p=lack / lack.sum())
    return genre


def track_popularity(
    n: int,
    median_to_mean: float,
    min_to_mean: float,
    max_to_mean: float,
    rng: np.random.Generator,
    skew: float = 1.0,
) -> np.ndarray:
    """Shifted log-normal weights whose median/mean, min/mean and max/mean match the targets.

    With ``w = f + X``, ``X ~ LogNormal(0, s)``: median ``f + 1``, mean ``f + exp(s^2/2)``
    and minimum about ``f``; solving the two ratios gives ``f`` and ``s``.
    """
    mean = 1.0 / (median_to_mean - min_to_mean)
    floor = min_to_mean * mean
    sigma = skew * float(np.sqrt(2.0 * np.log(max(mean - floor, 1.0 + 1e-9))))
    weights = floor + rng.lognormal(0.0, sigma, n)
    cap = max_to_mean * weights.mean()
    return np.minimum(weights, cap)


def _segment_cdf(segment: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``segment + cumulative share within segment`` for rows sorted by segment.

    Searching ``segment_index + u`` (``u`` uniform) in it draws a row of that
    segment in proportion to its weight: one ``searchsorted`` for millions of draws.
    """
    totals = np.bincount(segment, weights=weights)
    cum = np.cumsum(weights)
    starts = np.concatenate([[0.0], np.cumsum(totals)[:-1]])
    within = (cum - starts[segment]) / np.maximum(totals[segment], 1e-300)
    return segment + np.minimum(within, 1.0 - 1e-12)


def build_catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> Catalogue:
    """Genres, artists, albums and tracks with their popularity (internal order)."""
    n_tracks = cfg.n_tracks
    n_artists = max(1, min(n_tracks, round(n_tracks * cfg.artists_per_track)))
    n_albums = max(n_artists, min(n_tracks, round(n_tracks * cfg.albums_per_track)))
    share = genre_shares(cfg.n_genres)

    # tracks per artist: every artist at least one, the rest by a heavy-tailed propensity
    propensity = rng.pareto(1.6, n_artists) + 1.0
    extra = rng.choice(n_artists, size=n_tracks - n_artists, p=propensity / propensity.sum())
    artist_count = np.bincount(extra, minlength=n_artists) + 1
    artist_start = np.concatenate([[0], np.cumsum(artist_count)[:-1]])
    track_artist = np.repeat(np.arange(n_artists), artist_count)
    position = np.arange(n_tracks) - artist_start[track_artist]

    # albums: in proportion to an artist's tracks, at least one each; contiguous blocks
    albums_per_artist = np.clip(np.round(artist_count * n_albums / n_tracks), 1, artist_count)
    albums_per_artist = albums_per_artist.astype(np.int64)
    album_start = np.concatenate([[0], np.cumsum(albums_per_artist)[:-1]]).astype(np.int64)
    track_album = album_start[track_artist] + (
        position * albums_per_artist[track_artist] // artist_count[track_artist]
    )

    real_mean = YANDEX_MUSIC["listens"] / YANDEX_MUSIC["tracks"]
    weight = track_popularity(
        n_tracks,
        median_to_mean=min(cfg.listens_per_track_median / real_mean, 0.9),
        min_to_mean=YANDEX_MUSIC["listens_per_track"]["min"] / real_mean,
        max_to_mean=max(cfg.max_track_share * n_tracks / _TOP_CONCENTRATION, 2.0),
        rng=rng,
        skew=cfg.popularity_skew,
    )
    artist_weight = np.bincount(track_artist, weights=weight, minlength=n_artists)
    artist_genre = assign_genres(artist_weight, share, rng)

    track_cdf = _segment_cdf(track_artist, weight)
    deep_track_cdf = _segment_cdf(track_artist, weight**FAVOURITE_TEMPER)
    artist_order = np.argsort(artist_genre, kind="stable")
    artist_cdf = _segment_cdf(artist_genre[artist_order], artist_weight[artist_order])
    favourite_cdf = _segment_cdf(artist_genre[artist_order], artist_weight[artist_order] ** FAVOURITE_TEMPER)
    global_cdf = np.cumsum(weight) / weight.sum()
    return Catalogue(
        track_ids=rng.permutation(n_tracks).astype(np.int32),
        deep_track_cdf=deep_track_cdf,
        track_artist=track_artist,
        track_album=track_album,
        track_weight=weight,
        artist_genre=artist_genre,
        artist_start=artist_start,
        artist_count=artist_count,
        artist_weight=artist_weight,
        genre_share=share,
        track_cdf=track_cdf,
        artist_order=artist_order,
        artist_cdf=artist_cdf,
        favourite_cdf=favourite_cdf,
        global_cdf=global_cdf,
    )


@dataclass
class Users:
    """Per-user parameters: taste, activity and active span (days from the start)."""

    n_tracks: np.ndarray  # distinct tracks to listen to
    genres: np.ndarray  # (users, K) favourite genre indices
    genre_weights: np.ndarray  # (users, K) their weights, rows sum to 1
    artists: np.ndarray  # (users, F) favourite artist indices
    popular: np.ndarray  # share of streaks that start at a globally popular track
    first_day: np.ndarray
    last_day: np.ndarray


def _draw_artist_in_genre(
    cat: Catalogue, genres: np.ndarray, rng: np.random.Generator, favourites: bool = False
):
    """An artist of each given genre, drawn by popularity; genres with no artist draw any.

    Favourites are drawn by tempered popularity: tastes are more diverse than plays.
    """
    cdf = cat.favourite_cdf if favourites else cat.artist_cdf
    target = genres + rng.random(genres.shape)
    pos = np.searchsorted(cdf, target, side="right")
    pos = np.minimum(pos, len(cdf) - 1)
    found = np.floor(cdf[pos]).astype(np.int64) == genres
    artists = cat.artist_order[pos]
    if not found.all():
        fallback = np.searchsorted(cat.global_cdf, rng.random(int((~found).sum())))
        artists[~found] = cat.track_artist[np.minimum(fallback, cat.n_tracks - 1)]
    return artists


def activity_cap(cfg: SyntheticConfig) -> int:
    """Most distinct tracks a user listens to: the configured maximum, at most a third of them."""
    return min(cfg.max_tracks_per_user, max(1, cfg.n_tracks // 3))


def draw_users(cfg: SyntheticConfig, n: int, cat: Catalogue, rng: np.random.Generator) -> Users:
    """Each user's active span, activity, favourite genres (more for heavier users) and artists."""
    n_days = (cfg.end_date - cfg.start_date).days + 1

    # joining: the last month takes a given share (the cold users), the rest uniform before it
    last_month = max(1, n_days - 31)
    late = rng.random(n) < cfg.cold_share_last_month
    first_day = np.where(late, rng.integers(last_month, n_days, n), rng.integers(0, last_month, n))
    stays = n_days - first_day
    churn = rng.random(n) < cfg.churn_share
    span = np.where(churn, np.ceil(stays * rng.beta(1.2, 1.5, n)), stays).astype(np.int64)
    span = np.maximum(span, 1)
    last_day = first_day + span - 1

    # activity: log-normal with the published median and mean, rank-correlated with span
    mu = np.log(cfg.tracks_per_user_median)
    sigma = np.sqrt(2.0 * np.log(cfg.tracks_per_user_mean / cfg.tracks_per_user_median))
    span_rank = (np.argsort(np.argsort(span + rng.random(n))) + 0.5) / n
    rho = cfg.activity_span_correlation
    z = rho * ndtri(span_rank) + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    n_tracks = np.clip(np.round(np.exp(mu + sigma * z)), 1, activity_cap(cfg)).astype(np.int64)

    # tastes: heavier users spread over more genres (one more per doubling above the median)
    k_max, f = cfg.genres_per_user + _EXTRA_GENRES, cfg.favourite_artists_per_user
    breadth = cfg.genres_per_user + np.floor(np.log2(np.maximum(n_tracks / np.exp(mu), 1.0)))
    breadth = np.clip(breadth, 1, k_max).astype(np.int64)
    genres = rng.choice(cfg.n_genres, size=(n, k_max), p=cat.genre_share)
    genre_weights = rng.dirichlet(np.ones(k_max), size=n) * (np.arange(k_max) < breadth[:, None])
    genre_weights /= genre_weights.sum(1, keepdims=True)
    pick = (genre_weights.cumsum(1)[:, None, :] < rng.random((n, f, 1))).sum(2)
    fav_genres = np.take_along_axis(genres, np.minimum(pick, k_max - 1), axis=1)
    artists = _draw_artist_in_genre(cat, fav_genres.ravel(), rng, favourites=True).reshape(n, f)
    # heavy users also follow the charts: more of their listens are simply popular tracks
    doublings = np.log2(np.maximum(n_tracks / np.exp(mu), 1.0))
    popular = np.minimum(
        cfg.popular_share + cfg.popular_share_per_doubling * doublings, cfg.max_popular_share
    )
    return Users(n_tracks, genres, genre_weights, artists, popular, first_day, last_day)


def intensity_cumulative(cfg: SyntheticConfig) -> np.ndarray:
    """Cumulative listening intensity at the start of each day (one more entry than days).

    Intensity rises linearly by ``activity_growth`` over the year and drops by
    ``last_month_dip`` on average over the last 31 days, as monthly listens per active user do in
    the real data (about 18 in January, 30 in November, fewer in December).
    """
    n_days = (cfg.end_date - cfg.start_date).days + 1
    day = np.arange(n_days)
    intensity = 1.0 + cfg.activity_growth * day / max(n_days - 1, 1)
    last = day[max(0, n_days - 31) :]
    # a linear slide over the last month, averaging ``last_month_dip`` (no step on its first day)
    intensity[last] *= 1.0 - 2 * cfg.last_month_dip * (last - last[0] + 1) / (len(last) + 1)
    return np.concatenate([[0.0], np.cumsum(intensity)])


def _draw_streaks(
    cfg: SyntheticConfig,
    cat: Catalogue,
    users: Users,
    streaks_per_user: np.ndarray,
    extra_popular: float,
    deep: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw streaks for each user: (local user index, track index, streak key) per listen.

    Listens come in streak order; the random streak key places the streak in the
    user's history once all rounds are drawn.

    A streak starts at a uniformly drawn track (discovery, ``exploration_share``), at a
    track drawn by global popularity (the user's ``popular`` share, plus ``extra_popular``
    when topping up), or else at a favourite artist or an artist of a favourite genre.
    ``deep`` draws dig into the tail of the user's tastes: artists and tracks by tempered
    popularity (to top up heavy users who exhausted the popular tracks).
    """
    n = len(users.n_tracks)
    s_user = np.repeat(np.arange(n), streaks_per_user)
    n_streaks = len(s_user)

    # each streak's artist: favourite, through a favourite genre, or anything (exploration)
    mode = rng.random(n_streaks)
    popular = np.minimum(users.popular[s_user] + extra_popular, 1.0 - cfg.exploration_share)
    taste = 1.0 - cfg.exploration_share - popular
    fav = mode < cfg.favourite_artist_share * taste
    explore = mode >= taste
    discover = mode >= 1.0 - cfg.exploration_share
    by_genre = ~(fav | explore)
    artist = np.empty(n_streaks, dtype=np.int64)
    f = users.artists.shape[1]
    artist[fav] = users.artists[s_user[fav], rng.integers(0, f, int(fav.sum()))]
    gw = users.genre_weights[s_user[by_genre]]
    pick = (gw.cumsum(1) < rng.random((len(gw), 1))).sum(1)
    g = users.genres[s_user[by_genre], np.minimum(pick, gw.shape[1] - 1)]
    artist[by_genre] = _draw_artist_in_genre(cat, g, rng, favourites=deep)
    explore_tracks = np.where(
        discover[explore],
        rng.integers(0, cat.n_tracks, int(explore.sum())),
        np.minimum(np.searchsorted(cat.global_cdf, rng.random(int(explore.sum()))), cat.n_tracks - 1),
    )
    artist[explore] = cat.track_artist[explore_tracks]

    # streak lengths, then tracks: a first draw by popularity within the artist, then
    # either the next track of the artist's (album-ordered) list or a fresh draw
    length = rng.geometric(1.0 / cfg.mean_streak, n_streaks)
    listen_streak = np.repeat(np.arange(n_streaks), length)
    a = artist[listen_streak]
    start, count = cat.artist_start[a], cat.artist_count[a]
    cdf = cat.deep_track_cdf if deep else cat.track_cdf
    track = np.searchsorted(cdf, a + rng.random(len(a)), side="right")
    track = np.clip(track, start, start + count - 1)
    first_in_streak = np.r_[True, listen_streak[1:] != listen_streak[:-1]] if len(a) else a > 0
    streak_heads = np.flatnonzero(first_in_streak)
    track[streak_heads[explore]] = explore_tracks
    fresh = first_in_streak | (rng.random(len(a)) > cfg.album_continuation)
    # continuation: the tracks after the last fresh draw, wrapping inside the artist's list
    index = np.arange(len(a))
    anchor_idx = np.maximum.accumulate(np.where(fresh, index, 0))
    cont = start + (track[anchor_idx] - start + index - anchor_idx) % count
    key = rng.random(n_streaks)[listen_streak]
    return s_user[listen_streak], np.where(fresh, track, cont), key


def listen_chunk(cfg: SyntheticConfig, cat: Catalogue, users: Users, rng: np.random.Generator):
    """Listens of a chunk of users: (local user index, track index, day, track_seq).

    Repeats are removed (every pair once) and each user keeps at most ``n_tracks``
    listens; users still short after a round get another round for the shortfall, first
    deeper into their tastes, at last by global popularity, so heavy users reach their size.
    """
    n = len(users.n_tracks)
    listen_user = np.empty(0, dtype=np.int64)
    track = np.empty(0, dtype=np.int64)
    key = np.empty(0, dtype=np.float64)
    have = np.zeros(n, dtype=np.int64)
    extra_popular = 0.0
    for round_ in range(6):
        short = users.n_tracks - have
        if not (short > 0).any():
            break
        factor = _OVERSAMPLE * 2**round_
        streaks = np.where(short > 0, np.ceil(short * factor / cfg.mean_streak) + 1, 0)
        u, t, k = _draw_streaks(
            cfg, cat, users, streaks.astype(np.int64), extra_popular, deep=round_ > 0, rng=rng
        )
        # new draws count after what the user already has (stable by user)
        listen_user = np.concatenate([listen_user, u])
        track = np.concatenate([track, t])
        key = np.concatenate([key, k])
        order = np.argsort(listen_user, kind="stable")
        listen_user, track, key = listen_user[order], track[order], key[order]
        pair = listen_user * cat.n_tracks + track
        _, first = np.unique(pair, return_index=True)
        keep = np.zeros(len(pair), dtype=bool)
        keep[first] = True
        listen_user, track, key = listen_user[keep], track[keep], key[keep]
        user_start = np.searchsorted(listen_user, np.arange(n))
        seq = np.arange(len(listen_user)) - user_start[listen_user]
        keep = seq < users.n_tracks[listen_user]
        listen_user, track, key = listen_user[keep], track[keep], key[keep]
        have = np.bincount(listen_user, minlength=n)
        if round_ >= 3:
            extra_popular += 0.5

    # interleave the rounds: streaks in random order, listens within a streak in order
    order = np.lexsort((np.arange(len(key)), key, listen_user))
    listen_user, track = listen_user[order], track[order]
    seq = np.arange(len(listen_user)) - np.searchsorted(listen_user, np.arange(n))[listen_user]

    # days: sorted uniform positions over the user's active span (history order = time order)
    counts = np.bincount(listen_user, minlength=n)
    gaps = rng.exponential(1.0, len(listen_user) + n)
    # one extra gap per user so the last listen is not pinned to the span's end
    gap_user = np.repeat(np.arange(n), counts + 1)
    cum = np.cumsum(gaps)
    seg_end = np.cumsum(counts + 1) - 1
    seg_start = seg_end - counts
    base = np.where(seg_start > 0, cum[np.maximum(seg_start - 1, 0)], 0.0)
    frac_all = (cum - base[gap_user]) / (cum[seg_end] - base)[gap_user]
    is_listen = np.ones(len(gaps), dtype=bool)
    is_listen[seg_end] = False
    frac = frac_all[is_listen]
    # warp the positions through the cumulative listening intensity of the calendar
    cum = intensity_cumulative(cfg)
    lo, hi = cum[users.first_day], cum[users.last_day + 1]
    target = lo[listen_user] + frac * (hi - lo)[listen_user]
    day = np.searchsorted(cum, target, side="right") - 1
    day = np.clip(day, users.first_day[listen_user], users.last_day[listen_user])
    return listen_user, track, day, seq + 1


@dataclass
class GeneratedData:
    """What :func:`generate` wrote, with counts for the summary."""

    files: dict[str, Path]
    rows: int
    users: int
    tracks: int
    notes: list[str]


def generate(cfg: SyntheticConfig, seed: int, out_dir: Path, progress: bool = True) -> GeneratedData:
    """Generate the synthetic data set into ``out_dir`` (deterministic for a seed).

    Users are generated and written in chunks of ``cfg.chunk_users`` (one parquet row
    group each), and each chunk passes the data contract before it is written, so the
    full scale never holds more than one chunk of listens in memory.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    cat = build_catalogue(cfg, rng)
    users_rng = np.random.default_rng([seed, 1])
    users = draw_users(cfg, cfg.n_users, cat, users_rng)
    user_ids = np.arange(cfg.n_users, dtype=np.int32)
    start = np.datetime64(cfg.start_date, "ns")
    track_ids_series = pl.Series(C.track_id, cat.track_ids)

    rows = 0
    target = out_dir / "interactions.parquet"
    chunks = range(0, cfg.n_users, cfg.chunk_users)

    def chunk_of(item: tuple[int, int]) -> pl.DataFrame:
        i, lo = item
        hi = min(lo + cfg.chunk_users, cfg.n_users)
        part = Users(*(getattr(users, f)[lo:hi] for f in Users.__dataclass_fields__))
        u, t, day, seq = listen_chunk(cfg, cat, part, np.random.default_rng([seed, 2, i]))
        chunk = pl.DataFrame(
            {
                C.user_id: user_ids[lo:hi][u],
                C.track_id: cat.track_ids[t],
                C.started_at: start + day.astype("timedelta64[D]").astype("timedelta64[ns]"),
                C.track_seq: seq.astype(np.int16),
                C.weight: np.ones(len(u), dtype=np.float32),
            },
            schema=INTERACTIONS_SCHEMA,
        )
        return validate_interactions(chunk, track_ids=track_ids_series, file=target.name)

    # chunks are independent (each has its own seed): two are drawn at a time, written in order
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, INTERACTIONS_ARROW, compression="zstd") as writer:
        for chunk in bar(
            in_order(chunk_of, enumerate(chunks)),
            total=len(chunks),
            desc="synthetic listens",
            unit="chunks",
            enabled=progress,
        ):
            writer.write_table(chunk.to_arrow().cast(INTERACTIONS_ARROW), row_group_size=len(chunk))
            rows += len(chunk)

    files = {"interactions": target}
    files.update(_write_catalogue(cfg, cat, out_dir, np.random.default_rng([seed, 3])))
    files.update(_write_oracle(cfg, cat, users, user_ids, out_dir / "oracle"))
    notes = [
        f"{int((users.first_day >= users.first_day.max() - 30).sum()):,} users join in the last month",
        f"user activity capped at {activity_cap(cfg):,} tracks",
    ]
    return GeneratedData(files, rows, cfg.n_users, cat.n_tracks, notes)


def _names(n: int, rng: np.random.Generator, words: int) -> pl.Series:
    """Pronounceable pseudo-names, vectorised."""
    parts = []
    for w in range(words):
        syl = [_SYLLABLES[rng.integers(0, len(_SYLLABLES), n)] for _ in range(2 + (w % 2))]
        word = pl.Series(syl[0]).str.to_titlecase()
        for s in syl[1:]:
            word = word + pl.Series(s)
        parts.append(word)
    out = parts[0]
    for p in parts[1:]:
        out = out + " " + p
    return out


def _write_catalogue(
    cfg: SyntheticConfig, cat: Catalogue, out_dir: Path, rng: np.random.Generator
) -> dict[str, Path]:
    n = cat.n_tracks
    n_albums = int(cat.track_album.max()) + 1
    n_artists = len(cat.artist_count)
    genre = cat.artist_genre[cat.track_artist]
    second = rng.choice(cfg.n_genres, size=n, p=cat.genre_share)
    has_second = (rng.random(n) < SECOND_GENRE_SHARE) & (second != genre)
    no_artist = rng.random(n) < cfg.share_no_artist
    no_genre = rng.random(n) < cfg.share_no_genre
    no_album = rng.random(n) < cfg.share_no_album
    album_ids = rng.permutation(n_albums).astype(np.int32)
    artist_ids = rng.permutation(n_artists).astype(np.int32)
    genre_ids = np.arange(cfg.n_genres, dtype=np.int32)

    def lists(values: np.ndarray, empty: np.ndarray) -> pl.Series:
        offsets = np.concatenate([[0], np.cumsum(~empty)]).astype(np.int64)
        arr = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[~empty], pa.int32()))
        return pl.Series(arr).cast(pl.List(pl.Int32))

    # genres: [main] or [main, second]; built from two columns then list-concatenated
    tracks = (
        pl.DataFrame(
            {
                C.track_id: cat.track_ids,
                C.albums: lists(album_ids[cat.track_album], no_album),
                C.artists: lists(artist_ids[cat.track_artist], no_artist),
                "g1": lists(genre_ids[genre], no_genre),
                "g2": lists(genre_ids[second], ~has_second | no_genre),
            }
        )
        .with_columns(pl.concat_list("g1", "g2").alias(C.genres))
        .drop("g1", "g2")
    )
    tracks = tracks.sort(C.track_id)

    genre_names = [GENRE_NAMES[i] if i < len(GENRE_NAMES) else f"genre{i}" for i in range(cfg.n_named_genres)]
    names = pl.concat(
        [
            pl.DataFrame({C.id: np.sort(cat.track_ids), C.type: "track", C.name: _names(n, rng, 2)}),
            pl.DataFrame(
                {C.id: np.arange(n_albums, dtype=np.int32), C.type: "album", C.name: _names(n_albums, rng, 2)}
            ),
            pl.DataFrame(
                {
                    C.id: np.arange(n_artists, dtype=np.int32),
                    C.type: "artist",
                    C.name: _names(n_artists, rng, 2),
                }
            ),
            pl.DataFrame(
                {
                    C.id: genre_ids[: cfg.n_named_genres],
                    C.type: "genre",
                    C.name: pl.Series(genre_names, dtype=pl.Utf8),
                }
            ),
        ]
    ).with_columns(pl.col(C.id).cast(pl.Int32))

    # audio-like features: a genre profile plus an artist offset plus noise
    k = len(FEATURES)
    genre_mean = rng.normal(0, 1.0, (cfg.n_genres, k))
    artist_offset = rng.normal(0, 0.4, (n_artists, k))
    latent = genre_mean[genre] + artist_offset[cat.track_artist] + rng.normal(0, 0.5, (n, k))
    unit = 1.0 / (1.0 + np.exp(-latent))
    features = {name: unit[:, j] for j, name in enumerate(FEATURES)}
    features["loudness"] = -30.0 + 30.0 * unit[:, 2]
    features["tempo"] = 60.0 + 140.0 * unit[:, 8]
    features["duration_ms"] = 90_000 + 330_000 * unit[:, 9]
    track_features = pl.DataFrame(
        {C.track_id: cat.track_ids, **{f: v.astype(np.float32) for f, v in features.items()}}
    ).sort(C.track_id)
    return {
        "tracks": write_parquet(tracks, out_dir / "tracks.parquet"),
        "catalog_names": write_parquet(names, out_dir / "catalog_names.parquet"),
        "track_features": write_parquet(track_features, out_dir / "track_features.parquet"),
    }


def _write_oracle(
    cfg: SyntheticConfig, cat: Catalogue, users: Users, user_ids: np.ndarray, oracle_dir: Path
) -> dict[str, Path]:
    """The compact true preferences: user tastes and the catalogue's conditional probabilities."""
    genre_total = np.bincount(cat.artist_genre, weights=cat.artist_weight, minlength=cfg.n_genres)
    artist_total = cat.artist_weight
    p_track_in_artist = cat.track_weight / artist_total[cat.track_artist]
    g = cat.artist_genre[cat.track_artist]
    p_artist_in_genre = artist_total[cat.track_artist] / genre_total[g]
    taste = pl.DataFrame(
        {
            C.user_id: user_ids,
            "genres": users.genres.astype(np.int32),
            "genre_weights": users.genre_weights.astype(np.float32),
            "artists": users.artists.astype(np.int32),
            "popular_share": users.popular.astype(np.float64),
        }
    )
    prior = pl.DataFrame(
        {
            C.track_id: cat.track_ids,
            "artist": cat.track_artist.astype(np.int32),
            "genre": g.astype(np.int32),
            "p_track_in_artist": p_track_in_artist,
            "p_artist_in_genre": p_artist_in_genre,
            "p_track": cat.track_weight / cat.track_weight.sum(),
        }
    )
    return {
        "oracle_users": write_parquet(taste, oracle_dir / "user_taste.parquet"),
        "oracle_tracks": write_parquet(prior, oracle_dir / "track_prior.parquet"),
        "oracle_params": write_json(
            {
                "favourite_artist_share": cfg.favourite_artist_share,
                "exploration_share": cfg.exploration_share,
                "about": "true preference: see musicrec.sources.synthetic.true_preference",
            },
            oracle_dir / "params.json",
        ),
    }


def true_preference(oracle_dir: Path, user_ids, track_ids) -> np.ndarray:
    """The generator's probability that one draw of user ``u`` is track ``t``, for pairs.

    ``user_ids`` and ``track_ids`` are equal-length arrays of external ids. Higher
    means the user truly prefers the track more; ranking all unheard tracks by it
    gives the oracle ceiling. The oracle's tables are read once per folder (and again
    when its files change), not on every call: the evaluation scores millions of pairs
    in batches.
    """
    o = _oracle_tables(Path(oracle_dir))
    users = _lookup(o.user_position, o.user_order, np.asarray(user_ids), "user_id")
    tracks = _lookup(o.track_position, o.track_order, np.asarray(track_ids), "track_id")
    genres, genre_weights, favourites = o.genres[users], o.genre_weights[users], o.favourites[users]
    popular = o.popular_share[users]
    track_genre, track_artist = o.track_genre[tracks], o.track_artist[tracks]
    taste_for_genre = (genre_weights * (genres == track_genre[:, None])).sum(1)
    favourite_share = (favourites == track_artist[:, None]).mean(1)
    in_taste = 1.0 - o.explore_share - popular
    return (
        in_taste
        * ((1 - o.fav_share) * taste_for_genre * o.p_ag[tracks] + o.fav_share * favourite_share)
        * o.p_ta[tracks]
        + o.explore_share / len(o.track_sorted)
        + popular * o.p_t[tracks]
    )


@dataclass(frozen=True)
class _OracleTables:
    fav_share: float
    explore_share: float
    user_sorted: np.ndarray  # the ids, sorted; user_order: their rows in the tables
    user_order: np.ndarray
    user_position: IdPositions  # positions in user_sorted (a dense table: ids are compact)
    genres: np.ndarray
    genre_weights: np.ndarray
    favourites: np.ndarray
    popular_share: np.ndarray
    track_sorted: np.ndarray
    track_order: np.ndarray
    track_position: IdPositions
    track_genre: np.ndarray
    track_artist: np.ndarray
    p_ta: np.ndarray
    p_ag: np.ndarray
    p_t: np.ndarray


_ORACLE_CACHE: dict[tuple, _OracleTables] = {}


def _oracle_tables(oracle_dir: Path) -> _OracleTables:
    """The oracle's tables as arrays, cached by folder and the files' modification times."""
    files = [oracle_dir / name for name in ("params.json", "user_taste.parquet", "track_prior.parquet")]
    key = (str(oracle_dir.resolve()), *(f.stat().st_mtime_ns for f in files))
    if key not in _ORACLE_CACHE:
        params = json.loads(files[0].read_text())
        taste, prior = pl.read_parquet(files[1]), pl.read_parquet(files[2])
        user_ids, track_ids = taste.get_column(C.user_id).to_numpy(), prior.get_column(C.track_id).to_numpy()
        user_order, track_order = np.argsort(user_ids), np.argsort(track_ids)
        _ORACLE_CACHE.clear()  # one oracle at a time: at full scale its tables take a few hundred MB
        _ORACLE_CACHE[key] = _OracleTables(
            fav_share=params["favourite_artist_share"],
            explore_share=params["exploration_share"],
            user_sorted=user_ids[user_order],
            user_order=user_order,
            user_position=IdPositions(user_ids[user_order]),
            genres=np.stack(taste.get_column("genres").to_numpy()),
            genre_weights=np.stack(taste.get_column("genre_weights").to_numpy()),
            favourites=np.stack(taste.get_column("artists").to_numpy()),
            popular_share=taste.get_column("popular_share").to_numpy(),
            track_sorted=track_ids[track_order],
            track_order=track_order,
            track_position=IdPositions(track_ids[track_order]),
            track_genre=prior.get_column("genre").to_numpy(),
            track_artist=prior.get_column("artist").to_numpy(),
            p_ta=prior.get_column("p_track_in_artist").to_numpy(),
            p_ag=prior.get_column("p_artist_in_genre").to_numpy(),
            p_t=prior.get_column("p_track").to_numpy(),
        )
    return _ORACLE_CACHE[key]


def _lookup(position: IdPositions, order: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    """Row index of each wanted id (``position``: of the ids sorted, ``order``: their rows); unknown ids
    are an error."""
    at = position(wanted)
    if (at < 0).any():
        raise KeyError(f"true_preference: {what} {wanted[at < 0][:5].tolist()} not in the oracle")
    return order[at]
