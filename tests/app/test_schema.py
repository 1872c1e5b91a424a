"""The provenance store on a real MariaDB: versioned and idempotent schema, least-privilege accounts, stage writes.

Also the rule that makes the store worth having: no SQL outside `app/store.py` and `app/sql/`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pymysql
import pytest

from app import store
from app.settings import ROOT, MySQL
from tests.fixtures.mariadb import MariaDB, free_port, fresh_database_name, settings_env

DENIED = (1142, 1143, 1044, 1045, 1227)  # table/column/database command denied, access denied, privilege missing


def run_schema_cli(settings: MySQL, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auto_deployment.schema", *args], cwd=ROOT, text=True,
                          capture_output=True, env={**os.environ, **settings_env(settings)}, timeout=60)


def query(settings: MySQL, role: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = store.connect(settings, role)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def assert_denied(settings: MySQL, role: str, sql: str, params: tuple = ()) -> None:
    with pytest.raises((pymysql.err.OperationalError, pymysql.err.ProgrammingError)) as info:
        query(settings, role, sql, params)
    assert info.value.args[0] in DENIED, info.value


def test_applying_the_schema_twice_changes_nothing_the_second_time(mariadb: MariaDB, tmp_path: Path) -> None:
    settings = mariadb.settings(fresh_database_name(), tmp_path / "spool")
    files = [m.version for m in store.migrations()]
    assert files == sorted(files) and len(files) >= 2

    assert store.apply_schema(settings) == files
    before = query(settings, "admin", "SELECT version, name, checksum, applied_at FROM schema_version ORDER BY version")
    assert store.apply_schema(settings) == []
    done = run_schema_cli(settings, "apply")
    assert done.returncode == 0, done.stderr
    after = query(settings, "admin", "SELECT version, name, checksum, applied_at FROM schema_version ORDER BY version")
    assert after == before
    assert [v for v, *_ in after] == files

    tables = {t for (t,) in query(settings, "admin", "SHOW TABLES")}
    assert {"schema_version", "tracking", "reccom", "releases"} <= tables
    status = run_schema_cli(settings, "status")
    assert status.returncode == 0
    assert all(m.name in status.stdout for m in store.migrations())


def test_a_new_schema_file_is_applied_on_top_of_the_existing_ones(mariadb: MariaDB, tmp_path: Path) -> None:
    settings = mariadb.settings(fresh_database_name(), tmp_path / "spool")
    store.apply_schema(settings)
    sql_dir = tmp_path / "sql"
    shutil.copytree(store.SQL_DIR, sql_dir)
    last = store.migrations()[-1].version
    (sql_dir / f"{last + 1:03d}_audit_notes.sql").write_text(
        "-- a later change\nCREATE TABLE IF NOT EXISTS audit_notes (\n  id INT PRIMARY KEY\n);\n"
        "ALTER TABLE audit_notes ADD COLUMN note TEXT;\n"
    )

    assert store.apply_schema(settings, sql_dir) == [last + 1]
    assert store.apply_schema(settings, sql_dir) == []  # the ALTER would fail if it ran twice
    columns = [c for c, *_ in query(settings, "admin", "SHOW COLUMNS FROM audit_notes")]
    assert columns == ["id", "note"]


def test_reccom_is_indexed_for_who_served_user_u_when_and_by_version(mysql_settings: MySQL) -> None:
    indexes: dict[str, list[str]] = {}
    for row in query(mysql_settings, "admin", "SHOW INDEX FROM reccom"):
        indexes.setdefault(row[2], []).append(row[4])
    assert ["user_id", "served_at_ms"] in indexes.values()
    assert any(cols[0] == "version_number" for cols in indexes.values())
    assert any(cols == ["request_id"] for name, cols in indexes.items() if name != "PRIMARY")
    plan = query(mysql_settings, "admin",
                 "EXPLAIN SELECT * FROM reccom WHERE user_id = 7 AND served_at_ms BETWEEN 0 AND 10")
    assert plan[0][5] is not None and "user" in plan[0][5]  # the `key` the optimiser picks


def test_app_account_may_only_insert_served_rows_and_read_tracking(mysql_settings: MySQL) -> None:
    s = mysql_settings
    store.record_tracking(s, {"version_number": 1, "model_rmse": 0.9})

    query(s, "app", "INSERT INTO reccom (request_id, served_at_ms, user_id, version_number, slot, host, movies) "
                    "VALUES ('r1', 1, 2, 1, 'stable', 'h', 'a,b')")
    assert query(s, "app", "SELECT version_number, model_rmse FROM tracking") == [(1, 0.9)]

    assert_denied(s, "app", "SELECT * FROM reccom")
    assert_denied(s, "app", "SELECT COUNT(*) FROM reccom")
    assert_denied(s, "app", "UPDATE reccom SET user_id = 3")
    assert_denied(s, "app", "DELETE FROM reccom")
    assert_denied(s, "app", "INSERT INTO tracking (version_number) VALUES (2)")
    assert_denied(s, "app", "UPDATE tracking SET model_rmse = 0.1")
    assert_denied(s, "app", "DELETE FROM tracking")
    assert_denied(s, "app", "SELECT * FROM releases")
    assert_denied(s, "app", "DROP TABLE reccom")
    assert query(s, "admin", "SELECT request_id FROM reccom") == [("r1",)]


def test_auditor_account_reads_everything_and_writes_nothing(mysql_settings: MySQL) -> None:
    s = mysql_settings
    store.record_tracking(s, {"version_number": 1})
    for table in ("tracking", "reccom", "releases", "schema_version"):
        query(s, "auditor", f"SELECT * FROM {table}")
    assert_denied(s, "auditor", "INSERT INTO reccom (request_id, served_at_ms, user_id, version_number, slot, host, "
                                "movies) VALUES ('x', 1, 1, 1, 's', 'h', '')")
    assert_denied(s, "auditor", "INSERT INTO tracking (version_number) VALUES (5)")
    assert_denied(s, "auditor", "INSERT INTO releases (candidate_version, started_at, outcome) "
                                "VALUES (1, NOW(), 'aborted')")
    for table in ("tracking", "reccom", "releases"):
        assert_denied(s, "auditor", f"UPDATE {table} SET {'version_number' if table != 'releases' else 'reason'} = 1")
        assert_denied(s, "auditor", f"DELETE FROM {table}")
    assert_denied(s, "auditor", "CREATE TABLE sneaky (id INT)")
    assert_denied(s, "auditor", "DROP TABLE tracking")


def test_pipeline_account_writes_tracking_and_releases_and_nothing_else(mysql_settings: MySQL) -> None:
    """Issue 12 (least privilege): the scheduler no longer logs in as admin/root."""
    s = mysql_settings
    query(s, "pipeline", "INSERT INTO tracking (version_number, model_rmse) VALUES (1, 0.9) "
                         "ON DUPLICATE KEY UPDATE model_rmse = VALUES(model_rmse)")
    query(s, "pipeline", "INSERT INTO tracking (version_number, model_rmse) VALUES (1, 0.8) "
                         "ON DUPLICATE KEY UPDATE model_rmse = VALUES(model_rmse)")
    assert query(s, "pipeline", "SELECT version_number, model_rmse FROM tracking") == [(1, 0.8)]
    query(s, "pipeline", "INSERT INTO releases (candidate_version, started_at, outcome) VALUES (1, NOW(), 'aborted')")
    assert len(query(s, "pipeline", "SELECT id FROM releases")) == 1
    query(s, "admin", "INSERT INTO reccom (request_id, served_at_ms, user_id, version_number, slot, host, movies) "
                      "VALUES ('r1', 1, 2, 1, 'stable', 'h', 'a,b')")

    assert_denied(s, "pipeline", "SELECT * FROM reccom")
    assert_denied(s, "pipeline", "INSERT INTO reccom (request_id, served_at_ms, user_id, version_number, slot, host, "
                                 "movies) VALUES ('x', 1, 1, 1, 's', 'h', '')")
    assert_denied(s, "pipeline", "UPDATE reccom SET user_id = 3")
    assert_denied(s, "pipeline", "DELETE FROM reccom")
    assert_denied(s, "pipeline", "UPDATE releases SET reason = 'rewritten'")
    assert_denied(s, "pipeline", "DELETE FROM releases")
    assert_denied(s, "pipeline", "SELECT * FROM schema_version")
    assert_denied(s, "pipeline", "DROP TABLE tracking")
    assert_denied(s, "pipeline", "DROP TABLE reccom")
    assert_denied(s, "pipeline", "CREATE TABLE sneaky (id INT)")
    assert_denied(s, "pipeline", "ALTER TABLE tracking ADD COLUMN sneaky INT")
    assert_denied(s, "pipeline", "CREATE USER 'sneaky'@'localhost' IDENTIFIED BY 'x'")
    assert_denied(s, "pipeline", f"GRANT SELECT ON `{s.database}`.`reccom` TO '{s.pipeline_user}'@'localhost'")
    assert query(s, "admin", "SELECT request_id FROM reccom") == [("r1",)]


def test_store_writes_tracking_and_releases_without_the_admin_account(mysql_settings: MySQL) -> None:
    """Issue 12: every tracking/releases call of the scheduler and bootstrap works with admin locked out."""
    s = replace(mysql_settings, admin_password="not-the-admin-password")
    with pytest.raises(store.DatabaseUnreachable):
        store.connect(s, "admin")
    assert not store.has_tracking_row(s, 4)
    store.record_tracking(s, {"version_number": 4, "data_checksum": "d4", "model_checksum": "m4"})
    store.record_tracking(s, {"version_number": 4, "model_rmse": 0.9})
    assert store.has_tracking_row(s, 4)
    assert store.tracking_rows(s) == [{"version_number": 4, "data_checksum": "d4"}]
    assert store.tracked_model_checksum(s, 4) == "m4"
    store.record_release(s, {"candidate_version": 4, "started_at": 0, "outcome": "promoted"})
    store.delete_tracking(s, 4)  # the undo of a version that failed half-way
    assert store.tracking_rows(s) == []


def test_schema_apply_keeps_account_passwords_in_step_with_settings(mysql_settings: MySQL) -> None:
    changed = replace(mysql_settings, app_password="rotated-app-secret")
    store.apply_schema(changed)
    query(changed, "app", "SELECT COUNT(*) FROM tracking")
    with pytest.raises(store.DatabaseUnreachable, match="movierec_app"):
        store.connect(mysql_settings, "app")


def test_record_tracking_upserts_only_the_columns_given(mysql_settings: MySQL) -> None:
    s = mysql_settings
    assert not store.has_tracking_row(s, 3)
    store.record_tracking(s, {
        "version_number": 3, "data_checksum": "d" * 64, "trained_on": "2026-11-20T03:00:00Z",
        "model_rmse": 0.95, "params": {"k": 40}, "metrics": {"rmse": 0.95, "hit_rate": 0.2},
        "data_creation": datetime(2026, 11, 19, 23, 0, tzinfo=UTC), "train_size": 1234,
    })
    store.record_tracking(s, {"version_number": 3, "model_rmse": 0.91, "model_checksum": "m1"})
    with pytest.raises(ValueError, match="unknown column"):
        store.record_tracking(s, {"version_number": 4, "rmse": 1.0})
    with pytest.raises(ValueError, match="version_number"):
        store.record_tracking(s, {"model_rmse": 1.0})
    assert store.has_tracking_row(s, 3) and not store.has_tracking_row(s, 4)
    rows = query(mysql_settings, "admin", "SELECT version_number, data_checksum, trained_on, model_rmse, "
                                          "model_checksum, params, data_creation, train_size FROM tracking")
    assert len(rows) == 1
    version, checksum, trained_on, rmse, model_checksum, params, created, size = rows[0]
    assert (version, checksum, rmse, model_checksum, size) == (3, "d" * 64, 0.91, "m1", 1234)
    assert trained_on == datetime(2026, 11, 20, 3, 0)
    assert created == datetime(2026, 11, 19, 23, 0)
    assert '"k": 40' in params


def test_record_release_stores_one_row_per_release_and_derives_error_ratios(mysql_settings: MySQL) -> None:
    first = store.record_release(mysql_settings, {
        "candidate_version": 5, "previous_version": 4, "started_at": 1_790_000_000.0,
        "ended_at": 1_790_000_060.5, "outcome": "promoted", "canary_latency_ms": 12.5,
        "canary_requests": 200, "canary_errors": 2, "stable_requests": 800, "stable_errors": 0,
        "reason": "latency 12.5 ms < 500 ms",
    })
    second = store.record_release(mysql_settings, {"candidate_version": 6, "previous_version": 5,
                                                   "started_at": datetime(2026, 11, 24, tzinfo=UTC),
                                                   "outcome": "aborted", "reason": "prometheus unreachable"})
    with pytest.raises(ValueError, match="outcome"):
        store.record_release(mysql_settings, {"candidate_version": 7, "started_at": 0, "outcome": "maybe"})
    assert second > first
    rows = query(mysql_settings, "admin", "SELECT id, candidate_version, outcome, canary_error_ratio, "
                                          "stable_error_ratio, started_at, ended_at FROM releases ORDER BY id")
    assert [(r[0], r[1], r[2]) for r in rows] == [(first, 5, "promoted"), (second, 6, "aborted")]
    assert rows[0][3] == pytest.approx(2 / 200) and rows[0][4] == 0.0
    assert rows[0][5] == datetime.fromtimestamp(1_790_000_000, UTC).replace(tzinfo=None)
    assert rows[1][6] is None


def test_tracking_row_maps_a_bundles_metadata() -> None:
    metadata = {"version": 7, "algorithm": "knn", "params": {"k": 40}, "trained_at": "2026-11-24T07:30:00Z",
                "train_size": 900, "code_commit": "abc123", "data_checksum": "cafe", "metrics": {"rmse": 0.93}}
    row = store.tracking_row(metadata, model_checksum="beef")
    assert row["version_number"] == 7 and row["model_rmse"] == 0.93 and row["trained_on"] == "2026-11-24T07:30:00Z"
    assert (row["data_checksum"], row["model_checksum"], row["code_commit"]) == ("cafe", "beef", "abc123")
    assert set(row) <= set(store.TRACKING_COLUMNS)
    with pytest.raises(ValueError, match="version"):
        store.tracking_row({"version": "dev"})


def test_schema_command_says_clearly_when_mysql_is_unreachable(tmp_path: Path) -> None:
    settings = MySQL.from_env()
    settings = replace(settings, port=free_port(), database=fresh_database_name(), spool_dir=str(tmp_path))
    done = run_schema_cli(settings, "apply")
    assert done.returncode == 1
    assert "cannot reach MySQL" in done.stderr and str(settings.port) in done.stderr
    assert "Traceback" not in done.stderr


def test_mariadb_script_start_is_idempotent_and_status_reports_the_pid(mariadb: MariaDB, tmp_path: Path) -> None:
    again = mariadb.script("start")
    assert "already running" in again.stdout and f"pid {mariadb.pid()}" in again.stdout
    status = mariadb.script("status")
    assert status.returncode == 0 and f"pid {mariadb.pid()}" in status.stdout

    elsewhere = MariaDB(mariadb.host, free_port(), mariadb.admin_user, mariadb.admin_password, tmp_path / "run")
    assert elsewhere.script("status", check=False).returncode == 3
    stopped = elsewhere.script("stop")
    assert "not running" in stopped.stdout
    assert mariadb.script("status").returncode == 0  # the other run dir's stop left this server alone


def test_tracking_rows_list_every_version_and_an_undone_row_is_gone(mysql_settings: MySQL) -> None:
    s = mysql_settings
    assert store.tracking_rows(s) == []
    store.record_tracking(s, {"version_number": 4, "data_checksum": "d4"})
    store.record_tracking(s, {"version_number": 2})
    assert store.tracking_rows(s) == [{"version_number": 2, "data_checksum": None},
                                      {"version_number": 4, "data_checksum": "d4"}]
    store.delete_tracking(s, 4)
    assert [r["version_number"] for r in store.tracking_rows(s)] == [2]
    assert not store.has_tracking_row(s, 4)


def test_failures_reach_callers_as_store_errors_never_as_driver_errors(mysql_settings: MySQL) -> None:
    """Callers catch DatabaseUnreachable / DatabaseError only, so the driver can change without touching them."""
    unreachable = replace(mysql_settings, port=free_port())
    with pytest.raises(store.DatabaseUnreachable, match="cannot reach MySQL"):
        store.has_tracking_row(unreachable, 1)
    with pytest.raises(ValueError, match="unknown column"):  # a bad row is refused before any connection
        store.record_tracking(unreachable, {"version_number": 1, "rmse": 0.9})
    empty = mysql_settings  # its tables gone: the pipeline account still connects (table grants stay)
    query(empty, "admin", "DROP TABLE tracking")
    with pytest.raises(store.DatabaseError, match="query failed") as info:
        store.has_tracking_row(empty, 1)  # no tables: the statement fails, the connection did not
    assert not isinstance(info.value, store.DatabaseUnreachable)


SQL = re.compile(
    r"\b(INSERT (IGNORE )?INTO|SELECT\b.*\bFROM|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|DATABASE|USER)"
    r"|ALTER (TABLE|USER)|GRANT \w+ ON|DROP (TABLE|DATABASE))\b"
)
DRIVER = re.compile(r"^\s*(import|from)\s+(pymysql|MySQLdb|mysql\.connector|psycopg2?)\b|\.cursor\(", re.M)
STORE = ROOT / "app" / "store.py"
SCHEMA_FILES = ROOT / "app" / "sql"


def test_no_sql_or_database_connection_outside_the_store() -> None:
    """Swapping MySQL for PostgreSQL must stay one module (app/store.py) plus the schema files (app/sql/).

    Python code of every package may neither hold SQL text nor talk to the driver; schema files live in one folder.
    Exempt by design: the scripts that install and start the database server itself (ops/mariadb.sh,
    docker/bases/mysql.entrypoint.sh) - another database means other such scripts anyway.
    """
    offenders = []
    for package in ("app", "auto_deployment", "ops", "bench", "simulator"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == STORE:
                continue
            text = path.read_text(encoding="utf-8")
            for number, line in enumerate(text.splitlines(), 1):
                if SQL.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0).strip()}" for m in DRIVER.finditer(text)]
        offenders += [f"{p.relative_to(ROOT)}: schema file outside app/sql/"
                      for p in (ROOT / package).rglob("*.sql") if p.parent != SCHEMA_FILES]
    assert offenders == []
    assert SQL.search(STORE.read_text()) and DRIVER.search(STORE.read_text())  # the patterns do find SQL
    assert len(list(SCHEMA_FILES.glob("*.sql"))) >= 3
