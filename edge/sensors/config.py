"""Sensor driver configs: a discriminated union on `type`, each driver bringing its own settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.profiles import DeviceProfile


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignalShape(_Strict):
    """A simulated signal: base + daily sine + AR(1) noise + rare spikes, clipped to the profile range."""

    base: float
    amplitude: float = Field(default=0.0, description="half swing of the daily cycle")
    noise: float = Field(default=0.0, ge=0, description="std-dev of the slow random walk")
    spike_prob: float = Field(default=0.0, ge=0, le=1, description="chance per read of a spike")
    spike_size: float = Field(default=0.0, description="added on a spike")
    period_s: float = Field(default=86400.0, gt=0)
    phase_s: float = Field(default=0.0, description="time of the daily peak, seconds after midnight UTC")


class SimulatedSensorConfig(_Strict):
    type: Literal["simulated"] = "simulated"
    metrics: list[str] | None = Field(
        default=None, description="None = every non-health metric of the profile"
    )
    seed: int | None = Field(default=None, description="fixed seed for repeatable signals")
    signals: dict[str, SignalShape] = Field(default_factory=dict, description="override the built-in shapes")

    def provided_metrics(self, profile: DeviceProfile) -> list[str]:
        if self.metrics is not None:
            return list(self.metrics)
        return [n for n, m in profile.metrics.items() if m.stream != "health"]


DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
REGISTERS_PER_TYPE: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}


class RegisterMap(_Strict):
    """One metric read from one register (group): value = raw * scale + offset."""

    metric: str
    address: int = Field(ge=0, le=65535, description="0-based register address as on the wire")
    table: Literal["holding", "input"] = "holding"
    data_type: DataType = "uint16"
    word_order: Literal["big", "little"] = Field(default="big", description="order of 16-bit words")
    scale: float = 1.0
    offset: float = 0.0
    unit_id: int | None = Field(default=None, ge=0, le=247, description="overrides the driver's unit id")

    @property
    def count(self) -> int:
        return REGISTERS_PER_TYPE[self.data_type]


class ModbusSensorConfig(_Strict):
    type: Literal["modbus"] = "modbus"
    transport: Literal["tcp", "rtu"] = Field(description="Modbus TCP, or RTU over a serial line")
    host: str | None = Field(default=None, description="tcp: device address")
    port: int = Field(default=502, ge=1, le=65535, description="tcp: device port")
    serial_port: str | None = Field(
        default=None,
        description="rtu: /dev/ttyUSB0, or a pyserial URL such as socket://host:port",
    )
    baudrate: int = Field(default=9600, gt=0)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(default=1, ge=0, le=247, description="Modbus device (slave) id")
    timeout_s: float = Field(default=1.0, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=5)
    registers: list[RegisterMap] = Field(min_length=1)

    @model_validator(mode="after")
    def _transport_has_address(self) -> ModbusSensorConfig:
        if self.transport == "tcp" and not self.host:
            raise ValueError("modbus tcp needs host")
        if self.transport == "rtu" and not self.serial_port:
            raise ValueError("modbus rtu needs serial_port")
        names = [r.metric for r in self.registers]
        if len(names) != len(set(names)):
            raise ValueError("a metric is mapped twice in registers")
        return self

    def provided_metrics(self, profile: DeviceProfile) -> list[str]:
        return [r.metric for r in self.registers]


SensorConfig = Annotated[SimulatedSensorConfig | ModbusSensorConfig, Field(discriminator="type")]
