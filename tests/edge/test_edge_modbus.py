"""Modbus driver against pymodbus' own server: TCP, RTU framing (via a pyserial socket:// URL), data
types, word order, scaling, request coalescing and failure handling."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from edge_helpers import ModbusServer

from edge.sensors.base import SensorError
from edge.sensors.config import ModbusSensorConfig, RegisterMap
from edge.sensors.modbus import ModbusDriver, plan_blocks


def _f32(value: float, word_order: str = "big") -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo] if word_order == "big" else [lo, hi]


def _registers() -> list[int]:
    regs = [0] * 40
    regs[0] = (-123) & 0xFFFF  # temperature, int16, 0.1 °C -> -12.3
    regs[1] = 655  # humidity, uint16, 0.1 %RH -> 65.5
    regs[10:12] = _f32(2.375)  # water level, float32 big-endian words
    regs[20:22] = _f32(417.5, "little")  # co2, float32 little word order
    regs[30:32] = [0x0001, 0x0002]  # uint32 65538 -> scaled rain
    return regs


REGISTER_MAP = [
    {"metric": "temperature", "address": 0, "data_type": "int16", "scale": 0.1},
    {"metric": "humidity", "address": 1, "table": "input", "data_type": "uint16", "scale": 0.1},
    {"metric": "water_level", "address": 10, "data_type": "float32"},
    {"metric": "co2", "address": 20, "data_type": "float32", "word_order": "little"},
    {"metric": "rain", "address": 30, "data_type": "uint32", "scale": 0.001, "offset": -60},
]
EXPECTED = {"temperature": -12.3, "humidity": 65.5, "water_level": 2.375, "co2": 417.5, "rain": 5.538}


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
def test_reads_scaled_values(modbus_server: Callable[..., ModbusServer], transport: str) -> None:
    server = modbus_server(_registers(), framer="socket" if transport == "tcp" else "rtu")
    where = (
        {"host": "127.0.0.1", "port": server.port}
        if transport == "tcp"
        else {"serial_port": f"socket://127.0.0.1:{server.port}"}
    )
    driver = ModbusDriver(ModbusSensorConfig(transport=transport, registers=REGISTER_MAP, **where))
    try:
        values = driver.read(driver.metrics, 0)
    finally:
        driver.close()
    assert values == pytest.approx(EXPECTED)


def test_adjacent_registers_share_a_request() -> None:
    maps = [RegisterMap.model_validate(m) for m in REGISTER_MAP]
    blocks = plan_blocks(maps, default_unit=1)
    # holding 10-11, 20-21, 30-31 coalesce (gaps <= 8 registers); 0 is 9 away; input is its own request
    assert [(b.table, b.start, b.end) for b in blocks] == [
        ("holding", 0, 1),
        ("holding", 10, 32),
        ("input", 1, 2),
    ]


def test_unreachable_device_raises_sensor_error() -> None:
    from edge_helpers import free_port

    driver = ModbusDriver(
        ModbusSensorConfig(
            transport="tcp",
            host="127.0.0.1",
            port=free_port(),
            timeout_s=0.5,
            retries=0,
            registers=REGISTER_MAP[:1],
        )
    )
    with pytest.raises(SensorError):
        driver.read(driver.metrics, 0)


def test_exception_response_for_missing_registers(modbus_server: Callable[..., ModbusServer]) -> None:
    server = modbus_server([1, 2, 3])
    cfg = ModbusSensorConfig(
        transport="tcp",
        host="127.0.0.1",
        port=server.port,
        timeout_s=1,
        retries=0,
        registers=[
            {"metric": "temperature", "address": 0, "scale": 0.5},
            {"metric": "humidity", "address": 500},
        ],
    )
    driver = ModbusDriver(cfg)
    try:
        assert driver.read(driver.metrics, 0) == {"temperature": 0.5}  # the bad block is skipped, logged
    finally:
        driver.close()
