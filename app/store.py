"""The provenance store: every SQL statement of the platform and its one connection factory (design section 5).

Nothing else in `app/`, `auto_deployment/` or `ops/` writes SQL or opens a database connection; they call the
typed functions here, so swapping MySQL for PostgreSQL is this module plus the schema files in ``app/sql/``.
It lives in `app/` (the ground floor) because the serving image needs the ``reccom`` insert and must not
import `auto_deployment/`.

Accounts (least privilege; :func:`apply_schema` makes sure of them at every apply):

====================  =============================================================
admin (MYSQL_ADMIN_*)   everything; applies the schema and creates the accounts (nothing else
                        at run time uses it)
pipeline (MYSQL_PIPELINE_*)
                        SELECT, INSERT, UPDATE, DELETE on ``tracking`` (`record_tracking` upserts,
                        `delete_tracking` undoes a version that failed half-way); SELECT, INSERT
                        on ``releases`` - the scheduler can neither touch ``reccom`` nor the schema
app (MYSQL_APP_*)       INSERT on ``reccom``, SELECT on ``tracking`` - nothing else: a
                        compromised inference server can neither read who was served
                        what nor rewrite history
auditor                 SELECT on the whole database, no write of any kind
====================  =============================================================

Each account exists for the hosts ``%`` (compose: clients in other containers), ``localhost`` (Unix
socket) and ``127.0.0.1`` (loopback TCP), and its password follows the settings at every apply.

Schema files ``app/sql/NNN_name.sql`` are applied once each, in order, and recorded in ``schema_version``
with their checksum; a file already applied is never edited (a change is a new file with the next number).
They use ``IF NOT EXISTS`` because MySQL DDL is not transactional: a re-run after a half-applied file
completes it. A lock (``GET_LOCK``) keeps two appliers from interleaving.

Errors: a connection that cannot be made raises :class:`DatabaseUnreachable`; a statement that fails
raises :class:`DatabaseError` (both `RuntimeError`), so no caller needs to know the driver's exceptions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymysql

from app.logs import kv
from app.settings import MySQL

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).with_name("sql")
ROLES = ("admin", "pipeline", "app", "auditor")
ACCOUNT_HOSTS = ("%", "localhost", "127.0.0.1")
_FILE_NAME = re.compile(r"^(\d{3})_[A-Za-z0-9_]+\.sql$")
_DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

RECCOM_COLUMNS = (
    "row_id", "request_id", "served_at_ms", "user_id", "version_number", "slot", "host", "latency_ms", "movies",
)
TRACKING_COLUMNS = (
    "version_number", "data_creation", "trained_on", "model_rmse", "data_checksum", "model_checksum",
    "code_commit", "algorithm", "params", "train_size", "metrics",
)
RELEASE_COLUMNS = (
    "candidate_version", "previous_version", "started_at", "ended_at", "outcome",
    "canary_latency_ms", "canary_requests", "canary_errors", "canary_error_ratio",
    "stable_latency_ms", "stable_requests", "stable_errors", "stable_error_ratio", "reason",
    "steps", "decided_by", "controls",  # 004_release_steps.sql
)
# `releases.outcome`: what a release ended as (the release controller and the notices use these names)
PROMOTED, ABORTED, FAILED = "promoted", "aborted", "failed"
OUTCOMES = (PROMOTED, ABORTED, FAILED)
_DATETIME_COLUMNS = {"data_creation", "trained_on", "started_at", "ended_at"}
_JSON_COLUMNS = {"params", "metrics", "steps", "controls"}

# `INSERT IGNORE` on the UNIQUE row_id: a replayed batch (spool, lost acknowledgement) is written exactly once.
# IGNORE would also truncate a value that does not fit and call it a success, so `reccom_problem` refuses those
# first (`ON DUPLICATE KEY UPDATE` would need UPDATE, which the app account must not have).
_INSERT_RECCOM = (
    f"INSERT IGNORE INTO reccom ({', '.join(RECCOM_COLUMNS)}) VALUES ({', '.join(['%s'] * len(RECCOM_COLUMNS))})"
)
_ONLINE_EVAL_CHUNK = 500  # users per IN (...) list: keeps one statement well under max_allowed_packet
_REPORT_TIMEOUT_S = 60.0  # read timeout of the auditor's scans: longer than a write's, they read many rows

Connection = pymysql.connections.Connection


class DatabaseError(RuntimeError):
    """A statement failed (connection lost, timeout, refused): the caller keeps its data and may retry."""


class DatabaseUnreachable(DatabaseError):
    """MySQL did not accept a connection (down, wrong address, wrong credentials)."""


# ------------------------------------------------------------------------------------------- connections
def database_name(settings: MySQL) -> str:
    """The database name, checked so it can be quoted into DDL safely."""
    if not _DATABASE_NAME.match(settings.database):
        raise ValueError(f"MYSQL_DATABASE={settings.database!r}: use letters, digits and _ (at most 64)")
    return settings.database


def credentials(settings: MySQL, role: str) -> tuple[str, str]:
    """(user, password) of `role`; an unknown role is a programming error."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    return getattr(settings, f"{role}_user"), getattr(settings, f"{role}_password")


