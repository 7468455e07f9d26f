"""Configuration: every mistake gives exit 2 and one line naming the file, the line and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_config
from gateway.errors import ConfigError

GOOD = """\
site:
  name: plant-3
  timezone: Europe/Dublin
state_dir: {state}
queue:
  max_size: 64MB
  max_age: 7d
  durability: normal
meters:
  - name: incomer
    type: simulated
    interval: 1m
  - name: gas-main
    type: simulated
    model: gas
    value_unit: m3
    interval: 15m
sinks:
  - name: archive
    type: file
    path: {state}/archive.jsonl
  - name: console
    type: stdout
    meters: [incomer]
    max_in_flight: 2
    backoff_base: 500ms
    backoff_cap: 1h30m
"""

M = "meters:\n  - {name: m1, type: simulated}\n"
S = "sinks:\n  - {name: out, type: stdout}\n"

# (file content, line, expected fragment of the message). Each must produce exactly this problem.
BAD: list[tuple[str, str, int, str]] = [
    ("empty", "", 1, "the file is empty"),
    ("only comments", "# nothing\n\n", 1, "the file is empty"),
    ("syntax", "meters:\n  - name: m1\n   type: x\n" + S, 3, "YAML syntax error"),
    ("tab indent", "meters:\n\t- name: m1\n" + S, 2, "YAML syntax error"),
    ("unclosed flow", "meters: [{name: m1, type: simulated}\n" + S, 2, "YAML syntax error"),
    ("a list at the top", "- meters\n- sinks\n", 1, "must be a mapping"),
    ("a scalar at the top", "hello\n", 1, "must be a mapping"),
    ("unknown top key", M + S + "sinkz: []\n", 5, "sinkz: unknown key (did you mean 'sinks'?"),
    ("unknown meter key", "meters:\n  - name: m1\n    type: simulated\n    intervall: 5m\n" + S, 4,
     "meters[m1].intervall: unknown key (did you mean 'interval'?"),
    ("duplicate top key", M + S + "meters: []\n", 5, "meters: duplicate key (first given on line 1"),
    ("duplicate nested key", "meters:\n  - name: m1\n    type: simulated\n    name: m2\n" + S, 4,
     "duplicate key (first given on line 2"),
    ("missing meters", S, 1, "meters: required key is missing"),
    ("missing sinks", M, 1, "sinks: required key is missing"),
    ("no meters", "meters: []\n" + S, 1, "meters: must have at least 1 item"),
    ("missing meter type", "meters:\n  - name: m1\n" + S, 2, "meters[m1].type: required key 'type' is missing"),
    ("unknown meter type", "meters:\n  - name: m1\n    type: modbuss\n" + S, 3,
     "meters[m1].type: unknown type 'modbuss'"),
    ("missing file path", M + "sinks:\n  - name: out\n    type: file\n", 4, "sinks[out].path: required key is missing"),
    ("zero interval", "meters:\n  - {name: m1, type: simulated, interval: 0s}\n" + S, 2, "must be longer than zero"),
    ("negative interval", "meters:\n  - {name: m1, type: simulated, interval: -5s}\n" + S, 2,
     "is not a duration such as"),
    ("bare number interval", "meters:\n  - {name: m1, type: simulated, interval: 60}\n" + S, 2,
     "meters[m1].interval: expected a duration"),
    ("bad size", M + S + "queue: {max_size: lots}\n", 5, "queue.max_size: 'lots' is not a size"),
    ("wrong type int", M + "sinks:\n  - name: out\n    type: stdout\n    max_in_flight: many\n", 6,
     "sinks[out].max_in_flight: expected a whole number, got 'many'"),
    ("out of range", M + "sinks:\n  - {name: out, type: stdout, max_in_flight: 0}\n", 4,
     "sinks[out].max_in_flight: 0 is out of range (expected a value >= 1)"),
    ("wrong type bool", M + "sinks:\n  - {name: out, type: file, path: /tmp/x, fsync: maybe}\n", 4,
     "sinks[out].fsync: expected true or false"),
    ("list expected", "meters: {name: m1}\n" + S, 1, "meters: expected a list"),
    ("mapping expected", M + S + "queue: 5\n", 5, "queue: expected a mapping"),
    ("bad durability", M + S + "queue: {durability: fast}\n", 5,
     "queue.durability: 'fast' is not allowed (expected one of: 'full' or 'normal')"),
    ("bad timezone", "site: {timezone: Europe/Dubln}\n" + M + S, 1,
     "site.timezone: 'Europe/Dubln' is not an IANA time zone"),
    ("unknown meter reference", M + "sinks:\n  - name: out\n    type: stdout\n    meters: [m1, m9]\n", 6,
     "sinks[out].meters[1]: no meter named 'm9' (defined: m1)"),
    ("duplicate meter name", "meters:\n  - {name: m1, type: simulated}\n  - {name: m1, type: simulated}\n" + S, 3,
     "'m1' is already used by meters[0]"),
    ("bad name", "meters:\n  - {name: 'my meter', type: simulated}\n" + S, 2,
     "'my meter' is not a valid name"),
    ("backoff base above cap", M + "sinks:\n  - {name: out, type: stdout, backoff_base: 10m, backoff_cap: 1m}\n",
     4, "sinks[out].backoff_base: is longer than backoff_cap"),
    ("bad value unit", "meters:\n  - {name: g, type: simulated, model: gas, value_unit: m4}\n" + S, 2,
     "meters[g].value_unit: 'm4' is not a known unit"),
    ("non-text key", M + S + "1: x\n", 5, "key 1 must be text"),
]


@pytest.mark.parametrize(("content", "line", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_file_gives_one_line_with_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, line: int, fragment: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(content)
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    problems = err[:-1]
    assert len(problems) == 1, err
    assert problems[0].startswith(f"{path}:{line}: "), problems[0]
    assert fragment in problems[0], problems[0]
    assert "Traceback" not in "\n".join(err)
    assert err[-1] == "meter-gateway: 1 problem in the configuration; nothing was changed"


def test_at_least_25_bad_files_are_covered() -> None:
    assert len(BAD) >= 25


def test_not_utf8_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"meters:\n  - name: caf\xe9\n")
    assert main(["check", "-c", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}:2: the file is not UTF-8 text (byte 0xe9)")


def test_missing_file_and_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "the configuration file does not exist" in capsys.readouterr().err
    assert main(["check", "-c", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_all_problems_are_reported_at_once_in_line_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "queue: {durability: fast}\n"
        "meters:\n  - {name: m1, type: simulated, interval: 0s}\n"
        "sinks:\n  - {name: out, type: stdout, max_in_flight: 0, colour: red}\n"
    )
    assert main(["check", "-c", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(":")[1] for ln in lines[:-1]] == ["1", "3", "5", "5"]
    assert lines[-1].startswith("meter-gateway: 4 problems")


def test_good_file_loads_with_units_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD.format(state=tmp_path))
    c = load_config(path)
    assert c.queue.max_size == 64_000_000 and c.queue.max_age == 7 * 86400 and c.queue.durability == "normal"
    assert c.meters[0].interval == 60 and c.meters[1].interval == 900
    assert c.sinks[1].backoff_base == 0.5 and c.sinks[1].backoff_cap == 5400
    assert c.sink_meters() == {"archive": ["incomer", "gas-main"], "console": ["incomer"]}
    with pytest.raises(Exception, match="frozen"):
        c.site.name = "x"  # type: ignore[misc]
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "meters:  2" in out and "sinks:   2" in out and "Europe/Dublin" in out


def test_the_shipped_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
    load_config(example, environ={"METER_GATEWAY_SINKS__ARCHIVE__PATH": str(tmp_path / "a.jsonl")})


def test_timezone_defaults_to_the_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    c = load_config(_write(tmp_path, M + S))
    assert c.site.timezone == "America/New_York"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- environment and secret files

SECRET_YAML = M + "sinks:\n  - name: out-1\n    type: stdout\n"


def test_environment_overrides_a_named_list_item_and_a_section(tmp_path: Path) -> None:
    path = _write(tmp_path, SECRET_YAML)
    c = load_config(path, environ={
        "METER_GATEWAY_SINKS__OUT_1__MAX_IN_FLIGHT": "3",
        "METER_GATEWAY_QUEUE__DURABILITY": "normal",
        "METER_GATEWAY_LOG_LEVEL": "debug",  # a process setting, not part of the file
    })
    assert c.sinks[0].max_in_flight == 3
    assert c.queue.durability == "normal"


def test_environment_naming_an_unknown_item_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, SECRET_YAML)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={"METER_GATEWAY_SINKS__WATTICS__PASSWORD": "hunter22"})
    assert e.value.problems == [
        f"environment METER_GATEWAY_SINKS__WATTICS__PASSWORD: {path} has no entry named 'wattics' in sinks"
    ]


def test_environment_value_errors_name_the_variable(tmp_path: Path) -> None:
    path = _write(tmp_path, SECRET_YAML)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={"METER_GATEWAY_SINKS__OUT_1__MAX_IN_FLIGHT": "lots"})
    assert e.value.problems[0].startswith("environment METER_GATEWAY_SINKS__OUT_1__MAX_IN_FLIGHT: sinks[out-1]")


def test_secret_file_is_read_and_never_shown(tmp_path: Path) -> None:
    from gateway.config.loader import _resolve_secret_files

    (tmp_path / "pw").write_text("s3cret-value\n")
    data = {"sinks": [{"name": "w", "password_file": "pw"}]}
    assert _resolve_secret_files(data, {}, tmp_path, {}, "f") == []
    assert data == {"sinks": [{"name": "w", "password": "s3cret-value"}]}
    # %d is systemd's credentials directory (LoadCredential=).
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "wattics").write_text("from-systemd")
    data = {"sinks": [{"name": "w", "password_file": "%d/wattics"}]}
    assert _resolve_secret_files(data, {}, tmp_path, {"CREDENTIALS_DIRECTORY": str(creds)}, "f") == []
    assert data["sinks"][0]["password"] == "from-systemd"


def test_secret_file_problems(tmp_path: Path) -> None:
    from gateway.config.loader import _resolve_secret_files

    (tmp_path / "empty").write_text("")
    origins = {("sinks", 0, "password_file"): "cfg.yaml:7"}
    cases = [
        ({"name": "w", "password_file": "missing"}, "cfg.yaml:7: sinks[w].password_file: cannot read"),
        ({"name": "w", "password_file": "empty"}, "is empty"),
        ({"name": "w", "password_file": "empty", "password": "x"}, "give either password or password_file"),
    ]
    for item, fragment in cases:
        problems = _resolve_secret_files({"sinks": [item]}, origins, tmp_path, {}, "cfg.yaml")
        assert len(problems) == 1 and fragment in problems[0], problems


def test_check_never_prints_a_traceback_for_any_bad_file(tmp_path: Path) -> None:
    # Through the installed console script, as a technician runs it.
    path = _write(tmp_path, "meters: [{name: m1, type: simulated, interval: [1, 2]}]\n" + S)
    p = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith(f"{path}:1: meters[m1].interval: expected a duration")
    assert "Traceback" not in p.stderr


def test_five_mistakes_at_different_stages_are_reported_at_once_in_file_order(tmp_path: Path) -> None:
    """An unreadable password_file (read before validation), a bare number for a duration and a missing ca_file
    (validation), an unknown meter in data_points (a check across sections): one run, every problem, file order."""
    path = tmp_path / "config.yaml"
    path.write_text("""\
