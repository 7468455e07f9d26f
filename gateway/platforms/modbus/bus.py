"""A Modbus bus: one physical line and the connection(s) to it, wrapped so callers see the gateway's own errors.

A serial line or an RTU-over-TCP converter carries one request at a time, with a silence (``gap``) between the end
of one exchange and the next request: a meter's whole poll holds the line (:meth:`Bus.session`), then the next
meter's. A Modbus TCP device may take ``max_parallel`` requests at once, one per connection.

pymodbus does the framing. Its own retries are off (a dead meter would cost retries x timeout of everyone's bus
time) and so is its background reconnection: :class:`Bus` reconnects itself, with backoff, and says so once.
Library errors become :class:`~gateway.errors.ModbusError` subclasses here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from gateway.errors import ModbusBadAnswer, ModbusBusError, ModbusExceptionReply, ModbusTimeout
from gateway.platforms.modbus.config import BusBase, RtuOverTcpBus, SerialBus, SerialLine, TcpBus, bus_where
from gateway.platforms.modbus.plan import Block

# pymodbus logs every timeout at error level; the gateway logs meter and bus state changes itself.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

log = structlog.get_logger("gateway.platforms.modbus.bus")

RECONNECT_BASE = 1.0
RECONNECT_CAP = 30.0

Client = AsyncModbusTcpClient | AsyncModbusSerialClient


@dataclass
class WireStats:
    """What went over the wire: requests sent, bytes sent (pymodbus' packet trace) and bytes answered."""

    requests: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    by_unit: dict[int, int] = field(default_factory=dict)


class _Connection:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.client: Client | None = None
        self.last_end = 0.0
        #: How long the last request took, from sent to answered (or given up).
        self.answer_s = 0.0

    def _make(self) -> Client:
        c = self.bus.config
        timeout = c.timeout
        if isinstance(c, SerialBus):
            return AsyncModbusSerialClient(
                c.port, framer=FramerType.RTU, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
                stopbits=c.stopbits, timeout=timeout, retries=0, reconnect_delay=0, trace_packet=self.bus.trace)
        assert isinstance(c, TcpBus | RtuOverTcpBus)
        framer = FramerType.RTU if isinstance(c, RtuOverTcpBus) else FramerType.SOCKET
        return AsyncModbusTcpClient(c.host, port=c.port, framer=framer, timeout=timeout, retries=0,
                                    reconnect_delay=0, trace_packet=self.bus.trace)

    async def ensure(self) -> Client:
        if self.client is not None and self.client.connected:
            return self.client
        _quiet_undecodable_frames(asyncio.get_running_loop())
        self.close()
        bus = self.bus
        wait = bus.next_connect - time.monotonic()
        if wait > 0:
            raise ModbusBusError(f"{bus.where}: not connected ({bus.down_reason}); next try in {wait:.0f}s")
        client = self._make()
        reason = ""
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as e:  # pymodbus returns False for most failures, not all
            ok = False
            reason = _short(e)
        if not ok:
            client.close()
            raise bus.connect_failed(_why_not_connected(bus.config, reason))
        if bus.config.connect_pause > 0:
            await asyncio.sleep(bus.config.connect_pause)  # before the first frame: the adapter settles
        self.client = client
        bus.connected()
        return client

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None

    async def read(self, unit: int, block: Block, answer_within: float | None = None) -> list[int]:
        """One request; ``answer_within`` is the meter's timeout (default: the bus's). ``answer_s`` is set to the
        time the answer took (from the request sent to the answer decoded)."""
        client = await self.ensure()
        bus = self.bus
        silence = self.last_end + bus.gap - time.monotonic()  # no gap (0) on Modbus TCP
        if silence > 0:
            await asyncio.sleep(silence)
        what = f"unit {unit} {block.function} 0x{block.address:04X} x{block.count}"
        bus.stats.requests += 1
        bus.stats.by_unit[unit] = bus.stats.by_unit.get(unit, 0) + 1
        wait = answer_within or bus.config.timeout
        # pymodbus reads its answer timeout at each request, under the connection's lock: one request at a time
        # per connection, so this meter's timeout is the one in force for this request only.
        client.ctx.comm_params.timeout_connect = wait
        sent = time.monotonic()
        try:
            if block.code == 4:
                rr = await client.read_input_registers(block.address, count=block.count, device_id=unit)
            else:
                rr = await client.read_holding_registers(block.address, count=block.count, device_id=unit)
        except ModbusIOException as e:
            bus.troubled_at = time.monotonic()
            garbled = _garbled.pop(client.ctx, None)
            if garbled is not None:  # the answer could not be decoded (pymodbus dropped the connection)
                self.close()
                raise ModbusBadAnswer(f"{what}: an answer that cannot be decoded ({garbled})") from None
            if "No response" in str(e) or "CLOSING CONNECTION" in str(e):
                raise ModbusTimeout(f"{what}: no answer within {wait:g}s") from None
            raise ModbusBadAnswer(f"{what}: {_short(e)}") from None
        except ConnectionException:
            bus.troubled_at = time.monotonic()
            self.close()
            raise bus.connect_failed("connection lost") from None
        except (OSError, ModbusException) as e:
            bus.troubled_at = time.monotonic()
            self.close()
            raise bus.connect_failed(_short(e)) from None
        finally:
            self.last_end = time.monotonic()
            self.answer_s = self.last_end - sent
        # Answer frame: unit + function (+ byte count) + data + CRC on RTU; MBAP header + function (+ count) on TCP.
        header = 5 if bus.rtu else 9
        if rr.isError():
            bus.stats.bytes_in += header - 1
            raise ModbusExceptionReply(int(getattr(rr, "exception_code", 0)), what)
        regs = list(rr.registers)
        bus.stats.bytes_in += header + 2 * len(regs)
        # pymodbus matches an answer to its request by transaction id (TCP) and unit (it skips another unit's, which
        # then times out), not by function code nor length: a reply for another function, or with another byte
        # count, would otherwise become values.
        if rr.function_code != block.code:
            raise ModbusBadAnswer(f"{what}: answered function {rr.function_code} to a function {block.code} request")
        if len(regs) != block.count:
            raise ModbusBadAnswer(f"{what}: answered {len(regs)} registers")
        return regs


async def write(conn: _Connection, unit: int, address: int, words: list[int]) -> None:
    """Write ``words`` to holding registers from ``address`` (function 16), as one request: a meter's setting.
    Errors as for reads (an exception reply, no answer, a broken connection)."""
    client = await conn.ensure()
    bus = conn.bus
    silence = conn.last_end + bus.gap - time.monotonic()
    if silence > 0:
        await asyncio.sleep(silence)
    what = f"unit {unit} write 0x{address:04X} x{len(words)}"
    bus.stats.requests += 1
    client.ctx.comm_params.timeout_connect = bus.config.timeout
    try:
        rr = await client.write_registers(address, words, device_id=unit)
    except ModbusIOException as e:
        if "No response" in str(e) or "CLOSING CONNECTION" in str(e):
            raise ModbusTimeout(f"{what}: no answer within {bus.config.timeout:g}s") from None
        raise ModbusBadAnswer(f"{what}: {_short(e)}") from None
    except (OSError, ModbusException) as e:
        conn.close()
        raise bus.connect_failed(_short(e)) from None
    finally:
        conn.last_end = time.monotonic()
    if rr.isError():
        raise ModbusExceptionReply(int(getattr(rr, "exception_code", 0)), what)
    if rr.function_code != 16:
        raise ModbusBadAnswer(f"{what}: answered function {rr.function_code} to a function 16 request")


class Bus:
    """One line. ``session()`` gives a connection for one meter's poll; reads through it never raise anything
    but :class:`~gateway.errors.ModbusError`."""

    def __init__(self, config: BusBase) -> None:
        self.config = config
        self.name = config.name
        self.where = bus_where(config)
        #: RTU framing, one request at a time and a silence between frames: an RS-485 line at the end of the wire.
        self.rtu = isinstance(config, SerialLine)
        self.gap = config.gap if isinstance(config, SerialLine) else 0.0
        self.stats = WireStats()
        #: when (monotonic) a request on this line last went unanswered or broke the connection: the polls that
        #: waited for the line meanwhile were slowed by that meter, not by their own
        self.troubled_at = -1.0
        n = config.max_parallel if isinstance(config, TcpBus) else 1
        self._free: asyncio.Queue[_Connection] = asyncio.Queue()
        self._all = [_Connection(self) for _ in range(n)]
        for c in self._all:
            self._free.put_nowait(c)
        self.next_connect = 0.0
        self.down_reason = ""
        self._failures = 0
        self._down_since: float | None = None
        self.log = log.bind(bus=config.name)

    def trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self.stats.bytes_out += len(data)
        return data

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[_Connection]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self._free.put_nowait(conn)

    async def read(self, unit: int, block: Block) -> list[int]:
        async with self.session() as conn:
            return await conn.read(unit, block)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """The line for someone else (a scan from the technician's page): every connection taken once the polls
        using them are done, and closed (a serial port is released); the meters' polls wait, and reconnect after."""
        taken = [await self._free.get() for _ in self._all]
        try:
            for conn in taken:
                conn.close()
            self.log.info("polling paused: the line is lent (a scan)")
            yield
        finally:
            # The polls that waited were slowed by the scan, not by their meters: their skipped ticks are counted,
            # but /health does not call those meters too slow for their interval.
            self.troubled_at = time.monotonic()
            for conn in taken:
                self._free.put_nowait(conn)
            self.log.info("polling resumed")

    # ------------------------------------------------------------ connection state, logged on change

    def connect_failed(self, reason: str) -> ModbusBusError:
        self._failures += 1
        self.down_reason = reason
        delay = min(RECONNECT_CAP, RECONNECT_BASE * 2 ** min(self._failures - 1, 10))
        self.next_connect = time.monotonic() + delay
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.log.warning("bus unavailable: meters on it are not read until it is back", where=self.where,
                             reason=reason)
        else:
            self.log.debug("bus still unavailable", reason=reason, retry_in_s=round(delay, 1))
        return ModbusBusError(f"{self.where}: {reason}")

    def connected(self) -> None:
        self._failures = 0
        self.next_connect = 0.0
        if self._down_since is not None:
            self.log.info("bus available again", where=self.where,
                          down_s=round(time.monotonic() - self._down_since, 1))
            self._down_since = None

    def close(self) -> None:
        for c in self._all:
            c.close()


#: Connections (pymodbus' protocol objects) that received a frame pymodbus could not decode, and why.
_garbled: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()


def _quiet_undecodable_frames(loop: asyncio.AbstractEventLoop) -> None:
    """A frame pymodbus cannot decode (a byte count beyond the data) raises inside the transport's
    ``data_received``: asyncio would log it with a traceback at every poll. It is a meter's mistake, not the
    gateway's: remembered for the read waiting on that connection, which reports it as a bad answer (counted, and
    logged on change like every meter problem). Every other exception goes to the handler there was."""
    previous = loop.get_exception_handler()
    if getattr(previous, "modbus_frames", False):
        return

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc, protocol = context.get("exception"), context.get("protocol")
        if isinstance(exc, ModbusException) and protocol is not None:
            _garbled[protocol] = _short(exc)
            return
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    handler.modbus_frames = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def _short(e: BaseException) -> str:
    text = str(e).strip() or e.__class__.__name__
    return text.splitlines()[0][:200]


def _why_not_connected(config: BusBase, reason: str) -> str:
    if isinstance(config, SerialBus):
        import os

        if not os.path.exists(config.port):
            return f"serial port {config.port} does not exist (adapter unplugged? see 'ls /dev/serial/by-id')"
        if not os.access(config.port, os.R_OK | os.W_OK):
            return f"no permission to open {config.port} (the service user needs the 'dialout' group)"
        return f"cannot open {config.port}: {reason or 'busy or not a serial port'}"
    return f"cannot connect: {reason or 'refused or unreachable'}"
