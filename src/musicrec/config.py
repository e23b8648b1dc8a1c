"""The profile: one typed, validated configuration object passed around the pipeline.

A profile is a YAML file in ``params/``. Unknown keys, wrong types and impossible
values stop the run with a :class:`ProfileError` naming the key, for example::

    params/default.yaml: split.test_start: must come after split.label_start

Time-window boundaries are a date (``2022-12-16``) or a whole number of days: the
last N days of the data (``test_start: 16`` with data ending 2022-12-31 starts the
test window on 2022-12-16).
"""

from __future__ import annotations

import datetime as dt
import difflib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from musicrec.generators import NAMES as GENERATOR_NAMES
from musicrec.service.settings import ServiceConfig

SOURCES = ("synthetic", "yandex", "ium", "movielens", "lastfm", "yambda", "lastfm1k")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Strict):
    """Size and shape of the synthetic Yandex-Music-like data.

    The defaults of the shape parameters are calibrated to the published
    statistics of the real data (``../shared/yandex_music_stats.json``).
    """

    n_users: PositiveInt = 30_000
    n_tracks: PositiveInt = 20_000
    start_date: dt.date = dt.date(2022, 1, 1)
    end_date: dt.date = dt.date(2022, 12, 31)
    tracks_per_user_median: float = Field(55.0, gt=0)
    tracks_per_user_mean: float = Field(162.0, gt=0)
    max_tracks_per_user: PositiveInt = 16_637
    listens_per_track_median: float = Field(19.0, gt=0)
    popularity_skew: float = Field(
        2.0,
        gt=0,
        description="scales the popularity log-sigma; "
        "sampling without repeats flattens popularity, this restores it",
    )
    max_track_share: float = Field(111_062 / 222_629_898, gt=0, lt=1)
    n_genres: PositiveInt = 173
    n_named_genres: PositiveInt = 166
    artists_per_track: float = Field(153_581 / 1_000_000, gt=0, le=1)
    albums_per_track: float = Field(658_724 / 1_000_000, gt=0, le=1)
    share_no_artist: float = Field(15_369 / 1_000_000, ge=0, lt=1)
    share_no_genre: float = Field(3_687 / 1_000_000, ge=0, lt=1)
    share_no_album: float = Field(18 / 1_000_000, ge=0, lt=1)
    genres_per_user: PositiveInt = 4
    favourite_artists_per_user: PositiveInt = 6
    favourite_artist_share: float = Field(0.35, ge=0, le=1)
    exploration_share: float = Field(0.035, ge=0, le=1)
    popular_share: float = Field(0.1, ge=0, le=1)
    popular_share_per_doubling: float = Field(0.12, ge=0, le=1)
    max_popular_share: float = Field(0.6, ge=0, le=1)
    mean_streak: float = Field(3.0, ge=1)
    album_continuation: float = Field(0.3, ge=0, le=1)
    cold_share_last_month: float = Field(0.045, ge=0, lt=1)
    churn_share: float = Field(0.35, ge=0, le=1)
    activity_span_correlation: float = Field(0.6, ge=0, lt=1)
    activity_growth: float = Field(0.9, ge=0)
    last_month_dip: float = Field(0.12, ge=0, lt=1)
    chunk_users: PositiveInt = 40_000

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticConfig:
        if self.end_date <= self.start_date:
            raise ValueError("end_date must come after start_date")
        if self.tracks_per_user_mean <= self.tracks_per_user_median:
            raise ValueError(
                "tracks_per_user_mean must exceed tracks_per_user_median (the distribution is right-skewed)"
            )
        if self.n_named_genres > self.n_genres:
            raise ValueError("n_named_genres cannot exceed n_genres")
        return self


class IumConfig(_Strict):
    """IUM course format: how each event type counts towards a (user, track) weight.

    A pair's weight is the sum over its events; pairs whose sum is not positive
    (only skips, say) are dropped and counted. Event types not listed
    (ADVERTISEMENT, BUY_PREMIUM) carry no track and are counted as dropped.
    """

    event_weights: dict[str, float] = Field(default_factory=lambda: {"play": 1.0, "like": 2.0, "skip": -0.5})


class MovieLensConfig(_Strict):
    """MovieLens: ratings at or above the threshold are positives (listens)."""

    rating_threshold: float = Field(4.0, ge=0, le=5)


