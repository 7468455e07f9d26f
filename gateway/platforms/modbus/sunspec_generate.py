"""Generate ``sunspec_models.json``: the SunSpec Alliance's model definitions the gateway reads, in compact form.

The definitions come from the ``pysunspec2`` package (the SunSpec Alliance's own, Apache-2.0), which ships every
model as JSON. The gateway needs 13 of them (common 1; inverters 101-103 and 111-113; meters 201-204 and 211-214)
and only a few fields of each point (name, type, size, scale factor, units), so the table is generated here, at
development time, and the package does not need ``pysunspec2`` (nor its 114 models in memory) at run time.

    python -m gateway.platforms.modbus.sunspec_generate   # needs the test extra (pysunspec2)

A test regenerates the table and compares it with the committed file.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

MODELS = (1, 101, 102, 103, 111, 112, 113, 201, 202, 203, 204, 211, 212, 213, 214)
TABLE = Path(__file__).resolve().parent / "sunspec_models.json"


def generate() -> str:
    import sunspec2  # type: ignore[import-untyped, import-not-found, unused-ignore]  # the test extra

    source = Path(sunspec2.__file__).resolve().parent / "models" / "json"
    models: dict[str, Any] = {}
    for model_id in MODELS:
        group = json.loads((source / f"model_{model_id}.json").read_text())["group"]
        points = []
        offset = 0  # from the first register after ID and L
        for p in group["points"]:
            size = int(p.get("size", 1))
            if p["name"] not in ("ID", "L"):
                points.append([p["name"], offset, p["type"], size, p.get("sf"), p.get("units")])
                offset += size
        models[str(model_id)] = {"name": group["name"], "length": offset, "points": points}
    table = {"source": f"pysunspec2 {metadata.version('pysunspec2')} (SunSpec Alliance model definitions,"
                       " Apache-2.0)", "models": models}
    return json.dumps(table, indent=None, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    TABLE.write_text(generate())
    print(f"wrote {TABLE} ({TABLE.stat().st_size} bytes)")
