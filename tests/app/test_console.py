"""The console's refusals through Flask's test client: bad input is a 400 naming what is wrong, nothing reaches
MySQL for it, a database that cannot answer is a 503 naming why, and only listed report files are served.

(The pages' content against a real MariaDB, in Chromium, is tests/e2e/test_console.py.)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from app.settings import MySQL
from auto_deployment.console.settings import DEFAULT_BIND, DEFAULT_PORT, Console, auditor_only
from auto_deployment.console.web import create_app
from tests.fixtures.ports import free_port


@pytest.fixture
def console(tmp_path: Path) -> Console:
    """A console whose MySQL is a loopback port nobody listens on: any query would fail loudly (503)."""
    (tmp_path / "models" / "2" / "reports").mkdir(parents=True)
    (tmp_path / "models" / "2" / "reports" / "data.html").write_text("<h1>v2</h1>")
    (tmp_path / "models" / "2" / "reports" / "notes.txt").write_text("not a report")
    (tmp_path / "models" / "2" / "metadata.json").write_text("{}")  # a bundle file, not a report
    (tmp_path / "secret.json").write_text('{"secret": true}')
    mysql = replace(MySQL.from_env(), host="127.0.0.1", port=free_port(), connect_timeout_s=0.5)
    return Console(bind=DEFAULT_BIND, port=DEFAULT_PORT, event_log=tmp_path / "events.log", event_log_mb=1.0,
                   report_dirs=(tmp_path / "models",), models_dir=tmp_path / "models", data_dir=tmp_path / "data",
                   run_dir=tmp_path / "run", version_file=tmp_path / "version.txt", mysql=auditor_only(mysql))


@pytest.fixture
def client(console: Console) -> FlaskClient:
    return create_app(console).test_client()


@pytest.mark.parametrize(("query", "message"), [
    ("user_id=", "user id is required: a non-negative integer such as 4242"),
    ("user_id=abc", "user id must be a non-negative integer below 2^63 (got &#39;abc&#39;)"),
    ("user_id=-5", "user id must be a non-negative integer below 2^63 (got &#39;-5&#39;)"),
    ("user_id=4.2", "user id must be a non-negative integer below 2^63 (got &#39;4.2&#39;)"),
    ("user_id=9223372036854775808", "user id must be a non-negative integer below 2^63 "
                                    "(got &#39;9223372036854775808&#39;)"),
    ("user_id=42&since=yesterday", "since: &#39;yesterday&#39; is not an ISO-8601 date or time"),
    ("user_id=42&until=2026-13-01", "until: &#39;2026-13-01&#39; is not an ISO-8601 date or time"),
    ("user_id=42&since=2026-11-24&until=2026-11-23T23:59",
     "empty time range: since 2026-11-24T00:00:00Z is after until 2026-11-23T23:59:00Z"),
    ("user_id=42&since=" + "1" * 65, "since: too long for an ISO-8601 date or time (at most 64 characters)"),
])
def test_bad_audit_input_is_a_400_that_says_what_is_wrong(client: FlaskClient, query: str, message: str) -> None:
    response = client.get(f"/audit?{query}")
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert f'<p class="error" id="error">{message}' in body
    assert 'id="requests"' not in body  # refused before any query: this console's MySQL does not even listen


def test_input_is_escaped_never_rendered_as_markup(client: FlaskClient) -> None:
    response = client.get("/audit", query_string={"user_id": "<script>alert(1)</script>", "since": '"><b>x'})
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "<script>alert(1)</script>" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert 'value="&#34;&gt;&lt;b&gt;x"' in body  # the form keeps what was typed, escaped
    assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none': no script runs


def test_the_empty_form_needs_no_database(client: FlaskClient) -> None:
    response = client.get("/audit")
    assert response.status_code == 200
    assert 'name="user_id"' in response.get_data(as_text=True)


def test_an_unreachable_database_is_a_503_naming_it(client: FlaskClient, console: Console) -> None:
    for path in ("/versions", "/releases", "/versions/3", "/audit?user_id=42"):
        response = client.get(path)
        assert response.status_code == 503, path
        body = response.get_data(as_text=True)
        assert f"cannot reach MySQL at 127.0.0.1:{console.mysql.port}" in body, body
        assert "Traceback" not in body


def test_the_console_is_read_only(client: FlaskClient) -> None:
    for path in ("/audit", "/versions", "/reports"):
        assert client.post(path, data={"user_id": "42"}).status_code == 405
        assert client.delete(path).status_code == 405


def test_only_listed_report_files_are_served(client: FlaskClient) -> None:
    listed = client.get("/reports").get_data(as_text=True)
    assert 'href="/reports/0/2/reports/data.html"' in listed
    assert "notes.txt" not in listed and "metadata.json" not in listed
    report = client.get("/reports/0/2/reports/data.html")
    assert report.status_code == 200 and report.get_data(as_text=True) == "<h1>v2</h1>"
    assert report.headers["Content-Security-Policy"] == "sandbox allow-scripts"
    for path in ("/reports/0/2/reports/notes.txt", "/reports/0/2/metadata.json", "/reports/0/../secret.json",
                 "/reports/0/2/reports/../../../secret.json", "/reports/0/%2e%2e/secret.json",
                 "/reports/1/2/reports/data.html", "/reports/0/2/reports/missing.html"):
        assert client.get(path).status_code == 404, path


def test_settings_default_to_loopback_and_keep_only_the_auditor(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    for name in ("CONSOLE_BIND", "CONSOLE_PORT", "CONSOLE_EVENT_LOG", "CONSOLE_REPORT_DIRS", "CONSOLE_EVENT_LOG_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOVIEREC_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("MOVIEREC_MODELS_DIR", str(tmp_path / "models"))
    console = Console.from_env()
    assert (console.bind, console.port) == ("127.0.0.1", 8090)
    assert console.event_log == tmp_path / "run" / "logs" / "events.log"
    assert console.report_dirs == (tmp_path / "models", tmp_path / "run" / "pipeline")
    mysql = console.mysql
    assert mysql.auditor_user and mysql.auditor_password
    assert (mysql.admin_user, mysql.admin_password, mysql.app_user, mysql.app_password,
            mysql.pipeline_user, mysql.pipeline_password) == ("",) * 6

    monkeypatch.setenv("CONSOLE_PORT", "9x")
    with pytest.raises(ValueError, match="CONSOLE_PORT"):
        Console.from_env()
