"""Sensor drivers behind one small interface (`SensorDriver`), chosen by the config's `type`."""

from __future__ import annotations

from contract.profiles import DeviceProfile
from edge.sensors.base import SensorDriver, SensorError
from edge.sensors.config import ModbusSensorConfig, SensorConfig, SimulatedSensorConfig


def build_driver(config: SensorConfig, profile: DeviceProfile) -> SensorDriver:
    """Instantiate the driver for one `sensors:` entry; Modbus is imported only when used."""
    if isinstance(config, SimulatedSensorConfig):
        from edge.sensors.simulated import SimulatedDriver

        return SimulatedDriver(config, profile)
    if isinstance(config, ModbusSensorConfig):
        from edge.sensors.modbus import ModbusDriver

        return ModbusDriver(config)
    raise TypeError(f"no driver for {type(config).__name__}")


__all__ = ["SensorDriver", "SensorError", "build_driver"]