def describe(exc: BaseException) -> str:
    """A driver error as one short line (`1045 Access denied ...`)."""
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) > 1:
        return f"{exc.args[0]} {exc.args[1]}"
    return f"{type(exc).__name__}: {exc}"


def connect(
    settings: MySQL,
    role: str,
    *,
    database: bool = True,
    timeout_s: float | None = None,
    read_timeout_s: float | None = None,
) -> Connection:
    """An autocommit connection as `role`, in UTC, with the settings' timeouts (the only factory there is).

    Raises :class:`DatabaseUnreachable` (with host, port, account and reason) when it cannot connect,
    so command lines can print one clear line instead of a traceback.
    """
    user, password = credentials(settings, role)
    timeout = timeout_s or settings.connect_timeout_s
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
    except (pymysql.err.MySQLError, OSError) as exc:
        reason = exc.args[1] if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) > 1 else str(exc)
        raise DatabaseUnreachable(
            f"cannot reach MySQL at {settings.host}:{settings.port} (database {settings.database}) "
            f"as {user}: {reason}"
        ) from exc


@contextlib.contextmanager
def _session(settings: MySQL, role: str, **kw: Any) -> Iterator[Connection]:
    """A connection for one call, closed after it; driver errors become :class:`DatabaseError`."""
    conn = connect(settings, role, **kw)
    try:
        yield conn
    except (pymysql.err.MySQLError, OSError) as exc:
        raise DatabaseError(
            f"query failed on {settings.host}:{settings.port}/{settings.database}: {describe(exc)}"
        ) from exc
    finally:
        with contextlib.suppress(Exception):
            conn.close()


def close(conn: Connection | None) -> None:
    """Close a connection, ignoring a peer that is already gone."""
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


# ------------------------------------------------------------------------------------------------ schema
@dataclass(frozen=True)
class Migration:
    """One schema file: its number, file name and text (checksummed so an edit after applying shows)."""

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


def apply_schema(settings: MySQL, sql_dir: Path = SQL_DIR) -> list[int]:
    """Create the database, apply the missing schema files, ensure the accounts. Returns the versions applied now."""
    db = database_name(settings)
    files = migrations(sql_dir)
    applied_now: list[int] = []
    with _session(settings, "admin", database=False, read_timeout_s=max(60.0, settings.connect_timeout_s)) as conn, \
            conn.cursor() as cur:
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
            _ensure_accounts(cur, settings)
        finally:
            cur.execute("SELECT RELEASE_LOCK(%s)", (f"movierec.schema.{db}",))
    log.info("schema up to date", extra=kv(database=db, version=files[-1].version if files else 0,
                                           applied=len(applied_now)))
    return applied_now


