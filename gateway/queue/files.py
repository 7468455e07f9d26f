"""Where a configuration's queue lives, and the store it opens."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.queue.store import PageCap, QueueStore

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig


def queue_path(config: GatewayConfig) -> Path:
    return config.state_dir / "queue.db"


def open_store(config: GatewayConfig, page_cap: PageCap | None = None) -> QueueStore:
    """The configuration's queue file (not opened yet). ``page_cap``: the full-disk seam for fault tests."""
    return QueueStore(queue_path(config), durability=config.queue.durability, max_size=config.queue.max_size,
                      max_age_s=config.queue.max_age, page_cap=page_cap)