class LastfmConfig(_Strict):
    """HetRec Last.fm: tag events give the time of a user's interaction with an artist."""

    first_year: PositiveInt = 2005
    top_tags_per_artist: PositiveInt = 3


class YandexConfig(_Strict):
    """The real Yandex Music files as published."""

    unique_pairs: bool = True


class YambdaConfig(_Strict):
    """Yambda (Yandex Music's public data set, flat layout): which size, and how events count.

    A (user, track) pair's weight is ``log2(1 + plays) + like_weight * liked``, where
    ``plays`` sums ``played_ratio_pct / 100`` over the pair's Listen+ events (see
    ``musicrec.sources.yambda``). Timestamps count seconds from the data set's own origin,
    mapped to dates from ``origin``.
    """

    size: Literal["50m", "500m", "5b"] = Field(
        "50m", description="the flat/<size>/ folder to read; 5b needs the distributed engine (refused)"
    )
    origin: dt.date = Field(
        dt.date(2024, 1, 1),
        description="calendar date given to timestamp 0 (Yambda publishes no dates); the windows "
        "are counted in days from it, so only the weekday pattern depends on this choice",
    )
    align_end: bool = Field(
        False,
        description="timestamp 0 goes to a time of origin's day chosen so that the last "
        "event's 5-second step ends at midnight: whole days before the end are then exact "
        "86,400-second spans of Yambda's own clock (the official protocol's test day: split."
        "test_start: 1); False: timestamp 0 is origin's midnight",
    )
    listen_threshold: int = Field(
        50, ge=1, le=100, description="played_ratio_pct at or above which a listen counts (Listen+)"
    )
    like_weight: float = Field(
        1.0, gt=0, description="added to the weight of a liked pair; the whole weight of a liked-only pair"
    )
    embedding: Literal["normalized_embed", "embed"] = Field(
        "normalized_embed", description="embeddings.parquet column that becomes track_features"
    )
    max_tracks_per_user: PositiveInt = Field(
        32_767,
        le=32_767,
        description="a user's most recent this many pairs are kept (track_seq is int16); "
        "earlier ones are dropped and counted",
    )


class LastfmOneKConfig(_Strict):
    """Last.fm 1K (Celma): the listening log, one line per scrobble (``musicrec.sources.lastfm1k``).

    A user's listens of one track are merged into one interaction dated by the first, with
    weight ``log2(1 + plays)``. Lines that are not six tab-separated fields, or lack the user,
    the time or the track name, are dropped and counted.
    """

    file: str = Field(
        "userid-timestamp-artid-artname-traid-traname.tsv",
        min_length=1,
        description="the listening log in the raw folder (tab-separated, no header, six columns)",
    )
    first_year: PositiveInt = Field(
        2002,
        description="listens dated before this year (Last.fm's scrobbling began in 2002; earlier "
        "dates are clock errors) are dropped and counted",
    )
    max_malformed_share: float = Field(
        0.01,
        ge=0,
        le=1,
        description="above this share of malformed lines (not six tab-separated fields) the file is "
        "taken for another format and the load stops with the first such lines; below, they are "
        "dropped and counted",
    )
    max_tracks_per_user: PositiveInt = Field(
        32_767,
        le=32_767,
        description="a user's most recent this many tracks are kept (track_seq is int16); "
        "earlier ones are dropped and counted",
    )


class DataConfig(_Strict):
    source: Literal["synthetic", "yandex", "ium", "movielens", "lastfm", "yambda", "lastfm1k"] = "synthetic"
    path: Path | None = Field(
        None, description="folder of the raw source files; data/raw/<source> when unset"
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)
    yandex: YandexConfig = Field(default_factory=YandexConfig)
    ium: IumConfig = Field(default_factory=IumConfig)
    movielens: MovieLensConfig = Field(default_factory=MovieLensConfig)
    lastfm: LastfmConfig = Field(default_factory=LastfmConfig)
    yambda: YambdaConfig = Field(default_factory=YambdaConfig)
    lastfm1k: LastfmOneKConfig = Field(default_factory=LastfmOneKConfig)


#: A share of the events, as ``"10%"``: the boundary falls where the last 10% of them begin.
EventShare = Annotated[str, Field(pattern=r"^\d+(\.\d+)?%$")]
Boundary = dt.date | PositiveInt | EventShare


