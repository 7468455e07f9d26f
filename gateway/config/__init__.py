"""Configuration: one YAML file, validated into frozen pydantic models, every problem reported as FILE:LINE.

The models of each meter and sink type live with their platform (``gateway/platforms/<name>/config.py``) and build
on :mod:`gateway.config.common`; :mod:`gateway.config.models` assembles the file from them. The names below are
loaded on first use, so that a platform's model can import ``gateway.config.common`` without loading every other
platform first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config.loader import load_config, load_config_text
    from gateway.config.models import GatewayConfig

__all__ = ["GatewayConfig", "load_config", "load_config_text"]


def __getattr__(name: str) -> Any:
    if name in ("load_config", "load_config_text"):
        from gateway.config import loader

        return getattr(loader, name)
    if name == "GatewayConfig":
        from gateway.config.models import GatewayConfig

        return GatewayConfig
    raise AttributeError(f"module 'gateway.config' has no attribute {name!r}")
