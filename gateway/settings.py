"""Process settings from the environment (pydantic-settings): where the config file is, how to log.

``METER_GATEWAY_CONFIG``, ``METER_GATEWAY_LOG_LEVEL``, ``METER_GATEWAY_LOG_FORMAT``; command-line options win.
"""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CONFIG = "/etc/meter-gateway/config.yaml"


class ProcessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="METER_GATEWAY_", extra="ignore")

    config: str = DEFAULT_CONFIG
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
