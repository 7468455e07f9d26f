"""Configuration: one YAML file, validated into frozen pydantic models, every problem reported as FILE:LINE."""

from gateway.config.loader import load_config, load_config_text
from gateway.config.models import GatewayConfig

__all__ = ["GatewayConfig", "load_config", "load_config_text"]
