"""The built-in meter profiles as people read them: the table ``meter-gateway profiles`` prints, one profile's
registers, and the supported-models page (docs/meters.md) generated from the files."""

from __future__ import annotations

from gateway.config.profiles import Profile
from gateway.platforms.modbus.config import SerialBus
from gateway.platforms.modbus.plan import plan
from gateway.platforms.modbus.tools import unit_label


def render_profiles(profiles: dict[str, Profile]) -> str:
    serial = SerialBus(name="x", type="serial", port="x")
    lines = [f"{'PROFILE':<22} {'MODEL':<34} {'KIND':<13} {'VALUES':>6}  REQUESTS AT 9600 BAUD"]
    for name, p in sorted(profiles.items()):
        n = len(plan(p.points, serial.default_max_gap()))
        lines.append(f"{name:<22} {p.title:<34} {p.spec.kind:<13} {len(p.points):>6}  {n}")
        if p.spec.aliases:
            lines.append(f"{'':<22}   also: {', '.join(p.spec.aliases)}")
    lines.append("")
    lines.append("'meter-gateway profiles NAME' shows one profile's registers and the manual it follows; NAME may be a"
                 " model (a rebadge too).")
    return "\n".join(lines)


MODELS_HEADER = """# Supported meter models

<!-- Generated from gateway/profiles/ by `meter-gateway profiles --markdown > docs/meters.md`; a test fails when
this file and the profiles differ. Edit the profiles, not this file. -->

Every built-in profile, with the other names of the same device (rebadges and sibling models read with the very
same registers: `meter-gateway profiles NAME` and `scan` find the profile under any of them), the registers it
reads, the vendor document it follows and what it was checked against. "Requests" is the number of Modbus requests
a full poll takes on a 9600-baud line. None has yet been checked against a physical meter: each against the
manual's table as transcribed by public projects, register words worked out by hand from the documented types,
and a simulator built from the profile (see [modbus.md](modbus.md#meter-profiles) for how to write and check one).

Besides these, `profile: sunspec` reads any SunSpec meter (models 201-204, 211-214) or inverter (101-103, 111-113)
from the registers the device describes itself ([modbus.md](modbus.md#sunspec-devices)).
"""


def render_markdown(profiles: dict[str, Profile]) -> str:
    """The supported-models page (docs/meters.md), generated from the profiles."""
    serial = SerialBus(name="x", type="serial", port="x")
    lines = [MODELS_HEADER, "| profile | manufacturer | model | also sold as | kind | values | requests |",
             "|---|---|---|---|---|---|---|"]
    for name, p in sorted(profiles.items(), key=lambda kv: (kv[1].spec.manufacturer.lower(), kv[0])):
        s = p.spec
        n = len(plan(p.points, serial.default_max_gap()))
        kind = s.kind.replace("_", " ") + (f" ({s.value_unit})" if s.value_unit else "")
        lines.append(f"| `{name}` | {s.manufacturer} | {s.model} | {', '.join(s.aliases) or '-'} | {kind} |"
                     f" {len(p.points)} | {n} |")
    lines.append("")
    for name, p in sorted(profiles.items()):
        s = p.spec
        functions = sorted({pt.function for pt in p.points})
        types = sorted({pt.type for pt in p.points})
        orders = sorted({pt.word_order for pt in p.points if pt.width > 1})
        registers = f"{'/'.join(functions)} registers, {', '.join(types)}" + (
            f", {' and '.join(o + ' word first' if o == 'little' else 'high word first' for o in orders)}"
            if orders else "")
        lines += [f"## `{name}`: {p.title}", "", f"- Reads: {', '.join(pt.quantity.value for pt in p.points)}",
                  f"- Registers: {registers}", f"- Manual: {s.manual}"]
        if s.checked:
            lines.append(f"- Checked: {s.checked}")
        lines.append("")
    return "\n".join(lines)


def render_profile(p: Profile) -> str:
    s = p.spec
    lines = [f"{p.name}: {p.title} ({s.kind})", f"file:    {p.path}", f"manual:  {s.manual}"]
    if s.aliases:
        lines.append(f"also:    {', '.join(s.aliases)} (the same register map)")
    if s.checked:
        lines.append(f"checked: {s.checked}")
    if s.value_unit:
        lines.append(f"value unit: {s.value_unit}")
    lines += ["", f"{'QUANTITY':<22} {'FUNCTION':<8} {'ADDRESS':>15} {'TYPE':<8} {'WORDS':<6} {'SCALE':>8} UNIT"]
    notes = {r.quantity: r.note for r in s.registers}
    for pt in sorted(p.points, key=lambda x: (x.function, x.address)):
        scale = f"{pt.scale:g}" + (f"{pt.offset:+g}" if pt.offset else "")
        na = " n/a=" + ",".join(f"0x{v:X}" for v in sorted(pt.not_available)) if pt.not_available else ""
        words = pt.word_order if pt.width > 1 else "-"
        unit = unit_label(pt.quantity, s.value_unit)
        note = f"  ({notes[pt.quantity]})" if notes.get(pt.quantity) else ""
        lines.append(f"{pt.quantity.value:<22} {pt.function:<8} {f'0x{pt.address:04X} ({pt.address})':>15}"
                     f" {pt.type:<8} {words:<6} {scale:>8} {unit}{na}{note}")
    return "\n".join(lines)
