"""What the commands share: exit codes, loading the configuration, opening the queue beside the daemon."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.logs import REDACTOR
from gateway.queue import QueueStore, open_store, queue_path

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def load(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(Path(args.config))
    REDACTOR.set(config.secrets())  # what a command prints of a peer's answer is scrubbed like a log line
    return config


def open_beside(config: GatewayConfig) -> QueueStore | None:
    """The queue file opened beside a running daemon (no repair), or None when there is none yet."""
    if not queue_path(config).exists():
        return None
    store = open_store(config)
    store.open(repair=False)
    return store
