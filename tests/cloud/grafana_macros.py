"""Expand a Grafana PostgreSQL panel query the way Grafana does before the SQL reaches the database.

Three steps, in Grafana's order, each mirroring named Grafana code:

1. Template variables, in the browser (`public/app/features/templating/template_srv.ts` with the SQL
   datasources' `interpolateVariable` in `features/plugins/sql/datasource/SqlDatasource.ts`):
   `$var`, `${var}`, `${var:format}`, `[[var]]`. Without a format, a multi-value or include-All variable
   becomes `'a','b'` (each quoted, `'` doubled) and a single-value one is inserted with `'` doubled but
   unquoted. Formats `sqlstring`, `singlequote`, `doublequote`, `csv`, `raw` as documented in "Variable
   syntax"; unknown formats raise (Grafana would fall back to glob, which no SQL wants). Names that are
   not variables (`$__timeFilter`, ...) are left alone.
2. Global SQL substitutions (`pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go`,
   `Interpolate`): `$__interval_ms`, `$__interval` (as `gtime.FormatInterval`), `$__unixEpochFrom()`,
   `$__unixEpochTo()`, by plain string replacement.
3. The PostgreSQL macro engine (`pkg/tsdb/grafana-postgresql-datasource/macros.go`): every
   `$name(args)` matched by `\\$([_a-zA-Z0-9]+)\\(([^\\)]*)\\)`, args split on `,` and trimmed;
   `$__timeFilter(c)` → `c BETWEEN '<from>' AND '<to>'` (RFC 3339, UTC); `$__timeGroup(c, i)` →
   `time_bucket('<secs with 3 decimals>s',c)` when the datasource's TimescaleDB option is on, else
   `floor(extract(epoch from c)/<secs>)*<secs>` with the seconds printed as Go's `%v`; `...Alias` adds
   ` AS "time"`; the pre-5.3 rule that turns `$__timeGroup(...)` followed directly by `,` into the alias
   form; an optional third (fill) argument changes no SQL. Unknown macros raise, as Grafana fails them.

Not mirrored: Grafana 12's stripping of SQL comments before step 3 (the dashboards carry no comments in
their SQL), and `M`/`y` intervals (calendar-relative in Grafana).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
# template_srv.ts: $var | [[var(:fmt)]] | ${var(.field)(:fmt)}
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MacroError(ValueError):
    """A query Grafana itself would refuse to interpolate."""


@dataclass(frozen=True)
class Variable:
    """A dashboard template variable's current value, as the browser holds it."""

    value: str | list[str]
    multi: bool = False
    include_all: bool = False


def go_float(x: float) -> str:
    """Go's `fmt.Sprintf("%v", float64)` (strconv 'g', shortest): exponent form below 1e-4 and from 1e6 up,
    so a 12-day group prints as `1.0368e+06` (PostgreSQL reads that as a numeric constant)."""
    d = Decimal(repr(float(x))).normalize()
    exp = d.adjusted()
    if -4 <= exp < 6:
        return format(d, "f")
    digits = d.as_tuple().digits
    mant = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if x < 0 else ''}{mant}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval for the units a dashboard uses: ms, s, m, h, d, w."""
    m = _INTERVAL.match(text.strip().strip("'"))
    if not m:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit, truncated (90 s → "1m")."""
    ms = int(interval / timedelta(milliseconds=1))
    for unit_ms, suffix in ((365 * 86_400_000, "y"), (86_400_000, "d"), (3_600_000, "h"), (60_000, "m"),
                            (1000, "s"), (1, "ms")):
        if ms >= unit_ms:
            return f"{ms // unit_ms}{suffix}"
    return "1ms"


