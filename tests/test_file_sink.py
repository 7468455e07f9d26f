"""The file sink after a crash: a line torn by a kill mid-write stays alone, and the next reading starts a line of
its own instead of being glued to it (a reader of the file would lose it)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.platforms.file.config import FileConfig
from gateway.platforms.file.sink import FileSink
from gateway.quantities import Quantity as Q
from gateway.reading import Reading
from gateway.stream import Stream


async def test_a_torn_last_line_is_not_glued_to_the_next_reading(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"meter":"m","ts_ms":1000,"values":{"value":1.0}}\n{"meter":"m","ts_ms":20')  # killed mid-write
    sink = FileSink(FileConfig(name="f", type="file", path=out))
    await sink.start()
    await sink.send(Stream("f", "m"), [Reading("m", 2000, {Q.VALUE: 2.0}), Reading("m", 3000, {Q.VALUE: 3.0})])
    await sink.close()
    lines = out.read_text().split("\n")
    assert lines[1] == '{"meter":"m","ts_ms":20', "the torn line stays as it was, alone"
    assert [json.loads(line)["ts_ms"] for line in lines[2:] if line] == [2000, 3000]
    assert out.read_text().endswith("\n")


async def test_a_whole_file_gets_no_blank_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"meter":"m","ts_ms":1000,"values":{"value":1.0}}\n')
    sink = FileSink(FileConfig(name="f", type="file", path=out))
    await sink.start()
    await sink.send(Stream("f", "m"), [Reading("m", 2000, {Q.VALUE: 2.0})])
    await sink.close()
    assert [json.loads(line)["ts_ms"] for line in out.read_text().splitlines()] == [1000, 2000]
