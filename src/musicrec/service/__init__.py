"""The recommendation service: FastAPI over a run's artefacts, with a SQLite event store.

``create_app`` and ``serve`` are imported on first use, so that importing
:mod:`musicrec.service.settings` (the profile's ``service:`` section) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from musicrec.service.app import create_app, serve
    from musicrec.service.settings import BlendingConfig, ExperimentConfig, ServiceConfig, VariantConfig

__all__ = ["create_app", "serve", "ServiceConfig", "BlendingConfig", "ExperimentConfig", "VariantConfig"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from musicrec.service import app

        return getattr(app, name)
    if name in ("ServiceConfig", "BlendingConfig", "ExperimentConfig", "VariantConfig"):
        from musicrec.service import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'musicrec.service' has no attribute {name!r}")