def _ensure_accounts(cur: pymysql.cursors.Cursor, settings: MySQL) -> None:
    """Pipeline, app and auditor accounts with exactly the privileges of the module docstring (idempotent)."""
    db = database_name(settings)
    users = (settings.admin_user, settings.pipeline_user, settings.app_user, settings.auditor_user)
    if len(set(users)) != len(users):
        raise ValueError("the admin, pipeline, app and auditor accounts must be four different users")
    grants = {
        (settings.pipeline_user, settings.pipeline_password): (
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{db}`.`tracking` TO %s@%s",
            f"GRANT SELECT, INSERT ON `{db}`.`releases` TO %s@%s",
        ),
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
    db = database_name(settings)
    with _session(settings, "admin", database=False) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = "
                    "'schema_version'", (db,))
        if cur.fetchone()[0] == 0:
            return []
        cur.execute(f"SELECT version, name, applied_at FROM `{db}`.schema_version ORDER BY version")
        return [(int(v), n, a) for v, n, a in cur.fetchall()]


# ------------------------------------------------------------------------------------ values of a row
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


# ---------------------------------------------------------------------------------------------- tracking
def tracking_row(metadata: Mapping[str, Any], *, model_checksum: str | None = None) -> dict[str, Any]:
    """The `tracking` row of a model bundle's metadata.json (app.model.Recommender.metadata)."""
    metrics = metadata.get("metrics") or {}
    version = metadata.get("version")
    if version is None or not str(version).isdigit():
        raise ValueError(f"bundle metadata has no numeric version (got {version!r})")
    return {
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


def record_tracking(settings: MySQL, row: Mapping[str, Any]) -> None:
    """Insert or update the `tracking` row of `row["version_number"]` (only the columns given change).

    Idempotent: recording the same row twice leaves one row. Times may be datetimes, epoch seconds or ISO
    strings (stored as UTC); params and metrics may be dicts. Callers that must never overwrite a row
    check :func:`has_tracking_row` first.
    """
    values = _values(row, TRACKING_COLUMNS, "tracking")  # a bad row fails before any connection is made
    if values.get("version_number") is None:
        raise ValueError("tracking: version_number is required")
    with _session(settings, "pipeline") as conn:
        write_tracking(conn, values)


def write_tracking(conn: Connection, row: Mapping[str, Any]) -> None:
    """:func:`record_tracking` on a connection the caller holds (pipeline or admin)."""
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


def has_tracking_row(settings: MySQL, version: int) -> bool:
    """Whether `version` has its `tracking` row (the one "is this version recorded" query)."""
    with _session(settings, "pipeline") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM tracking WHERE version_number = %s", (int(version),))
        return bool(cur.fetchone()[0])


def delete_tracking(settings: MySQL, version: int) -> None:
    """Remove the `tracking` row of `version`: only the undo of a version that failed half-way uses it."""
    with _session(settings, "pipeline") as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM tracking WHERE version_number = %s", (int(version),))


def tracking_rows(settings: MySQL) -> list[dict[str, Any]]:
    """Every `tracking` row's version number and data checksum, oldest version first."""
    with _session(settings, "pipeline") as conn, conn.cursor() as cur:
        cur.execute("SELECT version_number, data_checksum FROM tracking ORDER BY version_number")
        return [{"version_number": int(v), "data_checksum": c} for v, c in cur.fetchall()]


def tracked_model_checksum(settings: MySQL, version: int) -> str | None:
    """`tracking.model_checksum` of `version`, read as the app account (a slot checks a bundle against it).

    None when the version has no row or its row has no model checksum. Raises :class:`DatabaseUnreachable`
    / :class:`DatabaseError` when MySQL cannot answer: the caller decides what that means.
    """
    with _session(settings, "app") as conn, conn.cursor() as cur:
        cur.execute("SELECT model_checksum FROM tracking WHERE version_number = %s", (int(version),))
        row = cur.fetchone()
    return None if row is None or not row[0] else str(row[0])


# ---------------------------------------------------------------------------------------------- releases
def release_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """The checked values of a `releases` row; error ratios are derived from counts when not given."""
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
    return values


def record_release(settings: MySQL, row: Mapping[str, Any]) -> int:
    """Insert one `releases` row as the pipeline account; returns its id.

    Raises ValueError for a row that breaks the schema.
    """
    values = release_values(row)  # a bad row fails before any connection is made
    with _session(settings, "pipeline") as conn:
        return write_release(conn, values)


def write_release(conn: Connection, row: Mapping[str, Any]) -> int:
    """:func:`record_release` on a connection the caller holds (pipeline or admin); returns the row's id."""
    values = release_values(row)
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


# ------------------------------------------------------------------------------------- reccom (serving)
def reccom_problem(row: Mapping[str, Any]) -> str | None:
    """Why `row` does not fit a `reccom` column, or None: checked here so nothing is ever truncated.

    ``INSERT IGNORE`` and a non-strict server would store a 40-char slot as 32 and user 10^20 as 2^63-1
    and call it written; a refused row is dead-lettered by the caller instead.
    """
    for key, kind, limit in _RECCOM_CHECKS:
        value = row.get(key)
        if value is None:
            if key == "latency_ms":
                continue
            return f"{key} is missing"
        if kind == "str":
            if not isinstance(value, str):
                return f"{key} is not text"
            try:
                encoded = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                return f"{key} is not valid UTF-8 text"
            size = encoded if key == "movies" else len(value)
            if size > limit or (size == 0 and key in ("row_id", "request_id")):
                return f"{key} of length {size} does not fit (1..{limit})" if key != "movies" else \
                    f"movies of {size} bytes does not fit a TEXT ({limit})"
        elif kind == "int":
            low, high = limit
            if not isinstance(value, int) or isinstance(value, bool):
                return f"{key} is not an integer"
            if not low <= value <= high:
                return f"{key}={value} is out of range [{low}, {high}]"
        elif kind == "float" and (not isinstance(value, int | float) or isinstance(value, bool)
                                  or not math.isfinite(value) or abs(value) > limit):
            return f"{key}={value!r} is not a finite FLOAT"
    return None


_BIGINT = (-(2**63), 2**63 - 1)
_RECCOM_CHECKS: tuple[tuple[str, str, Any], ...] = (
    ("row_id", "str", 64),
    ("request_id", "str", 64),
    ("served_at_ms", "int", _BIGINT),
    ("user_id", "int", _BIGINT),
    ("version_number", "int", (0, 2**32 - 1)),
    ("slot", "str", 32),
    ("host", "str", 255),
    ("latency_ms", "float", 3.4028234e38),
    ("movies", "str", 65_535),
)


_ROW_ERRORS = (pymysql.err.DataError, pymysql.err.IntegrityError, ValueError, TypeError)


def insert_reccom(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, str]]:
    """Write served rows (keys: RECCOM_COLUMNS) on an open app connection; returns the refused (index, reason).

    One multi-row ``INSERT IGNORE`` keyed by ``row_id`` (a duplicate is a no-op), so a replayed batch is written exactly
    once. A row that does not fit its columns (:func:`reccom_problem`) is refused before it is sent; a batch
    the database still calls malformed is retried row by row, storing every row it accepts. A lost connection
    raises :class:`DatabaseError` and nothing is counted as written.
    """
    refused: list[tuple[int, str]] = []
    todo: list[int] = []
    for i, r in enumerate(rows):
        why = reccom_problem(r)
        if why:
            refused.append((i, why))
        else:
            todo.append(i)
    params = [tuple(rows[i][c] for c in RECCOM_COLUMNS) for i in todo]
    if not params:
        return refused
    try:
        with conn.cursor() as cur:
            try:
                cur.executemany(_INSERT_RECCOM, params)
            except _ROW_ERRORS:  # some row is bad (encoding fails client-side, before anything is sent)
                for i, p in zip(todo, params, strict=True):
                    try:
                        cur.execute(_INSERT_RECCOM, p)
                    except _ROW_ERRORS as exc:
                        refused.append((i, f"refused: {describe(exc)}"))
                refused.sort()
    except (pymysql.err.MySQLError, OSError) as exc:
        raise DatabaseError(describe(exc)) from exc
    return refused


# ----------------------------------------------------------------------------------- audit (read only)
def user_requests(
    settings: MySQL, user_id: int, since_ms: int | None = None, until_ms: int | None = None
) -> list[dict[str, Any]]:
    """Every `reccom` row of `user_id` served in [since_ms, until_ms], oldest first, joined with its `tracking` row.

    Keys: request_id, served_at_ms, slot, host, version_number, latency_ms, movies (as stored, comma-joined),
    data_checksum, trained_on, model_rmse, data_creation (None when the version has no tracking row).
    """
    where = ["r.user_id = %s"]
    params: list[Any] = [user_id]
    if since_ms is not None:
        where.append("r.served_at_ms >= %s")
        params.append(since_ms)
    if until_ms is not None:
        where.append("r.served_at_ms <= %s")
        params.append(until_ms)
    sql = (
        "SELECT r.request_id, r.served_at_ms, r.slot, r.host, r.version_number, r.latency_ms, r.movies, "
        "t.data_checksum, t.trained_on, t.model_rmse, t.data_creation "
        "FROM reccom r LEFT JOIN tracking t ON t.version_number = r.version_number "
        f"WHERE {' AND '.join(where)} ORDER BY r.served_at_ms, r.id"
    )
    with _session(settings, "auditor", read_timeout_s=_REPORT_TIMEOUT_S) as conn, \
            conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql, params)
        return list(cur.fetchall())


def version_served(settings: MySQL, version: int) -> dict[str, Any]:
    """What `version` served and its `tracking` row, as the auditor.

    Keys: requests, users, first_ms, last_ms, by_slot ({slot: requests}), tracking (dict of data_checksum,
    trained_on, model_rmse; None when the version has no row).
    """
    with _session(settings, "auditor", read_timeout_s=_REPORT_TIMEOUT_S) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT COUNT(*), COUNT(DISTINCT user_id), MIN(served_at_ms), MAX(served_at_ms) "
            "FROM reccom WHERE version_number = %s",
            (version,),
        )
        requests, users, first, last = cur.fetchone()
        cur.execute("SELECT slot, COUNT(*) FROM reccom WHERE version_number = %s GROUP BY slot ORDER BY slot",
                    (version,))
        by_slot = {slot: int(n) for slot, n in cur.fetchall()}
        cur.execute("SELECT data_checksum, trained_on, model_rmse FROM tracking WHERE version_number = %s",
                    (version,))
        tracked = cur.fetchone()
    return {
        "requests": int(requests),
        "users": int(users),
        "first_ms": first,
        "last_ms": last,
        "by_slot": by_slot,
        "tracking": None if tracked is None else dict(zip(("data_checksum", "trained_on", "model_rmse"), tracked,
                                                          strict=True)),
    }


# ------------------------------------------------------------------------------------- online evaluation
def served_lists(
    settings: MySQL, user_ids: Sequence[int], since_ms: int, until_ms: int
) -> list[tuple[int, str, int, str, str]]:
    """(user_id, movies, served_at_ms, version_number, slot) of the users' `reccom` rows in [since_ms, until_ms].

    Read as the auditor, for joining log lines with the version and slot that served them.
    """
    users = sorted(set(user_ids))
    out: list[tuple[int, str, int, str, str]] = []
    if not users:
        return out
    with _session(settings, "auditor", read_timeout_s=_REPORT_TIMEOUT_S) as conn, conn.cursor() as cur:
        for start in range(0, len(users), _ONLINE_EVAL_CHUNK):
            chunk = users[start : start + _ONLINE_EVAL_CHUNK]
            cur.execute(
                "SELECT user_id, movies, served_at_ms, version_number, slot FROM reccom "
                f"WHERE user_id IN ({','.join(['%s'] * len(chunk))}) AND served_at_ms BETWEEN %s AND %s",
                [*chunk, since_ms, until_ms],
            )
            out.extend((int(u), m, int(s), str(v), str(slot)) for u, m, s, v, slot in cur.fetchall())
    return out


# ------------------------------------------------------------------------------ console (read only)
def tracking_history(settings: MySQL, version: int | None = None) -> list[dict[str, Any]]:
    """Every `tracking` row (or only `version`'s), newest version first, read as the auditor.

    Keys: TRACKING_COLUMNS plus recorded_at; params and metrics decoded from JSON (None when absent).
    """
    where, params = ("WHERE version_number = %s", [int(version)]) if version is not None else ("", [])
    sql = (f"SELECT {', '.join(TRACKING_COLUMNS)}, recorded_at FROM tracking {where} "
           "ORDER BY version_number DESC")
    with _session(settings, "auditor", read_timeout_s=_REPORT_TIMEOUT_S) as conn, \
            conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql, params)
        return _decoded(list(cur.fetchall()))


def _decoded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with their JSON columns (params, metrics, steps, controls) decoded; text that is not JSON stays text."""
    for row in rows:
        for key in _JSON_COLUMNS:
            if isinstance(row.get(key), str | bytes):
                with contextlib.suppress(ValueError):  # kept as text: the console shows what is stored
                    row[key] = json.loads(row[key])
    return rows


def release_history(settings: MySQL, candidate: int | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """`releases` rows (of `candidate` when given), newest first, at most `limit`, read as the auditor.

    Keys: id plus RELEASE_COLUMNS (JSON columns decoded).
    """
    where, params = ("WHERE candidate_version = %s", [int(candidate)]) if candidate is not None else ("", [])
    sql = (f"SELECT id, {', '.join(RELEASE_COLUMNS)} FROM releases {where} "
           "ORDER BY started_at DESC, id DESC LIMIT %s")
    with _session(settings, "auditor", read_timeout_s=_REPORT_TIMEOUT_S) as conn, \
            conn.cursor(pymysql.cursors.DictCursor) as cur:
        cur.execute(sql, [*params, max(1, int(limit))])
        return _decoded(list(cur.fetchall()))
