"""The service's configuration: one typed model, meant as a profile's ``service:`` section.

Only pydantic here (no FastAPI, no numpy), so that :mod:`musicrec.config` can import
:class:`ServiceConfig` without pulling in the web stack.

>>> cfg = ServiceConfig.model_validate({"blending": {"online_share": 0.5}})
>>> cfg.blending.strategy, cfg.blending.online_share, cfg.host
('interleave', 0.5, '127.0.0.1')
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlendingConfig(_Strict):
    """How the offline list and the online i2i picks become one list (:func:`~.blending.blend`)."""

    strategy: Literal["interleave", "rrf", "offline"] = Field(
        "interleave",
        description="interleave: online picks take a share of the slots; rrf: reciprocal "
        "rank fusion of the two lists; offline: the offline list alone (online picks ignored)",
    )
    online_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="interleave: share of the slots for online "
        "picks (slot j is online when floor(j * share) grows)",
    )
    rrf_k: float = Field(60.0, gt=0, description="rrf: the constant c in weight / (c + rank)")
    online_weight: float = Field(1.0, ge=0, description="rrf: weight of the online list (offline: 1)")
    recent_events: PositiveInt = Field(
        20, description="latest stored events (distinct tracks) the online i2i starts from"
    )
    online_candidates: PositiveInt = Field(100, description="online i2i picks computed per request")


class VariantConfig(_Strict):
    """One arm of an experiment: its traffic share and what it changes in the blending."""

    name: str = Field(pattern=NAME_PATTERN)
    share: float = Field(gt=0, le=1)
    blending: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of service.blending for this variant, for example "
        "{strategy: offline}; keys not given keep the service's value",
    )


class ExperimentConfig(_Strict):
    """An A/B experiment: variants with traffic shares, assigned by a stable hash of (salt, user)."""

    name: str = Field(pattern=NAME_PATTERN)
    salt: str | None = Field(
        None, description="hash salt; the experiment's name when unset. A new salt reshuffles every user"
    )
    variants: list[VariantConfig] = Field(min_length=1)
    success_window_hours: float = Field(
        24.0,
        gt=0,
        description="a recommendation succeeds when the user "
        "listens to one of its tracks within this window after serving",
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the intervals and the test")
    enabled: bool = Field(True, description="when false, nobody is assigned (results stay readable)")

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variants: names must be unique (got {names})")
        total = sum(v.share for v in self.variants)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"variants: shares must add up to 1 (got {total:g})")
        return self

    @property
    def effective_salt(self) -> str:
        return self.salt if self.salt is not None else self.name


class ServiceConfig(_Strict):
    """The recommendation service (``python -m musicrec.service``, ``musicrec.service.create_app``)."""

    host: str = Field("127.0.0.1", description="bind address; loopback only by default")
    port: int = Field(8000, ge=1, le=65535)
    db_path: str | None = Field(
        None,
        description="the SQLite store of events and A/B logs; relative to "
        "the project root; outputs/<run>/service/events.sqlite when unset",
    )
    heard: Literal["fit", "all"] = Field(
        "fit",
        description="history listens never recommended: fit = before the split's test_start (the "
        "window the offline lists were fitted on; the test window then plays the future), all = every "
        "listen in interactions.parquet",
    )
    default_k: PositiveInt = 10
    max_k: PositiveInt = Field(100, description="largest k accepted by /recommendations and /similar")
    names: bool = Field(True, description="load track and artist names at start-up (for ?names=true)")
    online_cache_size: int = Field(
        10_000,
        ge=0,
        description="users whose online i2i picks are kept in memory until their events change (0: no cache)",
    )
    log_recommendations: bool = Field(
        True, description="log every served list (id, time, user, experiment, variant, tracks) in the store"
    )
    reload_poll_seconds: float = Field(
        1.0,
        ge=0,
        description="how often a worker looks whether another "
        "was asked to reload (POST /admin/reload reaches every worker "
        "through the store); 0: never, only the worker asked reloads",
    )
    log_flush_ms: int = Field(
        100,
        ge=0,
        description="write the log of served lists in batches every this "
        "many ms (0: one transaction per request); reading the log flushes first",
    )
    busy_timeout_ms: PositiveInt = Field(10_000, description="how long a writer waits for SQLite's lock")
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="SQLite synchronous mode in WAL: NORMAL survives a crash of the service, "
        "FULL also a power loss (slower writes)",
    )
    replay_mode: bool = Field(
        False,
        description="replays (make abtest): at= is honoured for anyone and A/B outcomes count listens by "
        "their own timestamps; off (normal serving): at= needs the admin token, the served time is the "
        "server's clock, and outcomes count only listens received after a list was served",
    )
    events_read: PositiveInt = Field(
        1000,
        description="a user's latest stored events read per request: the online picks use the newest "
        "blending.recent_events of them, and their tracks count as heard (older events do not)",
    )
    max_body_bytes: PositiveInt = Field(
        2_000_000, description="a larger request body gets 413 (10,000 listens take about 700 kB)"
    )
    body_idle_seconds: PositiveFloat = Field(
        5.0,
        description="a request body that sends no byte for this long gets 408 (short body, stalled client)",
    )
    max_head_bytes: PositiveInt = Field(
        32_768, description="a request whose request line and headers pass this many bytes gets 431"
    )
    earliest_time: dt.date = Field(
        dt.date(1970, 1, 1), description="event timestamps and at= before this day are refused (422)"
    )
    future_days: float = Field(
        1.0, ge=0, description="event timestamps and at= more than this many days after now are refused (422)"
    )
    blending: BlendingConfig = Field(default_factory=BlendingConfig)
    experiment: ExperimentConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ServiceConfig:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        if self.experiment is not None:
            for variant in self.experiment.variants:
                try:
                    self.blending_for(variant.name)
                except ValueError as exc:
                    raise ValueError(f"experiment.variants[{variant.name}].blending: {exc}") from None
        return self

    def blending_for(self, variant: str | None) -> BlendingConfig:
        """The blending of ``variant`` of the configured experiment (the service's when ``None``)."""
        if variant is None or self.experiment is None:
            return self.blending
        overrides = next((v.blending for v in self.experiment.variants if v.name == variant), None)
        if not overrides:
            return self.blending
        return BlendingConfig.model_validate({**self.blending.model_dump(), **overrides})
