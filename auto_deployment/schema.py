"""The provenance database: versioned schema, its accounts, and the writes of the pipeline stages.

``python -m auto_deployment.schema apply`` (or :func:`apply_schema`) brings a server up to date:

* creates the database (``MYSQL_DATABASE``, default ``provenance``) if missing;
* applies every ``sql/NNN_name.sql`` not yet listed in the ``schema_version`` table, in order, and
  records it with the file's checksum. Applying twice is a no-op; a file already applied must never
  be edited (a changed checksum is logged) - a change is a new file with the next number. The files
  use ``IF NOT EXISTS`` because MySQL DDL is not transactional: a re-run after a half-applied file
  completes it instead of failing;
* makes sure of the accounts and their privileges (least privilege, design section 5):

  ====================  =============================================================
  admin (MYSQL_ADMIN_*)   everything; applies the schema, writes ``tracking`` and ``releases``
  app (MYSQL_APP_*)       INSERT on ``reccom``, SELECT on ``tracking`` - nothing else: a
                          compromised inference server can neither read who was served
                          what nor rewrite history
  auditor                 SELECT on the whole database, no write of any kind
  ====================  =============================================================

  Each account exists for the hosts ``%`` (compose: clients in other containers), ``localhost``
  (Unix socket) and ``127.0.0.1`` (loopback TCP), and its password follows the settings at every apply.

A lock (``GET_LOCK``) keeps two appliers (say, three inference containers starting together) from
interleaving. Other stages use :func:`connect`, :func:`record_tracking`, :func:`record_release` and
:func:`tracking_row`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql

from app.logs import kv, setup_logging
from app.settings import MySQL

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")
ROLES = ("admin", "app", "auditor")
ACCOUNT_HOSTS = ("%", "localhost", "127.0.0.1")
_FILE_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

TRACKING_COLUMNS = (
    "version_number", "data_creation", "trained_on", "model_rmse", "data_checksum", "model_checksum",
    "code_commit", "algorithm", "params", "train_size", "metrics",
)
RELEASE_COLUMNS = (
    "candidate_version", "previous_version", "started_at", "ended_at", "outcome",
    "canary_latency_ms", "canary_requests", "canary_errors", "canary_error_ratio",
    "stable_latency_ms", "stable_requests", "stable_errors", "stable_error_ratio", "reason",
)
OUTCOMES = ("promoted", "aborted", "failed")
_DATETIME_COLUMNS = {"data_creation", "trained_on", "started_at", "ended_at"}
_JSON_COLUMNS = {"params", "metrics"}


class DatabaseUnreachable(RuntimeError):
    """MySQL did not accept a connection (down, wrong address, wrong credentials)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The schema files in version order; a duplicate or malformed number is a packaging error."""
    found: dict[int, Migration] = {}
    for path in sorted(Path(sql_dir).glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: schema files are named NNN_words.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"{path.name}: version {version} is also {found[version].name}")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def statements(sql: str) -> list[str]:
    """Split a schema file into statements: `--` comment lines dropped, `;` at a line's end separates."""
    out: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if current:
        out.append("\n".join(current))
    return out


def database_name(settings: MySQL) -> str:
    """The database name, checked so it can be quoted into DDL safely."""
    if not _DATABASE_NAME.match(settings.database):
        raise ValueError(f"MYSQL_DATABASE={settings.database!r}: use letters, digits and _ (at most 64)")
    return settings.database


def credentials(settings: MySQL, role: str) -> tuple[str, str]:
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return getattr(settings, f"{role}_user"), getattr(settings, f"{role}_password")


def connect(
    settings: MySQL, role: str = "admin", *, database: bool = True, read_timeout_s: float | None = None
) -> pymysql.connections.Connection:
    """An autocommit connection as `role`, in UTC, with the settings' timeouts.

    Raises :class:`DatabaseUnreachable` (with host, port, account and reason) when it cannot connect,
    so command lines can print one clear line instead of a traceback.
    """
    user, password = credentials(settings, role)
    timeout = settings.connect_timeout_s
    try:
        return pymysql.connect(
            host=settings.host,
            port=settings.port,
            user=user,
            password=password,
            database=database_name(settings) if database else None,
            connect_timeout=timeout,
            read_timeout=read_timeout_s or timeout,
            write_timeout=read_timeout_s or timeout,
            autocommit=True,
            charset="utf8mb4",
            init_command="SET time_zone = '+00:00'",
        )
    except (pymysql.err.OperationalError, pymysql.err.InternalError, OSError) as exc:
        reason = exc.args[1] if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) > 1 else str(exc)
        raise DatabaseUnreachable(
            f"cannot reach MySQL at {settings.host}:{settings.port} (database {settings.database}) "
            f"as {user}: {reason}"
        ) from exc


