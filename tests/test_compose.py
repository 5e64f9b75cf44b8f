"""docker-compose.yml and the Dockerfile checked against the code, without a Docker engine: services and
their wiring, every environment variable the code reads, every bind-mounted path, every command line
parsed by the real CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cloud.alerts.settings import AlertSettings
from cloud.ingest.settings import IngestSettings
from ioc.cli import app

REPO = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IOC_SERVICES = ["migrate", "ingest", "alerts-1", "alerts-2", "sim"]  # the services that run the ioc image
ALERT_SERVICES = ["alerts-1", "alerts-2"]
LONG_RUNNING = ["mosquitto", "timescaledb", "ingest", *ALERT_SERVICES, "grafana", "sim"]
ENDPOINT_VARS = {"IOC_DSN", "IOC_MQTT_HOST", "IOC_MQTT_PORT"}  # ioc/endpoints.py: all three, or a local stack


def env_of(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def env_vars_read_by_code() -> set[str]:
    """IOC_* names read through os.environ anywhere in the shipped packages, plus IngestSettings' fields."""
    names: set[str] = set()
    for pkg in ("cloud", "ioc", "contract", "simulators", "edge"):
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and re.fullmatch(r"IOC_[A-Z0-9_]+", node.value):
                    names.add(node.value)
    for settings in (IngestSettings, AlertSettings):
        prefix = settings.model_config.get("env_prefix", "")
        names |= {f"{prefix}{f}".upper() for f in settings.model_fields}
    return names


def parse_cli(argv: list[str]) -> Any:
    """Resolve `ioc <group> <command> [options]` through the real typer app and parse the options as the
    command would (returns its context); an unknown command, option or bad value raises."""
    assert argv[0] == "ioc", argv
    cmd: Any = typer.main.get_command(app)
    args = argv[1:]
    while hasattr(cmd, "get_command"):  # a group
        name, args = args[0], args[1:]
        sub = cmd.get_command(typer.Context(cmd), name)
        assert sub is not None, f"`{' '.join(argv)}`: no command {name!r}"
        cmd = sub
    return cmd.make_context(argv[0], list(args))