meters:
  - {name: main, type: simulated, interval: 1}
  - {name: gas, type: simulated, interval: 1ms}
sinks:
  - name: w
    type: wattics
    username: u
    password_file: /nonexistent/wattics.pw
    ca_file: /nonexistent/ca.pem
    data_points: [{id: e, meter: main}, {id: g, meter: nope}]
""")
    p = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert [line.split(": ", 2)[:2] for line in lines[:-1]] == [
        [f"{path}:2", "meters[main].interval"],
        [f"{path}:3", "meters[gas].interval"],
        [f"{path}:8", "sinks[w].password_file"],
        [f"{path}:9", "sinks[w].ca_file"],
        [f"{path}:10", "sinks[w].data_points[1].meter"],
    ], lines
    assert "did you mean minutes (1m)" in lines[1] and "no meter named 'nope'" in lines[4]
    assert lines[-1] == "meter-gateway: 5 problems in the configuration; nothing was changed"


def test_a_yaml_alias_bomb_is_refused_quickly_and_a_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    bomb = "".join(f"{a}: &{a} [{', '.join([f'*{b}'] * 9)}]\n" for b, a in zip("abcdefgh", "bcdefghi", strict=True))
    path = tmp_path / "config.yaml"
    path.write_text('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + bomb
                    + "meters: [{name: m, type: simulated}]\nsinks: [{name: s, type: stdout}]\n")
    assert len(path.read_bytes()) < 700
    p = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 2 and "stands for more than 200,000 values" in p.stderr


@pytest.mark.parametrize(("value", "var"), [
    ('"${WATTICS_PASSWORD}"', "METER_GATEWAY_SINKS__W__PASSWORD"),
    ("$WATTICS_PASSWORD", "METER_GATEWAY_SINKS__W__PASSWORD"),
])
def test_a_shell_variable_is_refused_with_the_gateways_own_way(tmp_path: Path, value: str, var: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("meters: [{name: m, type: simulated}]\nsinks:\n  - {name: w, type: wattics, username: u,"
                    f" password: {value}, data_points: [{{id: e, meter: m}}]}}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert len(e.value.problems) == 1 and f"set the environment variable {var} instead" in e.value.problems[0]


def test_a_password_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "w.pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    path = tmp_path / "config.yaml"
    path.write_text(f"meters: [{{name: m, type: simulated}}]\nsinks:\n  - {{name: w, type: wattics, username: u,"
                    f" password_file: {secret}, data_points: [{{id: e, meter: m}}]}}\n")
    path.chmod(0o600)
    p = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True)
    assert p.returncode == 0 and f"warning: {secret} holds a secret and every user of this machine can read it" \
        in p.stdout
    secret.chmod(0o640)
    p = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True)
    assert "warning" not in p.stdout