def rfc3339_nano(t: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: fraction without trailing zeros, none at all when zero."""
    t = t.astimezone(UTC)
    frac = f"{t.microsecond:06d}".rstrip("0")
    return t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + "Z"


def _sql_quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def format_variable(var: Variable, fmt: str | None) -> str:
    values = var.value if isinstance(var.value, list) else [var.value]
    if fmt is None:  # SqlDatasource.interpolateVariable
        if isinstance(var.value, str) and not (var.multi or var.include_all):
            return var.value.replace("'", "''")
        return ",".join(_sql_quote(v) for v in values)
    if fmt == "sqlstring":
        return ",".join(_sql_quote(v) for v in values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "raw":
        return ",".join(values) if isinstance(var.value, list) else var.value
    raise MacroError(f"variable format {fmt!r} is not one these tests mirror")


def substitute_variables(sql: str, variables: dict[str, Variable]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in variables:
            return m.group(0)
        if m.group(5):
            raise MacroError(f"${{{name}.{m.group(5)}}}: field paths are not mirrored")
        return format_variable(variables[name], fmt)

    return _VARIABLE.sub(repl, sql)


def global_substitutions(sql: str, frm: datetime, to: datetime, interval: timedelta) -> str:
    sql = sql.replace("$__interval_ms", str(int(interval / timedelta(milliseconds=1))))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(frm.timestamp())))
    return sql.replace("$__unixEpochTo()", str(int(to.timestamp())))


def _time_group(args: list[str], timescaledb: bool) -> str:
    if len(args) < 2:
        raise MacroError("macro __timeGroup needs time column and interval and optional fill value")
    secs = parse_interval(args[1]).total_seconds()
    if timescaledb:
        return f"time_bucket('{secs:.3f}s',{args[0]})"
    return f"floor(extract(epoch from {args[0]})/{go_float(secs)})*{go_float(secs)}"


def _macro(name: str, args: list[str], frm: datetime, to: datetime, timescaledb: bool) -> str:
    def column() -> str:
        if not args or not args[0]:
            raise MacroError(f"missing time column argument for macro {name}")
        return args[0]

    if name == "__time":
        return f'{column()} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {column()}) as "time"'
    if name == "__timeFilter":
        return f"{column()} BETWEEN '{rfc3339_nano(frm)}' AND '{rfc3339_nano(to)}'"
    if name == "__timeFrom":
        return f"'{rfc3339_nano(frm)}'"
    if name == "__timeTo":
        return f"'{rfc3339_nano(to)}'"
    if name == "__timeGroup":
        return _time_group(args, timescaledb)
    if name == "__timeGroupAlias":
        return _time_group(args, timescaledb) + ' AS "time"'
    if name == "__unixEpochFilter":
        c = column()
        return f"{c} >= {int(frm.timestamp())} AND {c} <= {int(to.timestamp())}"
    raise MacroError(f'unknown macro "{name}"')


def expand_macros(sql: str, frm: datetime, to: datetime, timescaledb: bool) -> str:
    original = sql

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":  # pre-5.3 compatibility: a ',' right after the call means the alias form
            at = original.find(m.group(0))
            if at >= 0 and original[at + len(m.group(0)):at + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        return _macro(name, args, frm, to, timescaledb)

    return _MACRO.sub(repl, sql)


def interpolate(sql: str, *, frm: datetime, to: datetime, interval: timedelta, timescaledb: bool,
                variables: dict[str, Variable] | None = None) -> str:
    """The SQL Grafana sends to PostgreSQL for this panel query."""
    sql = substitute_variables(sql, variables or {})
    sql = global_substitutions(sql, frm, to, interval)
    return expand_macros(sql, frm, to, timescaledb)


def resolve_variables(conn: Any, dashboard: dict[str, Any], frm: datetime, to: datetime, interval: timedelta,
                      timescaledb: bool, pinned: dict[str, list[str]]) -> dict[str, Variable]:
    """Resolve a dashboard's variables in its order, as the browser does: each runs its own query (on `conn`,
    a psycopg connection) with the ones before it; pinned ones take the given values."""
    variables: dict[str, Variable] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var["name"] in pinned:
            values = pinned[var["name"]]
        else:
            sql = interpolate(var["query"], frm=frm, to=to, interval=interval, timescaledb=timescaledb,
                              variables=variables)
            values = [r[0] for r in conn.execute(sql).fetchall()]
        variables[var["name"]] = Variable(values, multi=True, include_all=True)
    return variables
