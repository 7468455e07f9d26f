"""Configuration of a ``stdout`` sink."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.config.common import SinkBase


class StdoutConfig(SinkBase):
    """JSON Lines on standard output (demo, debugging)."""

    type: Literal["stdout"]
    max_batch: Annotated[int, Field(ge=1, le=10000)] = 100
