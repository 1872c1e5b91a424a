"""The HTTP API of an inference server (design section 2), over real HTTP to a Gunicorn subprocess."""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import requests

from app.contracts import bundle
from app.model import Recommender
from simulator.world import World

SLOT = "canary"
# The world bundle 1 of tests/fixtures/models.py is trained on (its metadata says world-seed-11).
WORLD = {"seed": 11, "n_users": 300, "n_movies": 400}
N_RATINGS = 20_000


@pytest.fixture(scope="module")
def server(start_server_module, models_root):
    return start_server_module(slot=SLOT, models_root=models_root, version=1, workers=2)


@pytest.fixture(scope="module")
def training(models_root) -> tuple[World, pd.DataFrame]:
    """The world and ratings bundle 1 was trained on, regenerated from its seed."""
    meta = json.loads((models_root / "1" / "metadata.json").read_text())
    assert meta["data_checksum"] == f"world-seed-{WORLD['seed']}", "tests/fixtures/models.py changed its world"
    world = World.generate(**WORLD)
    ratings, _ = world.history(n_ratings=N_RATINGS, seed=WORLD["seed"])
    return world, ratings


def raw_get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """GET exactly `path` (no client-side normalisation of '..', '%2e' or unicode)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def ids_of(body: str) -> list[str]:
    return body.split(",") if body else []


# ---------------------------------------------------------------------- /recommend/<userid>
def test_known_users_get_exactly_20_distinct_unrated_movies_as_one_plain_line(server, training):
    world, ratings = training
    catalogue = set(world.movies["movie_id"])
    rated = ratings.groupby("user_id")["movie_id"].apply(set)
    for user in world.users["user_id"].iloc[::10]:
        r = server.get(f"/recommend/{user}")
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        assert " " not in r.text and "\n" not in r.text
        movies = ids_of(r.text)
        assert len(movies) == 20 and len(set(movies)) == 20
        assert set(movies) <= catalogue
        assert not set(movies) & rated.get(int(user), set()), f"user {user} was recommended a movie they rated"


def test_minors_never_get_an_adult_movie_over_http(server, training):
    world, _ = training
    adult = set(world.movies.loc[world.movies["adult"], "movie_id"])
    assert adult, "the test world has no adult title: the filter would be untested"
    minors = world.users.loc[world.users["age"] < 18, "user_id"].tolist()
    grown = world.users.loc[world.users["age"] >= 18, "user_id"].tolist()
    assert minors
    for user in minors:
        assert not set(ids_of(server.get(f"/recommend/{user}").text)) & adult, f"minor {user} got an adult movie"
    # the filter is what keeps them out: adults do get adult titles from the same model
    assert any(set(ids_of(server.get(f"/recommend/{u}").text)) & adult for u in grown)


def test_unknown_user_gets_the_cold_start_list_of_20(server, training):
    world, _ = training
    unknown = [10**12, 0, 999_999_999_999_999_999]
    known = set(world.users["user_id"])
    adult = set(world.movies.loc[world.movies["adult"], "movie_id"])
    lists = []
    for user in unknown:
        assert user not in known
        r = server.get(f"/recommend/{user}")
        assert r.status_code == 200
        movies = ids_of(r.text)
        assert len(movies) == 20 and len(set(movies)) == 20
        assert not set(movies) & adult, "nothing known of the user: treated as a minor"
        lists.append(movies)
    assert all(m == lists[0] for m in lists), "users we know nothing about share one fallback list"


def test_leading_zeros_name_the_same_user(server):
    assert server.get("/recommend/0007").text == server.get("/recommend/7").text


def test_headers_carry_model_version_slot_and_a_request_id(server):
    r = server.get("/recommend/5")
    assert r.headers["X-Model-Version"] == "1"
    assert r.headers["X-Slot"] == "canary"
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    assert r.headers["X-Request-Id"] != server.get("/recommend/5").headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-DEF-12345678", True),
        ("0123456789abcdef0123456789abcdef", True),
        ("short", False),  # under 8 characters
        ("x" * 65, False),
        ("abc_def_12345678", False),  # '_' is not in the token alphabet
        ("abc def 12345678", False),
        ("<script>alert(1)</script>", False),
    ],
)
def test_incoming_request_id_is_kept_only_when_it_is_a_sane_token(server, incoming, kept):
    r = server.get("/recommend/5", headers={"X-Request-Id": incoming})
    if kept:
        assert r.headers["X-Request-Id"] == incoming
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])


BAD_IDS = [
    "abc",
    "12a",
    "-1",
    "+1",
    "1.0",
    "1e3",
    "0x1f",
    "1" * 19,  # overflow: 19 digits
    "9" * 200,
    "%D9%A3",  # ARABIC-INDIC DIGIT THREE
    "%EF%BC%91",  # FULLWIDTH DIGIT ONE
    "%C2%B2",  # SUPERSCRIPT TWO
    "%20",
    "%201",
    "1%20",
    "1%0A",
    "%00",
    "%FF",
    "1/2",
    "../1",
    "..%2F1",
    "%2e%2e",
    "%2e%2e%2f1",
    "/1",
    "1;2",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_malformed_user_id_is_a_one_line_400_never_a_500(server, bad):
    status, headers, body = raw_get(server, f"/recommend/{bad}")
    assert status == 400, (bad, status, body)
    assert headers["content-type"].startswith("text/plain")
    assert body.endswith("\n") and "\n" not in body[:-1] and body.strip()
    assert headers["x-slot"] == "canary"


@pytest.mark.parametrize("path", ["/recommend/", "/recommend"])
def test_empty_user_id_is_a_400(server, path):
    status, _, body = raw_get(server, path)
    assert status == 400 and "empty" in body


def test_unicode_digits_sent_unencoded_are_a_400(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall("GET /recommend/\u0663\u0664 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400")


def test_unknown_routes_and_methods_answer_plain_4xx(server):
    status, headers, _ = raw_get(server, "/nope")
    assert status == 404 and headers["content-type"].startswith("text/plain")
    r = requests.post(server.url + "/recommend/1", timeout=10)
    assert r.status_code == 405


# ---------------------------------------------------------------------- health, ready, version
def test_health_answers_ok(server):
    r = server.get("/health")
    assert r.status_code == 200 and r.text.strip() == "ok"


def test_ready_answers_200_when_a_model_is_loaded(server):
    r = server.get("/ready")
    assert r.status_code == 200 and "version=1" in r.text


def test_version_describes_the_bundle_being_served(server, models_root):
    meta = json.loads((models_root / "1" / "metadata.json").read_text())
    r = server.get("/version")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    v = r.json()
    assert v["version"] == str(meta["version"])
    assert v["slot"] == "canary" and v["role"] == "canary"
    assert v["data_checksum"] == meta["data_checksum"]
    assert v["trained_at"] == meta["trained_at"]
    assert v["rmse"] == meta["metrics"]["rmse"]
    assert v["code_commit"] == meta["code_commit"]
    assert v["algorithm"] == meta["algorithm"]


# ---------------------------------------------------------------------- metrics
def scrape(server) -> dict[str, float]:
    """`name{labels}` → value of every sample on /metrics."""
    samples = {}
    for line in server.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, v in samples.items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', rest))
        if all(have.get(k) == want for k, want in labels.items()):
            total += v
    return total


def test_metrics_count_every_answer_across_two_workers(server):
    before = scrape(server)
    users = [*range(1, 61), *range(10**9, 10**9 + 20)]  # 60 known, 20 unknown (cold)
    with ThreadPoolExecutor(6) as pool:  # concurrent fresh connections: both workers serve
        codes = list(pool.map(lambda u: requests.get(f"{server.url}/recommend/{u}", timeout=10).status_code, users))
    bad = [raw_get(server, "/recommend/abc")[0] for _ in range(3)]
    assert set(codes) == {200} and set(bad) == {400}
    after = scrape(server)
    served_by = set(re.findall(r'"GET /recommend/1000000\d+ HTTP/1.1" 200 .* worker=<(\d+)>', server.log()))
    assert len(served_by) == 2, "both workers answered: the counts below are summed over processes"

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    labels = {"slot": "canary", "version": "1"}
    assert delta("recommend_requests_total", status="200", **labels) == len(users)
    assert delta("recommend_requests_total", status="400", **labels) == 3
    assert delta("recommend_latency_seconds_count", status="200", **labels) == len(users)
    assert delta("recommend_latency_seconds_sum", status="200", **labels) > 0
    assert delta("recommend_cold_start_total", **labels) == 20
    rule = "/recommend/<rawtail:raw>"
    assert delta("flask_http_request_duration_seconds_count", url_rule=rule, **labels) == len(users) + 3
    assert value(after, "model_info", **labels) == 1
    for outcome in ("written", "spooled", "dropped"):
        assert f'provenance_rows_total{{outcome="{outcome}",slot="canary"}}' in after
    # fine-grained buckets from 1 ms to 1 s: cumulative (never fewer below a larger bound), and every
    # one of these fast requests falls in the 1 s bucket
    bounds = ("0.001", "0.005", "0.01", "0.1", "0.5", "1.0")
    for le in bounds:
        assert f'le="{le}"' in " ".join(k for k in after if k.startswith("recommend_latency_seconds_bucket"))
    counts = [delta("recommend_latency_seconds_bucket", le=le, status="200", **labels) for le in bounds]
    assert counts == sorted(counts)
    assert counts[-1] == len(users)
    # user ids never become label values
    assert not any("/recommend/1" in key for key in after)


# ---------------------------------------------------------------------- a bundle given directly
def test_model_dir_serves_that_bundle_and_reports_its_version(start_server, models_root):
    s = start_server(slot="stable_2", model_dir=models_root / "2", version=None, workers=1)
    r = s.get("/recommend/3")
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "2" and r.headers["X-Slot"] == "stable"
    version = s.get("/version").json()
    assert version["version"] == "2" and version["model_checksum"] == bundle.checksum(models_root / "2")
    # versions and checksums, never where the bundle lives on disk (issue 12, finding 4)
    assert "bundle" not in version and str(models_root) not in s.get("/version").text


# ---------------------------------------------------------------------- a model that fails
def test_model_error_on_one_user_is_logged_and_answered_with_the_fallback_list(start_server, models_root, tmp_path):
    # a real bundle with checksums intact whose neighbour table is broken for one user only; saved
    # without materialised lists (as bundles from before them), so requests take the computed path
    model = dataclasses.replace(Recommender.load(models_root / "1"), top_lists=None)
    broken = int(model.user_ids[5])
    model.rank_nb_idx = model.rank_nb_idx.copy()
    model.rank_nb_idx[5, 0] = 10**9  # an index past the end: recommend() raises IndexError
    model.metadata["version"] = 4
    model.save(tmp_path / "models" / "4")
    s = start_server(models_root=tmp_path / "models", version=4, workers=1)

    r = s.get(f"/recommend/{broken}")
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "4"
    movies = ids_of(r.text)
    assert len(movies) == 20 and movies == ids_of(s.get("/recommend/123456789").text), "the unknown-user list"
    s.wait_log(rf"model failed, answering the fallback list .*request_id={r.headers['X-Request-Id']}")
    assert s.get(f"/recommend/{int(model.user_ids[6])}").status_code == 200


# ---------------------------------------------------------------------- fault injection
def test_fault_latency_from_the_environment_delays_every_recommend(start_server, models_root):
    s = start_server(models_root=models_root, workers=1, extra_env={"MOVIEREC_FAULT_LATENCY_MS": "250"})
    for _ in range(3):
        t0 = time.perf_counter()
        r = s.get("/recommend/5")
        assert r.status_code == 200 and time.perf_counter() - t0 >= 0.25
    samples = scrape(s)
    total = value(samples, "recommend_latency_seconds_sum", slot="stable_1", status="200")
    count = value(samples, "recommend_latency_seconds_count", slot="stable_1", status="200")
    assert count == 3 and total / count >= 0.25, "the injected delay is what the release controller measures"


def test_fault_error_ratio_answers_that_share_with_503(start_server, models_root):
    s = start_server(models_root=models_root, workers=2, extra_env={"MOVIEREC_FAULT_ERROR_RATIO": "0.5"})
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda u: requests.get(f"{s.url}/recommend/{u}", timeout=10), range(200)))
    failed = [r for r in answers if r.status_code == 503]
    assert {r.status_code for r in answers} == {200, 503}
    assert 60 <= len(failed) <= 140  # binomial(200, 0.5): ±5.6 sd
    assert all(r.text.count("\n") == 1 and "injected" in r.text for r in failed)
    samples = scrape(s)
    assert value(samples, "recommend_requests_total", slot="stable_1", status="503") == len(failed)


def test_fault_file_changes_faults_live_and_removing_it_restores_the_environment(start_server, models_root):
    s = start_server(models_root=models_root, workers=2)
    assert s.get("/recommend/5").status_code == 200
    s.set_faults(error_ratio=1.0)
    s.wait_log(r"fault injection changed .*error_ratio=1\b", count=2)
    assert {s.get(f"/recommend/{u}").status_code for u in range(20)} == {503}
    s.set_faults(latency_ms=200, error_ratio=0.0)
    s.wait_log(r"fault injection changed .*latency_ms=200", count=2)
    t0 = time.perf_counter()
    assert s.get("/recommend/5").status_code == 200 and time.perf_counter() - t0 >= 0.2
    s.clear_faults()
    s.wait_log(r"fault injection changed .*source=env", count=2)
    assert {s.get(f"/recommend/{u}").status_code for u in range(20)} == {200}
