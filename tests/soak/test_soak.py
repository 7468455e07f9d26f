"""The whole-system fault soak in a short form (``pytest -m soak -n 0``; ``.ci/run`` runs it with SOAK_SECONDS=120).
The full form is ``python tests/soak/soak.py --duration 600``."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from tests.soak.soak import failures, render, run_soak


@pytest.mark.soak
def test_nothing_confirmed_is_lost_reordered_or_misattributed_under_random_faults(tmp_path: Path) -> None:
    if shutil.which("mosquitto") is None or shutil.which("socat") is None:
        pytest.skip("mosquitto and socat are needed (CI installs them)")
    seed = int(os.environ.get("SOAK_SEED") or random.randrange(10**6))
    result = run_soak(tmp_path, float(os.environ.get("SOAK_SECONDS", "60")), seed)
    print("\n" + render(result))
    assert not failures(result), f"seed {seed}: {failures(result)}"
    assert result["confirmed"] > 0 and result["restarts"] + sum(result["faults"].values()) > 0
