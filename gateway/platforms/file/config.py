"""Configuration of a ``file`` sink."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from gateway.config.common import SinkBase


class FileConfig(SinkBase):
    """JSON Lines on local disk: an archive, or a dry run before a platform is connected."""

    type: Literal["file"]
    path: Path
    #: fsync after every batch, so that "delivered" means "on disk".
    fsync: bool = True
    max_batch: Annotated[int, Field(ge=1, le=10000)] = 500