# ---------------------------------------------------------------------------------------------- apply
def apply_schema(settings: MySQL, sql_dir: Path = SQL_DIR) -> list[int]:
    """Create the database, apply the missing schema files, ensure the accounts. Returns the versions applied now."""
    db = database_name(settings)
    files = migrations(sql_dir)
    conn = connect(settings, "admin", database=False, read_timeout_s=max(60.0, settings.connect_timeout_s))
    applied_now: list[int] = []
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute(f"USE `{db}`")
            cur.execute("SELECT GET_LOCK(%s, 50)", (f"movierec.schema.{db}",))
            if cur.fetchone()[0] != 1:
                raise RuntimeError(f"another schema apply holds the lock on {db} for more than 50 s")
            try:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INT UNSIGNED NOT NULL PRIMARY KEY,"
                    " name VARCHAR(255) NOT NULL,"
                    " checksum CHAR(64) NOT NULL,"
                    " applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)"
                    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
                )
                cur.execute("SELECT version, checksum FROM schema_version")
                done = {int(v): c for v, c in cur.fetchall()}
                for m in files:
                    if m.version in done:
                        if done[m.version] != m.checksum:
                            log.warning("schema file changed after it was applied; add a new file instead",
                                        extra=kv(file=m.name, database=db))
                        continue
                    for stmt in statements(m.sql):
                        cur.execute(stmt)
                    cur.execute("INSERT INTO schema_version (version, name, checksum) VALUES (%s, %s, %s)",
                                (m.version, m.name, m.checksum))
                    applied_now.append(m.version)
                    log.info("schema file applied", extra=kv(file=m.name, database=db))
                ensure_accounts(cur, settings)
            finally:
                cur.execute("SELECT RELEASE_LOCK(%s)", (f"movierec.schema.{db}",))
    finally:
        conn.close()
    log.info("schema up to date", extra=kv(database=db, version=files[-1].version if files else 0,
                                           applied=len(applied_now)))
    return applied_now


def ensure_accounts(cur: pymysql.cursors.Cursor, settings: MySQL) -> None:
    """App and auditor accounts with exactly the privileges of the module docstring (idempotent)."""
    db = database_name(settings)
    admin = settings.admin_user
    if admin in (settings.app_user, settings.auditor_user) or settings.app_user == settings.auditor_user:
        raise ValueError("the admin, app and auditor accounts must be three different users")
    grants = {
        (settings.app_user, settings.app_password): (
            f"GRANT INSERT ON `{db}`.`reccom` TO %s@%s",
            f"GRANT SELECT ON `{db}`.`tracking` TO %s@%s",
        ),
        (settings.auditor_user, settings.auditor_password): (f"GRANT SELECT ON `{db}`.* TO %s@%s",),
    }
    for (user, password), sqls in grants.items():
        for host in ACCOUNT_HOSTS:
            cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (user, host, password))
            cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
            for sql in sqls:
                cur.execute(sql, (user, host))


