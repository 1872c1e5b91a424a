"""Malformed Prometheus answers are `NoData` with a reason, never an exception (issue 12, finding 5).

A release observes for many intervals; one bad reply from Prometheus (or a proxy in front of it) must
cost that one observation, not end the release. A real HTTP server on loopback serves each body.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.contracts.topology import Topology
from auto_deployment.release.metrics import Figures, NoData, Prometheus, QueryFailed, parse_scalar


class Canned(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's current (status, body)."""

    def do_GET(self) -> None:
        status, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    server.answer = (200, b"{}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def observe(server: http.server.ThreadingHTTPServer, status: int, body: bytes) -> Figures | NoData:
    server.answer = (status, body)  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{server.server_address[1]}"
    return Prometheus(url, Topology(), timeout_s=5).figures("canary", 3, window_s=60)


GARBAGE = [
    (200, b"[]", "not an object"),
    (200, b"null", "not an object"),
    (200, b'"success"', "not an object"),
    (200, b'{"data":null}', "query failed"),
    (200, b'{"status":"success","data":null}', "without a data object"),
    (200, b'{"status":"success","data":[]}', "without a data object"),
    (200, b'{"status":"success","data":{"result":null}}', "without a result list"),
    (200, b'{"status":"success","data":{"result":{"value":[1,"2"]}}}', "without a result list"),
    (200, b'{"status":"success","data":{"result":[{"value":[1,"abc"]}]}}', "'abc' is not a number"),
    (200, b'{"status":"success","data":{"result":[{"value":[1,null]}]}}', "not a string number"),
    (200, b'{"status":"success","data":{"result":[{"value":[1,[]]}]}}', "not a string number"),
    (200, b'{"status":"success","data":{"result":[{"value":[1]}]}}', "without a [time, value] pair"),
    (200, b'{"status":"success","data":{"result":[{"value":"1.5"}]}}', "without a [time, value] pair"),
    (200, b'{"status":"success","data":{"result":[{"values":[[1,"1"]]}]}}', "without a [time, value] pair"),
    (200, b'{"status":"success","data":{"result":["1.5"]}}', "without a [time, value] pair"),
    (200, b'{"status":"success","data":{"result":[{"value":[1,"NaN"]}]}}', "result is nan"),
    (200, b'{"status":"success","data":{"result":[{"value":[1,"+Inf"]}]}}', "result is inf"),
    (200, b"<html>gateway</html>", "not JSON"),
    (200, b"", "not JSON"),
    (200, b"\xff\xfe\x00garbage", "not JSON"),
    (200, b"[" * 100_000, "not JSON"),
    (500, b"\x00\x01 internal garbage {", "HTTP 500"),
    (500, b"[]", "HTTP 500"),
    (502, b'{"error": null}', "HTTP 502"),
]


@pytest.mark.parametrize(("status", "body", "reason"), GARBAGE, ids=[repr(b[:40]) for _s, b, _r in GARBAGE])
def test_each_malformed_answer_is_no_data_with_the_reason(canned, status: int, body: bytes, reason: str) -> None:
    result = observe(canned, status, body)
    assert isinstance(result, NoData), result
    assert reason in result.reason
    assert "latency_ms" in result.reason  # which figure was missing
    assert len(result.reason) < 400  # a hostile body is not copied whole into logs and the releases row


def test_a_well_formed_answer_still_gives_figures(canned) -> None:
    body = json.dumps({"status": "success", "data": {"resultType": "vector",
                                                     "result": [{"metric": {}, "value": [1.0, "12.5"]}]}})
    result = observe(canned, 200, body.encode())
    assert isinstance(result, Figures)
    assert result["latency_ms"] == 12.5 and result["requests"] == 12.5


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["success", "error", "1.5", "abc", "NaN", "value", "result", "data", "status"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["status", "data", "result", "value", "error", "errorType", "x"]), inner,
                      max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_parse_scalar_of_any_json_is_a_finite_number_or_query_failed(payload: object) -> None:
    try:
        value = parse_scalar(json.dumps(payload))
    except QueryFailed:
        return
    assert isinstance(value, float) and value == value and abs(value) != float("inf")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(JSON.map(lambda p: json.dumps(p).encode()), st.binary(max_size=64)))
def test_any_body_over_http_is_figures_or_no_data(canned, body: bytes) -> None:
    assert isinstance(observe(canned, 200, body), Figures | NoData)