def test_services_present() -> None:
    assert {"mosquitto", "timescaledb", "migrate", "ingest", "grafana", "sim"} <= set(SERVICES)
    assert SERVICES["sim"].get("profiles") == ["demo"]
    assert SERVICES["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert SERVICES["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert "pg16" in SERVICES["timescaledb"]["image"]
    assert SERVICES["grafana"]["image"].startswith("grafana/grafana-oss")
    assert "healthcheck" in SERVICES["timescaledb"]


def test_ingest_waits_for_migration_and_restarts() -> None:
    ingest = SERVICES["ingest"]
    assert ingest["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert ingest["restart"] == "unless-stopped"
    assert SERVICES["migrate"]["depends_on"]["timescaledb"]["condition"] == "service_healthy"
    assert SERVICES["migrate"].get("restart", "no") == "no"


def test_ingest_instance_id_is_fixed() -> None:
    """The broker keeps the persistent session under the instance id: a literal, one per service."""
    ctx = parse_cli(SERVICES["ingest"]["command"])
    assert ctx.params["instance"] == "ingest-1"
    assert "replicas" not in SERVICES["ingest"].get("deploy", {}), "replicas would share one instance id"


@pytest.mark.parametrize("service", IOC_SERVICES)
def test_commands_exist_in_the_cli(service: str) -> None:
    parse_cli(SERVICES[service]["command"])


@pytest.mark.parametrize("service", IOC_SERVICES)
def test_endpoint_variables_set(service: str) -> None:
    env = env_of(service)
    missing = ENDPOINT_VARS - set(env)
    assert not missing, f"{service}: {missing} unset; without all three ioc looks for a local stack and fails"
    assert env["IOC_DSN"].startswith("postgresql://")
    assert "@timescaledb:5432/" in env["IOC_DSN"]
    assert env["IOC_MQTT_HOST"] == "mosquitto"
    assert int(env["IOC_MQTT_PORT"]) == 1883


@pytest.mark.parametrize("service", IOC_SERVICES)
def test_every_ioc_variable_is_one_the_code_reads(service: str) -> None:
    known = env_vars_read_by_code()
    unknown = {k for k in env_of(service) if k.startswith("IOC_")} - known
    assert not unknown, f"{service}: {unknown} are read by no code (typo?)"


def test_no_ingest_settings_the_cli_overrides() -> None:
    """`ioc ingest` passes dsn, broker and --instance to IngestSettings explicitly, so IOC_INGEST_DSN,
    _MQTT_HOST, _MQTT_PORT and _INSTANCE would be silently ignored: use IOC_DSN / IOC_MQTT_* / --instance."""
    ignored = {"IOC_INGEST_DSN", "IOC_INGEST_MQTT_HOST", "IOC_INGEST_MQTT_PORT", "IOC_INGEST_INSTANCE"}
    assert not ignored & set(env_of("ingest"))


def test_grafana_role_password_reaches_the_migration() -> None:
    migration = (REPO / "cloud/db/migrations/0004_grafana_role.sql").read_text(encoding="utf-8")
    setting = re.search(r"current_setting\('([\w.]+)'", migration)
    assert setting
    assert f"-c {setting.group(1)}=" in env_of("migrate")["PGOPTIONS"]
    pw_var = re.search(r"\$\{(\w+)", env_of("migrate")["PGOPTIONS"])
    assert pw_var
    assert pw_var.group(1) in env_of("grafana")["IOC_GRAFANA_DB_PASSWORD"]
    assert env_of("grafana")["IOC_GRAFANA_TIMESCALEDB"] == "true"


def test_bind_mounts_exist() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (REPO / src).exists(), f"{name}: mounted path {src} is not in the repository"
            else:
                assert src in named, f"{name}: volume {src} is not declared"


def test_mosquitto_config_keeps_queued_messages() -> None:
    """The same choices as the local stack's broker (ioc/stack/mosquitto.py)."""
    lines = (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    conf = dict(line.split(None, 1) for line in lines
                if line.strip() and not line.startswith(("#", "log_", "listener")))
    assert conf["persistence"] == "true"
    assert int(conf["max_queued_messages"]) > 1000
    assert conf["max_queued_bytes"] == "0"
    mounted = {v.split(":")[1] for v in SERVICES["mosquitto"]["volumes"]}
    assert "/mosquitto/config/mosquitto.conf" in mounted
    assert conf["persistence_location"].rstrip("/") in mounted


def test_dockerfile_installs_without_dev_extras_and_sets_firmware_config() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "[dev]" not in text
    assert "-e " not in text
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    for group in copied:
        for src in group.split():
            assert (REPO / src).exists(), f"Dockerfile copies {src}, which is not in the repository"
    env_dir = re.search(r"IOC_FIRMWARE_CONFIG=(\S+)", text)
    assert env_dir
    assert env_dir.group(1) == "/app/firmware-config"
    assert "WORKDIR /app" in text
    assert re.search(r"^COPY firmware-config \./firmware-config$", text, re.M)
    assert SERVICES["migrate"]["build"] == "."
    assert {SERVICES[s]["image"] for s in IOC_SERVICES} == {SERVICES["migrate"]["image"]}


def test_alarm_evaluators_one_instance_each_after_migration() -> None:
    instances = [parse_cli(SERVICES[s]["command"]).params["instance"] for s in ALERT_SERVICES]
    assert len(set(instances)) == len(instances), "each evaluator needs its own --instance"
    for name in ALERT_SERVICES:
        svc = SERVICES[name]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["restart"] == "unless-stopped"
        assert "replicas" not in svc.get("deploy", {})
        health = parse_cli(svc["healthcheck"]["test"][1:])  # `ioc alerts health --instance ...`
        assert health.params["instance"] == parse_cli(svc["command"]).params["instance"]


@pytest.mark.parametrize("service", LONG_RUNNING)
def test_every_long_running_service_has_a_health_check(service: str) -> None:
    check = SERVICES[service].get("healthcheck")
    assert check, f"{service} has no healthcheck"
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    if check["test"][:2] == ["CMD", "python"]:
        compile(check["test"][-1], f"{service} healthcheck", "exec")  # the one-liner is valid Python


def test_env_example_sets_every_variable_compose_reads() -> None:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{(\w+)(?::-[^}]*)?\}", text))
    example = {line.split("=", 1)[0] for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert used == example, f"in compose only: {used - example}; in .env.example only: {example - used}"


def test_the_image_carries_the_sample_rules() -> None:
    """The image installs the package (not editable): the default rules folder must be package data."""
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^"cloud\.alerts" = \["rules/\*\.yaml"\]$', pyproject, re.M)
    assert AlertSettings.model_fields["rules_dir"].default == REPO / "cloud" / "alerts" / "rules"
    assert list((REPO / "cloud" / "alerts" / "rules").glob("*.yaml"))


BROKER_CLIENTS = {"ingest": "ingest", "alerts-1": "alerts", "alerts-2": "alerts", "sim": "simulator",
                  "api": "registry"}


def test_broker_lets_nobody_in_anonymously_and_the_registry_can_reload_it() -> None:
    """As the local stack (ioc/stack/mosquitto.py): logins required, files the registry rewrites, SIGHUP."""
    from ioc.stack import broker_auth as ba

    lines = (REPO / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
    conf = dict(line.split(None, 1) for line in lines if line.strip() and not line.startswith("#"))
    assert conf["allow_anonymous"] == "false"
    auth_dir = conf["password_file"].rsplit("/", 1)[0]
    assert conf["password_file"] == f"{auth_dir}/{ba.PASSWORD_FILE}"
    assert conf["acl_file"] == f"{auth_dir}/{ba.ACL_FILE}"
    broker_mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["mosquitto"]["volumes"])
    volume = broker_mounts[auth_dir]
    api_mounts = {v.split(":")[0]: v.split(":")[1] for v in SERVICES["api"]["volumes"]}
    api_env = env_of("api")
    assert api_mounts[volume] == api_env["IOC_API_BROKER_AUTH_DIR"]
    assert conf["pid_file"] == f"{auth_dir}/mosquitto.pid"
    assert api_env["IOC_API_BROKER_PID_FILE"] == f"{api_env['IOC_API_BROKER_AUTH_DIR']}/mosquitto.pid"
    assert SERVICES["api"]["pid"] == "service:mosquitto"  # SIGHUP reaches the broker's process
    logins = SERVICES["broker-logins"]
    parse_cli(logins["command"])
    assert {v.split(":")[0] for v in logins["volumes"]} == {volume}
    assert logins["user"] == SERVICES["api"]["user"]  # files 0600: the API rewrites what broker-logins wrote
    assert SERVICES["mosquitto"]["depends_on"]["broker-logins"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("service", sorted(BROKER_CLIENTS))
def test_every_broker_client_logs_in_with_its_own_service_password(service: str) -> None:
    from ioc.stack import broker_auth as ba

    env = env_of(service)
    user = env["IOC_MQTT_USERNAME"]
    assert user == BROKER_CLIENTS[service]
    assert user in ba.STACK_SERVICES
    password_var = ba.PASSWORD_ENV[user]
    assert env["IOC_MQTT_PASSWORD"].startswith("${" + password_var + ":-")
    assert env_of("broker-logins")[password_var] == env["IOC_MQTT_PASSWORD"]  # the hash is of this password