def schema_versions(settings: MySQL) -> list[tuple[int, str, datetime]]:
    """(version, file, applied at) of every applied schema file; empty when none."""
    conn = connect(settings, "admin", database=False)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = "
                "'schema_version'", (database_name(settings),))
            if cur.fetchone()[0] == 0:
                return []
            cur.execute(f"SELECT version, name, applied_at FROM `{database_name(settings)}`.schema_version "
                        "ORDER BY version")
            return [(int(v), n, a) for v, n, a in cur.fetchall()]
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------- writes
def _to_datetime(value: Any) -> datetime | None:
    """UTC naive datetime from a datetime (aware or UTC-naive), epoch seconds, or an ISO-8601 string."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC).replace(tzinfo=None)
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
    raise TypeError(f"cannot read a time from {value!r}")


def _values(row: Mapping[str, Any], allowed: tuple[str, ...], table: str) -> dict[str, Any]:
    unknown = set(row) - set(allowed)
    if unknown:
        raise ValueError(f"{table}: unknown column(s) {sorted(unknown)}; known: {', '.join(allowed)}")
    out: dict[str, Any] = {}
    for key in allowed:
        if key not in row:
            continue
        value = row[key]
        if key in _DATETIME_COLUMNS:
            value = _to_datetime(value)
        elif key in _JSON_COLUMNS and value is not None and not isinstance(value, str):
            value = json.dumps(value, sort_keys=True, default=str)
        out[key] = value
    return out


def record_tracking(conn: pymysql.connections.Connection, row: Mapping[str, Any]) -> None:
    """Insert or update the `tracking` row of `row["version_number"]` (only the columns given change).

    Times may be datetimes, epoch seconds or ISO strings (stored as UTC); params and metrics may be dicts.
    """
    values = _values(row, TRACKING_COLUMNS, "tracking")
    if values.get("version_number") is None:
        raise ValueError("tracking: version_number is required")
    cols = list(values)
    updates = [c for c in cols if c != "version_number"] or ["version_number"]
    sql = (
        f"INSERT INTO tracking ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        f"ON DUPLICATE KEY UPDATE {', '.join(f'{c} = VALUES({c})' for c in updates)}"
    )
    with conn.cursor() as cur:
        cur.execute(sql, [values[c] for c in cols])
    if not conn.get_autocommit():
        conn.commit()


def record_release(conn: pymysql.connections.Connection, row: Mapping[str, Any]) -> int:
    """Insert one `releases` row; returns its id. Error ratios are derived from counts when not given."""
    values = _values(row, RELEASE_COLUMNS, "releases")
    for required in ("candidate_version", "started_at", "outcome"):
        if values.get(required) is None:
            raise ValueError(f"releases: {required} is required")
    if values["outcome"] not in OUTCOMES:
        raise ValueError(f"releases: outcome {values['outcome']!r} is not one of {OUTCOMES}")
    for side in ("canary", "stable"):
        requests, errors = values.get(f"{side}_requests"), values.get(f"{side}_errors")
        if values.get(f"{side}_error_ratio") is None and requests and errors is not None:
            values[f"{side}_error_ratio"] = float(errors) / float(requests)
    cols = list(values)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO releases ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
            [values[c] for c in cols],
        )
        release_id = int(cur.lastrowid)
    if not conn.get_autocommit():
        conn.commit()
    return release_id


def tracking_row(metadata: Mapping[str, Any], *, model_checksum: str | None = None) -> dict[str, Any]:
    """The `tracking` row of a model bundle's metadata.json (app.model.Recommender.metadata)."""
    metrics = metadata.get("metrics") or {}
    version = metadata.get("version")
    if version is None or not str(version).isdigit():
        raise ValueError(f"bundle metadata has no numeric version (got {version!r})")
    row: dict[str, Any] = {
        "version_number": int(version),
        "data_creation": metadata.get("data_creation") or metadata.get("data_created_at"),
        "trained_on": metadata.get("trained_at"),
        "model_rmse": metrics.get("rmse", metadata.get("rmse")),
        "data_checksum": metadata.get("data_checksum"),
        "model_checksum": model_checksum or metadata.get("model_checksum"),
        "code_commit": metadata.get("code_commit"),
        "algorithm": metadata.get("algorithm"),
        "params": metadata.get("params"),
        "train_size": metadata.get("train_size"),
        "metrics": metrics or None,
    }
    return row


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auto_deployment.schema", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("apply", "status"),
                        help="apply: bring the database up to date; status: list applied schema files")
    args = parser.parse_args(argv)
    setup_logging()
    settings = MySQL.from_env()
    try:
        if args.action == "apply":
            apply_schema(settings)
        else:
            rows = schema_versions(settings)
            if not rows:
                print(f"database {settings.database}: no schema applied")
            for version, name, applied_at in rows:
                print(f"{version:03d}  {name:40s}  applied {applied_at:%Y-%m-%dT%H:%M:%SZ}")
    except DatabaseUnreachable as exc:
        print(f"schema: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