def share_of(boundary: str) -> float:
    """``"10%"`` -> 0.1 (see :data:`EventShare`)."""
    return float(boundary.rstrip("%")) / 100


class SplitConfig(_Strict):
    """The three windows: history | labels from label_start | test from test_start.

    A boundary is a date, a number of days before the end of the data (``15``: the last 15
    days), or a share of the events (``"10%"``: the day on which the last 10% of the events
    by time begin), so that one profile fits every size and layout of a source.
    """

    label_start: Boundary = dt.date(2022, 12, 1)
    test_start: Boundary = dt.date(2022, 12, 16)
    protocol: Literal["global", "per_user"] = Field(
        "global",
        description="global: the boundaries are instants shared by every user (the honest protocol); "
        "per_user: both boundaries are shares of each user's own listens (test_start: 10%: each "
        "user's last 10% is their test, label_start: 20%: the 10% before it their labels), so that "
        "every user with two listens is tested, at the price of mixing calendar time across users "
        "(small real data sets; local engine only)",
    )
    gap_minutes: NonNegativeInt = Field(
        0,
        description="the listens of the last this many minutes before a boundary are neither "
        "fitted on for the window after it nor its targets, so that a session running across the "
        "boundary does not leak into that window: Yambda's official protocol has 30 before its "
        "test day (global protocol, local engine only)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SplitConfig:
        a, b = self.label_start, self.test_start
        if self.protocol == "per_user" and self.gap_minutes:
            raise ValueError("protocol per_user cuts each user at their own listens: gap_minutes must be 0")
        if self.protocol == "per_user" and not (isinstance(a, str) and isinstance(b, str)):
            raise ValueError(
                "protocol per_user: label_start and test_start must be shares of each user's listens "
                f"(such as 20% and 10%), got {a} and {b}"
            )
        if isinstance(a, dt.date) and isinstance(b, dt.date) and not a < b:
            raise ValueError("test_start must come after label_start")
        if isinstance(a, int) and isinstance(b, int) and not a > b:
            raise ValueError("label_start (days before the end) must be larger than test_start")
        for key, value in (("label_start", a), ("test_start", b)):
            if isinstance(value, str) and not 0 < share_of(value) < 1:
                raise ValueError(f"{key}: {value} must be a share between 0% and 100%")
        if isinstance(a, str) and isinstance(b, str) and not share_of(a) > share_of(b):
            raise ValueError("label_start (a share of the last events) must be larger than test_start")
        return self

    @property
    def per_user(self) -> bool:
        """Whether each user has their own boundaries (``protocol: per_user``)."""
        return self.protocol == "per_user"

    @property
    def gap(self) -> dt.timedelta:
        """The span before each boundary left out of the window after it (``gap_minutes``)."""
        return dt.timedelta(minutes=self.gap_minutes)

    @property
    def uses_shares(self) -> bool:
        """Whether a boundary is a share of the events (known only once the data is there)."""
        return isinstance(self.label_start, str) or isinstance(self.test_start, str)

    def resolve(
        self, first_day: dt.date, last_day: dt.date, day_at_share: Callable[[float], dt.date] | None = None
    ) -> tuple[dt.date, dt.date]:
        """Turn the boundaries into dates for data spanning ``first_day .. last_day``;
        ``day_at_share(s)``: the day on which the last share ``s`` of the events begin (needed
        when a boundary is a share: see :attr:`uses_shares`)."""
        if day_at_share is None and self.uses_shares:
            raise ValueError("a boundary is a share of the events: resolve it with day_at_share")
        label = _boundary_date(self.label_start, last_day, day_at_share)
        test = _boundary_date(self.test_start, last_day, day_at_share)
        for key, day in (("split.label_start", label), ("split.test_start", test)):
            if day <= first_day:
                raise ProfileError(
                    f"{key}: {day} leaves no history before it; the data starts on {first_day}"
                )
            if day > last_day:
                raise ProfileError(f"{key}: {day} is after the data ends on {last_day}")
        if not label < test:
            raise ProfileError(f"split.test_start: {test} must come after split.label_start ({label})")
        return label, test


def _boundary_date(
    boundary: Boundary, last_day: dt.date, day_at_share: Callable[[float], dt.date] | None
) -> dt.date:
    if isinstance(boundary, dt.date):
        return boundary
    if isinstance(boundary, str):
        return day_at_share(share_of(boundary))
    return last_day - dt.timedelta(days=boundary - 1)


class TopPopularConfig(_Strict):
    """Tracks by distinct listeners over the last ``days`` of the window (all days when unset)."""

    days: PositiveInt | None = None
    n: PositiveInt = 100


class AlsConfig(_Strict):
    """implicit's ALS on the users-by-tracks matrix.

    Confidence of a pair is ``1 + alpha * w`` (``linear``) or ``1 + alpha * log1p(w)``
    (``log``), where ``w`` is the summed weight, times ``0.5 ** (age / half_life_days)``
    when a half-life is set (age in days before the end of the window).

    ``refit`` says how the history + labels model is made from the history one: ``full``
    fits it from scratch; ``warm`` starts from the history factors and runs
    ``warm_iterations``; ``users`` keeps the history item factors and solves each user's
    factors once on history + labels (the daily-update pattern: the similar lists stay those
    of the history fit).
    """

    factors: PositiveInt = 64
    # 5 iterations score higher on the test window than 15, in a third of the time (NDCG@10 of the
    # history + labels model, side by side: default 0.1233 against 0.1199, scale10 0.0975 against 0.0941)
    iterations: PositiveInt = 5
    refit: Literal["full", "warm", "users"] = "users"
    warm_iterations: PositiveInt = Field(3, description="iterations of a warm refit")
    regularization: float = Field(0.05, ge=0)
    alpha: float = Field(10.0, gt=0)
    confidence: Literal["linear", "log"] = "linear"
    half_life_days: float | None = Field(None, gt=0)
    n_users: PositiveInt = 100
    n_similar: PositiveInt = 10
    item_pool: PositiveInt | None = Field(
        None, description="only the most listened tracks can be recommended or similar; all when unset"
    )
    recommend_pool: PositiveInt | None = Field(
        None,
        description="the most listened tracks of the item pool that personal lists are drawn from "
        "(the similar lists still use the whole pool); the item pool when unset",
    )
    batch_users: PositiveInt = 20_000
    batch_tracks: PositiveInt = 20_000


class I2iHistoryConfig(_Strict):
    """Candidates from the similar lists of a user's last ``last_k`` listens, summed."""

    last_k: PositiveInt = 20
    n: PositiveInt = 100


class ContentConfig(_Strict):
    """TF-IDF over genre, artist and album tokens; user profiles as weighted means."""

    enabled: bool = True
    n: PositiveInt = 100
    n_similar: PositiveInt = 10
    batch_users: PositiveInt = 5_000
    # 20 entry points a token rank better than 200, and faster (20,000 users, test window,
    # side by side: default NDCG@10 0.0347 / recall@100 0.148 against 0.0319 / 0.121 in 60% of
    # the time; scale10 0.0273 / 0.125 against 0.0244 / 0.099 in 37% of the time)
    max_postings: PositiveInt = Field(
        20,
        description="a token (genre, artist, album) reaches only its this many tracks of "
        "largest weight; scores stay exact, only candidates reached solely through the tail "
        "of a bigger token are skipped. Exact when no token has more tracks",
    )
    max_pairs: PositiveInt = Field(
        4_000_000, description="(user or track, candidate) pairs scored at once: bounds memory"
    )


class AudioConfig(_Strict):
    """An autoencoder over standardised audio features; neighbours by cosine."""

    enabled: bool = True
    embedding_dim: PositiveInt = 8
    hidden: PositiveInt = 32
    max_iter: PositiveInt = 200
    sample_tracks: PositiveInt = 200_000
    recent_k: PositiveInt = 20
    n: PositiveInt = 100
    n_similar: PositiveInt = 10
    activation: Literal["tanh", "relu", "logistic", "identity"] = "tanh"
    batch_size: PositiveInt = 256
    exact_max_tracks: PositiveInt = Field(
        50_000, description="up to this many embedded tracks, brute-force (exact) cosine search"
    )
    cell_size: PositiveInt = Field(2_000, description="above it, tracks per k-means cell")
    probe_cells: PositiveInt = Field(8, description="cells searched around a query's nearest cell")


class ItemKnnConfig(_Strict):
    """Item-to-item nearest neighbours over the users-by-tracks matrix (implicit's item-kNN).

    A track's neighbours are its ``neighbours`` most similar tracks (implicit's ``K``, which
    counts the track itself) by ``kind``: ``cosine`` of the tracks' listener vectors,
    ``bm25`` (listeners weighted by BM25 with ``bm25_k1``, ``bm25_b``; implicit's defaults)
    or ``tfidf``. A user's score for an unheard track sums the similarities of the tracks they
    heard to it, each times the user's value of that track. Values are the summed weights,
    times ``0.5 ** (age / half_life_days)`` when a half-life is set (as ``als.half_life_days``).
    """

    enabled: bool = True
    kind: Literal["cosine", "bm25", "tfidf"] = "bm25"
    neighbours: PositiveInt = Field(100, description="K: similar tracks kept per track, itself included")
    n: PositiveInt = 100
    half_life_days: float | None = Field(None, gt=0, description="decay of the values; none when unset")
    bm25_k1: float = Field(1.2, ge=0, description="BM25 term-frequency saturation (kind bm25)")
    bm25_b: float = Field(0.75, ge=0, le=1, description="BM25 length normalisation (kind bm25)")
    max_user_tracks: PositiveInt | None = Field(
        None,
        description="the similarities are learnt from each user's latest this many tracks (the fit "
        "costs the sum over users of their tracks squared); lists still use every track a user heard. "
        "None: all",
    )
    batch_users: PositiveInt = 5_000


class RandomConfig(_Strict):
    """Uniform over the tracks a user has not heard: the floor."""

    n: PositiveInt = 100


class CandidatesConfig(_Strict):
    """The candidates stage: every generator, fitted on history and on history + labels."""

    top_popular: TopPopularConfig = Field(default_factory=TopPopularConfig)
    als: AlsConfig = Field(default_factory=AlsConfig)
    i2i_history: I2iHistoryConfig = Field(default_factory=I2iHistoryConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    item_knn: ItemKnnConfig = Field(default_factory=ItemKnnConfig)
    random: RandomConfig = Field(default_factory=RandomConfig)
    recall_at: list[PositiveInt] = Field(
        default_factory=lambda: [10, 50, 100],
        description="list lengths for candidate recall; a generator is measured at the lengths it has",
    )


class RankingConfig(_Strict):
    """The ranking stage: CatBoost over the merged candidates of every generator.

    ``candidates`` says how many of each generator's list (its top N) enter the union;
    a generator missing from it, or with 0, is left out (random is the floor, not a
    source of candidates).
    """

    candidates: dict[Literal[GENERATOR_NAMES], NonNegativeInt] = Field(  # musicrec.generators
        default_factory=lambda: {
            "top_popular": 50,
            "personal_als": 100,
            "i2i_history": 50,
            "item_knn": 50,
            "content": 30,
            "audio": 30,
        }
    )
    n: PositiveInt = Field(100, description="length of the final list per user")
    recent_days: PositiveInt = Field(7, description="track popularity over the window's last days")
    i2i_last_k: PositiveInt = Field(20, description="recent listens for the i2i-support feature")
    loss: Literal["YetiRank", "Logloss"] = "YetiRank"
    negatives_per_user: PositiveInt = Field(20, description="negatives sampled per training user")
    train_users: PositiveInt | None = Field(
        None, description="sample of users with labels to train on; all when unset"
    )
    validation_share: float = Field(0.2, gt=0, lt=1)
    iterations: PositiveInt = 300
    learning_rate: float = Field(0.1, gt=0, le=1)
    depth: PositiveInt = Field(6, le=16)
    early_stopping_rounds: PositiveInt = 50
    threads: PositiveInt = Field(2, description="CatBoost threads")
    batch_users: PositiveInt = Field(20_000, description="users whose candidates are scored at once")

    @model_validator(mode="after")
    def _some_candidates(self) -> RankingConfig:
        if not any(self.candidates.values()):
            raise ValueError("candidates: at least one generator needs a positive count")
        return self


class EvaluationConfig(_Strict):
    """The evaluation stage: metrics at ``ks`` with bootstrap intervals, segments, the oracle."""

    ks: list[PositiveInt] = Field(default_factory=lambda: [5, 10, 100])
    beyond_k: PositiveInt = Field(10, description="list length for coverage, novelty, diversity")
    coverage_at: list[PositiveInt] = Field(
        default_factory=list,
        description="further list lengths at which catalogue coverage is reported (Yambda's "
        "official protocol: 10, 50, 100); each at most the largest of ks",
    )
    n_boot: PositiveInt = Field(1000, description="bootstrap resamples of users")
    sampled_negatives: PositiveInt = Field(100, description="random unheard tracks per held-out listen")
    sampled_max_listens: PositiveInt = Field(200_000, description="test listens in the sampled protocol")
    oracle_n_popular: PositiveInt = Field(
        1000,
        description="where the catalogue is too big to score exactly, the oracle ranks every "
        "generator's candidates of the user plus these most popular tracks",
    )
    oracle_max_exact_pairs: PositiveInt = Field(
        500_000_000, description="users x tracks up to which the oracle scores the whole catalogue"
    )
    oracle_max_users: PositiveInt | None = Field(
        None,
        description="the oracle lists a seeded sample of at most this many warm users, and its "
        "metrics are over them alone (its coverage is of fewer lists); every warm user when unset",
    )

    @model_validator(mode="after")
    def _coverage_within_lists(self) -> EvaluationConfig:
        longer = [k for k in self.coverage_at if k > max(self.ks)]
        if longer:
            raise ValueError(
                f"evaluation.coverage_at {longer} is beyond the longest list evaluated "
                f"(max of evaluation.ks: {max(self.ks)}); add it to ks"
            )
        return self


class SparkConfig(_Strict):
    """Where ``engine: spark`` runs (see ``musicrec.spark``): the master URL and extra Spark settings.

    ``master`` is ``local[*]`` (every core of this machine), ``local[2]``, ``local-cluster[2,1,1024]``
    (two executor processes, for tests) or a cluster URL such as ``spark://host:7077``. ``conf`` is
    passed to the session as it is (``spark.driver.memory: 4g``, ``spark.executor.memory: 8g``, ...)
    and wins over the local defaults of :func:`musicrec.spark.session.spark_session`.
    """

    master: str = Field("local[*]", min_length=1, description="the Spark master URL")
    conf: dict[str, str] = Field(
        default_factory=dict, description="Spark settings (key: value), over the local defaults"
    )


#: What ``make tune`` can tune (``tuning.models``): a generator, or the ranker.
TUNABLE = ("personal_als", "item_knn", "i2i_history", "top_popular", "ranker")
#: The profile section each tunable model's search-space keys are relative to.
TUNED_SECTIONS = {
    "personal_als": "candidates.als",
    "item_knn": "candidates.item_knn",
    "i2i_history": "candidates.i2i_history",
    "top_popular": "candidates.top_popular",
    "ranker": "ranking",
}


class Dimension(_Strict):
    """One parameter's search range: ``low``..``high`` (integers when both are; ``log``: a log
    scale; ``step``: a grid), or a list of ``choices`` (``null`` among them: the key unset)."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[str | int | float | bool | None] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices (a non-empty list) or low and high")
            return self
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError("give low <= high, or choices")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log scale needs low > 0 and no step")
        return self

    @property
    def integer(self) -> bool:
        """Whether the range is of whole numbers (both bounds written as integers)."""
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))


def _default_space() -> dict[str, dict[str, Dimension]]:
    def r(low, high, log=False, step=None) -> Dimension:
        return Dimension(low=low, high=high, log=log, step=step)

    def c(*choices) -> Dimension:
        return Dimension(choices=list(choices))

    return {
        "personal_als": {
            "factors": r(16, 128, log=True),
            "regularization": r(0.001, 1.0, log=True),
            "alpha": r(1.0, 50.0, log=True),
            "iterations": r(3, 20),
            "confidence": c("linear", "log"),
            "half_life_days": c(None, 14, 30, 60, 120, 240),
        },
        "item_knn": {"kind": c("cosine", "bm25", "tfidf"), "neighbours": r(10, 400, log=True)},
        "i2i_history": {"last_k": r(1, 100, log=True)},
        "top_popular": {"days": c(None, 3, 7, 14, 30, 60, 120)},
        "ranker": {
            "depth": r(3, 10),
            "learning_rate": r(0.01, 0.3, log=True),
            "negatives_per_user": r(5, 100, log=True),
            "candidates.top_popular": r(0, 100, step=10),
            "candidates.personal_als": r(0, 100, step=10),
            "candidates.i2i_history": r(0, 100, step=10),
            "candidates.item_knn": r(0, 100, step=10),
        },
    }


class TuningConfig(_Strict):
    """``make tune``: each model's parameters searched with optuna (TPE, seeded from ``seed``);
    fitted on history, scored on the labels window (see ``musicrec.tuning``)."""

    trials: PositiveInt = Field(30, description="trials per model")
    timeout_seconds: PositiveInt = Field(600, description="seconds per model; the search stops after it")
    metric: Literal["ndcg", "recall", "precision", "map", "hitrate"] = "ndcg"
    k: PositiveInt = 10
    sample_users: PositiveInt | EventShare | None = Field(
        2_000,
        description='labels-window users scored per trial: a count or a share ("20%"), drawn with the '
        "seed; all when unset",
    )
    fit_users: PositiveInt | EventShare | None = Field(
        None,
        description="users whose history the generators' trials fit on: a count or a share "
        '("10%"), drawn with the seed, the scored users among them (a big profile\'s cost control: '
        "make all then fits the chosen parameters on everyone); all when unset",
    )
    models: list[Literal[TUNABLE]] = Field(default_factory=lambda: list(TUNABLE))
    space: dict[Literal[TUNABLE], dict[str, Dimension]] = Field(
        default_factory=_default_space,
        description="per model, the parameters to search (keys relative to the model's section); a "
        "model given here replaces its default space",
    )

    @model_validator(mode="after")
    def _known_keys(self) -> TuningConfig:
        for model, dims in self.space.items():
            section = TUNED_SECTIONS[model]
            for key in dims:
                if not _section_has(section, key):
                    raise ValueError(f"space.{model}.{key}: {section} has no key {key!r}")
        for model in self.models:
            if not self.space.get(model):
                raise ValueError(f"models: {model} has no search space (tuning.space.{model})")
        return self


def _section_has(section: str, key: str) -> bool:
    """Whether the dotted ``key`` names a field of the profile section ``section``
    (``ranking`` + ``candidates.item_knn``: a key of the ``ranking.candidates`` mapping)."""
    model: type[BaseModel] = Profile
    parts = section.split(".") + key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        nested = [
            a
            for a in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not nested:  # a leaf, or a mapping (ranking.candidates): one more part, a generator name
            rest = parts[i + 1 :]
            return not rest or (len(rest) == 1 and part == "candidates" and rest[0] in GENERATOR_NAMES)
        model = nested[0]
    return True


class Profile(_Strict):
    """A whole run's configuration. Later stages add their own sections."""

    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 42
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    tuned: str | None = Field(
        None,
        description="a profile overlay (outputs/<run>/tuning/best.yaml, relative to the project root) "
        "whose keys are merged over this profile's; none when unset",
    )
    tracking: Literal["mlflow"] | None = Field(
        None,
        description="mlflow: log each stage run to the local MLflow store mlruns/ (musicrec.tracking); "
        "null, false or off (the default): no tracking",
    )
    engine: Literal["local", "spark"] = Field(
        "local",
        description="local: polars, numpy and implicit on this machine; spark: the steps that grow with "
        "the data on Apache Spark (musicrec.spark; the extra `spark`, Java 17). ENGINE= on make overrides it",
    )
    spark: SparkConfig = Field(default_factory=SparkConfig)

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking_off(cls, value: object) -> object:
        return None if value is False else value  # YAML reads `off` and `false` as False

    @model_validator(mode="after")
    def _per_user_local(self) -> Profile:
        if self.split.per_user and self.engine == "spark":
            raise ValueError(
                "split.protocol per_user runs on the local engine only (its boundaries are per user, "
                "for small real data sets): use engine local or the global protocol"
            )
        if self.split.gap_minutes and self.engine == "spark":
            raise ValueError(
                f"split.gap_minutes ({self.split.gap_minutes}) runs on the local engine only: "
                "use engine local or set it to 0"
            )
        return self

    @property
    def run(self) -> str:
        assert self.run_name is not None, "load profiles with load_profile()"
        return self.run_name


def _read_yaml(file: Path, where: str) -> Any:
    """A YAML file's content; invalid YAML is a :class:`ProfileError` starting with ``where``."""
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{where}: not valid YAML: {exc}") from None


def load_profile(path: str | Path, data_path: str | Path | None = None, engine: str | None = None) -> Profile:
    """Read and validate a profile; ``data_path`` (make's ``DATA_PATH``) overrides ``data.path``,
    ``engine`` (make's ``ENGINE``, ``local`` or ``spark``) overrides ``engine``.

    >>> load_profile("params/tiny.yaml").run
    'tiny'
    """
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: no such profile (profiles live in params/)")
    raw = _read_yaml(path, str(path))
    if raw is None:  # an empty file would silently run every default (30,000 synthetic users)
        raise ProfileError(f"{path}: the profile is empty; start from a copy of params/default.yaml")
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile is a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("run_name", path.stem)
    if data_path:
        raw.setdefault("data", {})
        if not isinstance(raw["data"], dict):
            raise ProfileError(f"{path}: data: must be a mapping")
        raw["data"]["path"] = str(data_path)
        if raw["data"].get("source", "synthetic") == "synthetic":
            raise ProfileError(
                f"{path}: DATA_PATH={data_path} is for a real source, and this profile's data.source is "
                "synthetic (it generates its data): drop DATA_PATH, or set data.source"
            )
    if engine:
        raw["engine"] = engine
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        raise ProfileError(f"{path}: " + _describe(exc.errors())) from None
    return profile if profile.tuned is None else _with_overlay(path, raw, profile.tuned)


#: Keys an overlay cannot set: they say which run and which overlay, not how a model is fitted.
_NOT_OVERLAID = ("run_name", "tuned")


def overlay_path(profile_path: str | Path, tuned: str) -> Path:
    """Where a profile's ``tuned:`` overlay is: relative to the project root (the folder above
    the profile's ``params/``, else the working directory) unless absolute."""
    given = Path(tuned)
    if given.is_absolute():
        return given
    folder = Path(profile_path).resolve().parent
    root = folder.parent if folder.name == "params" else Path.cwd()
    return root / given


def deep_merge(base: dict, over: dict) -> dict:
    """``over``'s keys over ``base``'s, mappings merged key by key (neither is changed).

    >>> deep_merge({"a": {"x": 1, "y": 2}, "b": 3}, {"a": {"y": 5}})
    {'a': {'x': 1, 'y': 5}, 'b': 3}
    """
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def _with_overlay(path: Path, raw: dict, tuned: str) -> Profile:
    """The profile ``raw`` with the overlay file ``tuned`` merged over it, validated; errors name
    the overlay file."""
    file = overlay_path(path, tuned)
    where = f"{path}: tuned: {tuned}"
    if not file.is_file():
        raise ProfileError(f"{where}: no such overlay file ({file}); run `make tune` or drop `tuned:`")
    over = _read_yaml(file, where)
    if not isinstance(over, dict):
        raise ProfileError(f"{where}: an overlay is a mapping of profile keys, got {type(over).__name__}")
    refused = [k for k in _NOT_OVERLAID if k in over]
    if refused:
        raise ProfileError(f"{where}: {refused[0]}: an overlay cannot set it (only how models are fitted)")
    try:
        return Profile.model_validate(deep_merge(raw, over))
    except ValidationError as exc:
        raise ProfileError(f"{where}: " + _describe(exc.errors())) from None


_UNION_TAGS = ("constrained-int", "date", "int", "function-")


def _known_keys(loc: tuple) -> list[str]:
    """The keys the profile accepts at ``loc`` (a path of section names), for "did you mean"."""
    model: type[BaseModel] = Profile
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        candidates = [
            a
            for a in (annotation, *typing.get_args(annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def _describe(errors: list[dict]) -> str:
    """One line per offending key (a union's alternatives folded into one message)."""
    by_key: dict[str, list[dict]] = {}
    for error in errors:
        loc = ".".join(str(p) for p in error["loc"] if not str(p).startswith(_UNION_TAGS))
        by_key.setdefault(loc or "(top level)", []).append(error)
    parts = []
    for key, errs in by_key.items():
        got = next((e["input"] for e in errs if "input" in e and not isinstance(e["input"], dict)), None)
        if any(e["type"] == "extra_forbidden" for e in errs):
            message = "unknown key"
            close = difflib.get_close_matches(str(errs[0]["loc"][-1]), _known_keys(errs[0]["loc"][:-1]), n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
        elif key.endswith(("label_start", "test_start")) and len(errs) > 1:
            message = "expected a date (YYYY-MM-DD) or a whole number of days before the data ends"
        else:
            message = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errs))
        if got is not None and not message.startswith("unknown key"):
            message += f" (got {got!r})"
        parts.append(f"{key}: {message}")
    return "; ".join(parts)
