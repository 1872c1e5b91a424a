"""Hardening of issue 12 through the real parts: NGINX keeps a sane client request id, MariaDB runs least-privileged.

* NGINX (rendered from nginx/nginx.conf.template) in front of a real inference server (Gunicorn): a client's
  sane ``X-Request-Id`` reaches the server, comes back and is logged; an insane one is replaced (finding 5).
* MariaDB as ``ops/mariadb.sh`` runs it (finding 2): no root over TCP, no file reads or ``LOAD DATA LOCAL``
  for the platform's accounts, ``secure_file_priv`` a private directory, mysqld not running as uid 0.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pymysql
import pytest
import requests

from app import store
from app.server import REQUEST_ID
from app.settings import MySQL
from ops.render import compose_context, render
from tests.fixtures.mariadb import MariaDB
from tests.fixtures.ports import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
HEX32 = re.compile(r"[0-9a-f]{32}")


# ---------------------------------------------------------------------- NGINX: the client's request id
@dataclass
class Proxy:
    url: str
    access_log: Path


@pytest.fixture
def proxy(start_server, models_root: Path, tmp_path: Path) -> Iterator[Proxy]:
    """The project's NGINX template rendered for loopback in `tmp_path`, in front of one real inference server."""
    assert NGINX is not None, "Debian package nginx is not installed (make sysdeps installs it)"
    server = start_server(slot="stable_1", model_dir=models_root / "1", version=None, workers=1)
    root = tmp_path / "nginx"
    root.mkdir()
    (root / "upstream.conf").write_text(f"server 127.0.0.1:{server.port};\n")
    port = free_port()
    context = compose_context()
    context["compose"] = False  # no console server (it resolves a compose service name)
    context["address"] = lambda slot: f"127.0.0.1:{server.port}"  # the shadow upstream: this one server too
    context["nginx"] = {
        "user": "root" if os.geteuid() == 0 else "",
        "pidfile": root / "nginx.pid",
        "error_log": root / "error.log",
        "access_log": root / "access.log",
        "temp": root,
        "listen": f"127.0.0.1:{port}",
        "status_listen": f"127.0.0.1:{free_port()}",
        "status_loopback_only": True,
        "upstream": root / "upstream.conf",
    }
    conf = root / "nginx.conf"
    conf.write_text(render("nginx", context))
    subprocess.run([NGINX, "-p", str(root), "-c", str(conf)], check=True, timeout=30)
    try:
        yield Proxy(f"http://127.0.0.1:{port}", root / "access.log")
    finally:
        subprocess.run([NGINX, "-p", str(root), "-c", str(conf), "-s", "stop"], check=False, timeout=30)


def _recommend(proxy: Proxy, request_id: str | None) -> requests.Response:
    headers = {} if request_id is None else {"X-Request-Id": request_id}
    response = requests.get(f"{proxy.url}/recommend/3", headers=headers, timeout=5)
    assert response.status_code == 200, response.text
    return response


def _logged_ids(proxy: Proxy, n: int) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        ids = re.findall(r"request_id=(\S+)", proxy.access_log.read_text())
        if len(ids) >= n or time.monotonic() > deadline:
            return ids


SANE = ["0f8e2c4a-9b1d-4e7f-a3c6-5d2b8e1f0a9c", "abcdefgh", "A" * 64, "trace-1234-ABCD"]
INSANE = [
    "A" * 65,  # too long
    "short",  # too short
    "has space 12345",
    "quote\"1234567",
    "semi;colon;1234",
    "dots.and_underscores",  # outside the server's REQUEST_ID, so NGINX does not keep it either
    "x" * 2000,
]


def test_nginx_keeps_a_sane_client_request_id_end_to_end(proxy: Proxy) -> None:
    for request_id in SANE:
        response = _recommend(proxy, request_id)
        # the inference server answers with the id it was given (it would mint its own for one it rejects)
        assert response.headers["X-Request-Id"] == request_id
        assert response.headers["X-Slot"] == "stable"
    assert _logged_ids(proxy, len(SANE))[-len(SANE):] == SANE


def test_nginx_replaces_an_insane_or_missing_request_id_with_its_own(proxy: Proxy) -> None:
    seen = []
    for request_id in [*INSANE, None]:
        returned = _recommend(proxy, request_id).headers["X-Request-Id"]
        assert returned != request_id and HEX32.fullmatch(returned), (request_id, returned)
        seen.append(returned)
    assert len(set(seen)) == len(seen)  # a fresh id per request
    logged = _logged_ids(proxy, len(seen))[-len(seen):]
    assert logged == seen  # NGINX's log and the server agree on the id that replaced the client's


def test_nginx_keeps_exactly_what_the_server_keeps() -> None:
    """One pattern at both hops: an id NGINX forwards is never replaced again by the server."""
    conf = Path(__file__).resolve().parents[2] / "nginx" / "nginx.conf.template"
    pattern = re.search(r'"~\^(.+)\$"\s+\$http_x_request_id;', conf.read_text())
    assert pattern is not None
    assert pattern.group(1) == REQUEST_ID.pattern


