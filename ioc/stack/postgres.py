"""A private PostgreSQL server for the local stack: initdb once, then pg_ctl start/stop."""

from __future__ import annotations

import glob
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from ioc.stack.procs import StackError, as_user, chown_tree, port_open, read_pid, run, service_user, wait_port

INSTALL_HINT = "PostgreSQL server binaries not found: apt-get install -y postgresql (or set IOC_PG_BIN)"
TIMESCALE_HINT = ("TimescaleDB is not installed for this PostgreSQL: run ../shared/timescaledb/install.sh, install "
                  "Timescale's package, or use --backend postgres")
# Settings the stack owns, rewritten at every start so `--backend` can change between runs.
STACK_CONF = "ioc_stack.conf"


def timescale_installed(bin_dir: Path) -> bool:
    """The extension's control file and library are where this server looks for them (Debian's layout,
    or what pg_config says where it exists)."""
    pg_config = bin_dir / "pg_config"
    if pg_config.exists():
        share = Path(run([str(pg_config), "--sharedir"], "pg_config").strip())
        lib = Path(run([str(pg_config), "--pkglibdir"], "pg_config").strip())
    else:
        share, lib = Path("/usr/share/postgresql") / bin_dir.parent.name, bin_dir.parent / "lib"
    return (share / "extension" / "timescaledb.control").exists() and any(lib.glob("timescaledb*.so"))


def find_bin_dir(override: str | None = None) -> Path:
    """Debian keeps server binaries in /usr/lib/postgresql/<major>/bin; take the newest."""
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for c in candidates:
        if c and (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise StackError(INSTALL_HINT)


@dataclass
class Postgres:
    root: Path  # <stack dir>/postgres
    port: int
    password: str
    bin_dir: Path
    preload_timescale: bool = False  # load the timescaledb library at start (it cannot be loaded later)
    user: str = "ioc"
    database: str = "ioc"
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def dsn_shown(self) -> str:
        """The DSN without its password: what is printed for a person (`ioc stack dsn` gives it whole)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def pid(self) -> int | None:
        return read_pid(self.data_dir / "postmaster.pid", "postgres")

    def running(self) -> bool:
        return self.pid() is not None and port_open(self.host, self.port)

    def _pg(self, tool: str, *args: str, what: str, timeout: float = 120) -> str:
        return run(as_user([str(self.bin_dir / tool), *args], service_user()), what, timeout)

    def init(self) -> None:
        """Create the cluster, the 'ioc' role and database; idempotent."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        user = service_user()
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / ".pw"
        superpw = secrets.token_urlsafe(16)
        pwfile.write_text(superpw)
        chown_tree(self.root, user)
        try:
            self._pg(
                "initdb", "-D", str(self.data_dir), "-U", "postgres", "--pwfile", str(pwfile),
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# local IOC stack\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nunix_socket_permissions = 0700\n"
                "timezone = 'UTC'\nlog_timezone = 'UTC'\n"
                "shared_buffers = 256MB\nwal_compression = on\nmax_wal_size = 2GB\n"
                "synchronous_commit = on\nlog_min_duration_statement = 2000\n"
                f"include_if_exists = '{STACK_CONF}'\n"
            )
        self.start()
        with psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE CREATEDB PASSWORD {}").format(
                sql.Identifier(self.user), sql.Literal(self.password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(self.database), sql.Identifier(self.user)))

    def _write_stack_conf(self) -> None:
        """TimescaleDB must be preloaded, and its background jobs need worker processes beyond the default 8."""
        lines = ["# written by `ioc stack up` at every start: edit the backend with --backend, not here"]
        if self.preload_timescale:
            lines += ["shared_preload_libraries = 'timescaledb'", "max_worker_processes = 16",
                      "timescaledb.max_background_workers = 8", "timescaledb.telemetry_level = off"]
        else:
            lines += ["shared_preload_libraries = ''"]
        conf = self.data_dir / STACK_CONF
        conf.write_text("\n".join(lines) + "\n")
        chown_tree(conf, service_user())

    def start(self) -> None:
        if self.running():
            return
        self._write_stack_conf()
        self._pg(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", f"-p {self.port}", what="starting PostgreSQL",
        )
        wait_port(self.host, self.port, 30, "PostgreSQL")

    def stop(self) -> None:
        if self.pid() is None:
            return
        self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir), what="stopping PostgreSQL")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

