"""Modbus driver (TCP, or RTU over a serial line) driven by a register map from the device config.

Registers next to each other are read in one request (field stations answer slowly, often at 9600
baud, so request count matters more than bytes). Decoding uses pymodbus' own converters; scaling is
`raw * scale + offset` into the profile's unit.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.exceptions import ModbusException

from edge.sensors.base import SensorDriver, SensorError
from edge.sensors.config import ModbusSensorConfig, RegisterMap

log = logging.getLogger(__name__)

MAX_REGISTERS_PER_REQUEST = 120  # spec limit is 125 for reads
MAX_GAP = 8  # read across a small hole rather than issue another request

_DATATYPES = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
    "float64": ModbusClientMixin.DATATYPE.FLOAT64,
}


@dataclass
class _Block:
    unit_id: int
    table: str
    start: int
    end: int  # exclusive
    maps: list[RegisterMap] = field(default_factory=list)


def plan_blocks(maps: Collection[RegisterMap], default_unit: int) -> list[_Block]:
    """Coalesce register maps into as few read requests as the limits allow."""
    blocks: list[_Block] = []
    ordered = sorted(maps, key=lambda m: (m.unit_id or default_unit, m.table, m.address))
    for m in ordered:
        unit = default_unit if m.unit_id is None else m.unit_id
        last = blocks[-1] if blocks else None
        end = m.address + m.count
        if (
            last
            and last.unit_id == unit
            and last.table == m.table
            and m.address <= last.end + MAX_GAP
            and end - last.start <= MAX_REGISTERS_PER_REQUEST
        ):
            last.end = max(last.end, end)
            last.maps.append(m)
        else:
            blocks.append(_Block(unit, m.table, m.address, end, [m]))
    return blocks


def decode(m: RegisterMap, registers: list[int]) -> float:
    raw = ModbusClientMixin.convert_from_registers(
        registers, _DATATYPES[m.data_type], word_order=m.word_order
    )
    assert isinstance(raw, int | float)
    return float(raw) * m.scale + m.offset


class ModbusDriver(SensorDriver):
    name = "modbus"

    def __init__(self, config: ModbusSensorConfig) -> None:
        self._cfg = config
        self._maps = {m.metric: m for m in config.registers}
        self._client: ModbusTcpClient | ModbusSerialClient | None = None

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(self._maps)

    def _make_client(self) -> ModbusTcpClient | ModbusSerialClient:
        c = self._cfg
        if c.transport == "tcp":
            assert c.host
            return ModbusTcpClient(c.host, port=c.port, timeout=c.timeout_s, retries=c.retries)
        assert c.serial_port
        return ModbusSerialClient(
            c.serial_port,
            baudrate=c.baudrate,
            parity=c.parity,
            stopbits=c.stopbits,
            bytesize=c.bytesize,
            timeout=c.timeout_s,
            retries=c.retries,
        )

    def open(self) -> None:
        if self._client is None:
            self._client = self._make_client()
        if not self._client.connected and not self._client.connect():
            where = self._cfg.host if self._cfg.transport == "tcp" else self._cfg.serial_port
            raise SensorError(self.name, f"cannot connect ({self._cfg.transport} {where})")

    def read(self, metrics: Collection[str], now_ms: int) -> dict[str, float]:
        self.open()
        assert self._client is not None
        wanted = [self._maps[m] for m in metrics if m in self._maps]
        out: dict[str, float] = {}
        failures: list[str] = []
        for block in plan_blocks(wanted, self._cfg.unit_id):
            try:
                regs = self._read_block(block)
            except ModbusException as exc:
                # A dead link fails every block; drop the client so the next read reconnects.
                self.close()
                raise SensorError(
                    self.name, f"unit {block.unit_id} {block.table}@{block.start}: {exc}"
                ) from exc
            if regs is None:
                failures.append(f"{block.table}@{block.start}")
                continue
            for m in block.maps:
                lo = m.address - block.start
                out[m.metric] = decode(m, regs[lo : lo + m.count])
        if failures and not out:
            raise SensorError(self.name, f"exception responses for {', '.join(failures)}")
        if failures:
            log.warning("modbus: exception responses for %s", ", ".join(failures))
        return out

    def _read_block(self, block: _Block) -> list[int] | None:
        assert self._client is not None
        count = block.end - block.start
        if block.table == "holding":
            rr = self._client.read_holding_registers(block.start, count=count, device_id=block.unit_id)
        else:
            rr = self._client.read_input_registers(block.start, count=count, device_id=block.unit_id)
        if rr.isError():
            return None
        return list(rr.registers)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