# ---------------------------------------------------------------------- MariaDB: least privilege
def _connect(mariadb: MariaDB, user: str, password: str, **kw: object) -> pymysql.connections.Connection:
    return pymysql.connect(host=mariadb.host, port=mariadb.port, user=user, password=password, connect_timeout=5,
                           **kw)


def _scalar(settings: MySQL, role: str, sql: str) -> object:
    with store.connect(settings, role, database=False) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


@pytest.mark.parametrize("password", ["", "root", "test-admin-secret", "local-admin"])
def test_mariadb_root_cannot_log_in_over_tcp(mariadb: MariaDB, password: str) -> None:
    for host in ("127.0.0.1", "::1"):
        with pytest.raises(pymysql.err.OperationalError) as info:
            pymysql.connect(host=host, port=mariadb.port, user="root", password=password, connect_timeout=5)
        # denied (1698: denied, the account has no password plugin for TCP), host not allowed, or no IPv6
        assert info.value.args[0] in (1045, 1698, 1130, 2003), info.value


def test_mariadb_root_exists_only_for_the_unix_socket(mysql_settings: MySQL) -> None:
    with store.connect(mysql_settings, "admin", database=False) as conn, conn.cursor() as cur:
        cur.execute("SELECT Host, JSON_VALUE(Priv, '$.plugin'), JSON_EXTRACT(Priv, '$.auth_or')"
                    " FROM mysql.global_priv WHERE User = 'root'")
        rows = cur.fetchall()
        cur.execute("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ''")
        anonymous = cur.fetchone()[0]
    assert [(host, plugin) for host, plugin, _ in rows] == [("localhost", "unix_socket")], rows
    assert rows[0][2] in (None, "[{}]")  # no "OR mysql_native_password ..." alternative
    assert anonymous == 0


def test_mariadb_reads_no_file_for_the_platform_accounts(mysql_settings: MySQL) -> None:
    for role in store.ROLES:
        try:
            value = _scalar(mysql_settings, role, "SELECT LOAD_FILE('/etc/hostname')")
        except store.DatabaseError:
            continue  # refused outright is as good as NULL
        assert value is None, role
    with store.connect(mysql_settings, "admin", database=False) as conn, conn.cursor() as cur:
        cur.execute("SHOW GRANTS")
        grants = " ".join(g for (g,) in cur.fetchall())
    assert "FILE" not in grants.replace("ALL PRIVILEGES", "") and "SHUTDOWN" not in grants


def test_mariadb_writes_no_file_outside_its_private_directory(mysql_settings: MySQL, tmp_path: Path) -> None:
    target = tmp_path / "outfile.txt"
    # refused: the admin has no FILE privilege, and secure_file_priv points elsewhere anyway
    with store.connect(mysql_settings, "admin", database=False) as conn, conn.cursor() as cur, \
            pytest.raises(pymysql.err.MySQLError):
        cur.execute(f"SELECT 'x' INTO OUTFILE '{target}'")
    assert not target.exists()


def test_mariadb_has_local_infile_off_and_a_private_secure_file_priv(mariadb: MariaDB,
                                                                     mysql_settings: MySQL) -> None:
    with store.connect(mysql_settings, "auditor", database=False) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@local_infile, @@secure_file_priv")
        local_infile, secure_file_priv = cur.fetchone()
    assert local_infile == 0
    private = Path(secure_file_priv)
    assert private.is_dir() and not any(private.iterdir())
    assert private.stat().st_mode & 0o077 == 0  # no one but the server user reads or writes it
    # a client that asks for LOCAL INFILE anyway is refused by the server
    source = mysql_settings
    with _connect(mariadb, source.admin_user, source.admin_password, local_infile=True,
                  database=source.database) as conn, conn.cursor() as cur:
        data = Path(os.devnull)
        with pytest.raises(pymysql.err.MySQLError):
            cur.execute(f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE tracking")


def test_mariadb_server_does_not_run_as_root(mariadb: MariaDB, mysql_settings: MySQL) -> None:
    pid = mariadb.pid()
    uids = [int(u) for u in next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                                 if line.startswith("Uid:")).split()[1:]]
    assert 0 not in uids, uids  # real, effective, saved and filesystem uid
    data = Path(str(_scalar(mysql_settings, "admin", "SELECT @@datadir")))
    assert data.stat().st_uid == uids[1]  # the server user owns its data dir
    if os.geteuid() == 0:
        assert (mariadb.run_dir / "mariadb" / "my.cnf").stat().st_uid == 0  # but not its own configuration


def test_mariadb_script_refuses_root_or_an_empty_password_as_admin(mariadb: MariaDB, tmp_path: Path) -> None:
    for user, password, says in (("root", "x", "unix socket"), ("movierec_admin", "", "needs a password")):
        other = replace(mariadb, port=free_port(), admin_user=user, admin_password=password, run_dir=tmp_path / user)
        done = other.script("start", check=False)
        if done.returncode == 0:
            other.stop()
        assert done.returncode != 0 and says in done.stderr, done.stderr
        assert not (tmp_path / user / "mariadb" / "data").exists()  # refused before anything was made
