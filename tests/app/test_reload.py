"""Changing the served model version under load: pointer writes, SIGHUP, broken bundles, no bundle."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from app.model import Recommender
from tests.fixtures.server import Answer, Load

# Generous behavioural bound: a reload must not stall requests (the real client gives up at 800 ms).
SLOW_S = 0.5


def add_version(root: Path, source: str, version: int) -> Path:
    """Save bundle `source` again as a valid `version` (its metadata says so)."""
    model = Recommender.load(root / source)
    model.metadata["version"] = version
    return model.save(root / str(version))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if not a.ok]


def versions_between(answers: list[Answer], start: float, end: float) -> set[str]:
    return {a.version for a in answers if start <= a.started and a.started + a.seconds <= end}


def test_pointer_moves_1_2_1_under_load_without_a_failed_or_slow_request(start_server, models_root):
    s = start_server(models_root=models_root, workers=2)
    with Load(s.url, clients=4) as load:
        time.sleep(0.5)
        t_write_2 = time.monotonic()
        mark = s.log_size()
        s.set_pointer(2)
        s.wait_workers_on(2, since=mark)
        t_on_2 = time.monotonic()
        on_2 = probe(s)
        time.sleep(0.7)
        t_write_1 = time.monotonic()
        mark = s.log_size()
        s.set_pointer(1)
        s.wait_workers_on(1, since=mark)
        t_on_1 = time.monotonic()
        on_1 = probe(s)
        time.sleep(0.7)
    answers = load.answers
    assert len(answers) > 100
    assert failures(answers) == [], failures(answers)[:5]
    assert max(a.seconds for a in answers) < SLOW_S
    assert versions_between(answers, 0, t_write_2) == {"1"}
    assert versions_between(answers, t_on_2, t_write_1) == {"2"}
    assert versions_between(answers, t_on_1, float("inf")) == {"1"}
    # the new version really answers differently, not just a different header: the same users asked while each
    # version served (asked explicitly, so a loaded machine's few load answers cannot leave no user in common)
    assert {version for version, _ in on_2.values()} == {"2"} and {version for version, _ in on_1.values()} == {"1"}
    assert any(on_2[user][1] != on_1[user][1] for user in on_2)


def probe(s, users: range = range(1, 41)) -> dict[int, tuple[str, str]]:
    """Version header and body of each user's answer, asked one after another."""
    answers = {}
    for user in users:
        response = s.get(f"/recommend/{user}")
        answers[user] = (response.headers["X-Model-Version"], response.text)
    return answers


def test_pointer_to_missing_bundle_keeps_serving_and_picks_it_up_when_it_appears(start_server, private_root):
    s = start_server(models_root=private_root, workers=2)
    mark = s.log_size()
    s.set_pointer(7)
    lines = s.wait_log(r"model reload refused.*serving=1 bundle=\S+/7 reason=.*does not exist", 2, since=mark)
    assert len(lines) == 2  # one line per worker, not one per poll
    assert s.get("/ready").status_code == 200
    assert {s.get(f"/recommend/{u}").headers["X-Model-Version"] for u in range(1, 20)} == {"1"}
    time.sleep(1.0)  # several polls: the refusal is not repeated while nothing changes
    assert len(s.wait_log(r"model reload refused", 1, since=mark)) == 2
    mark = s.log_size()
    add_version(private_root, "2", 7)
    s.wait_workers_on(7, since=mark)
    assert s.get("/recommend/5").headers["X-Model-Version"] == "7"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: flip_byte(d / "similarity.npy"), "checksum mismatch on similarity.npy"),
        (lambda d: flip_byte(d / "arrays.npz"), "checksum mismatch on arrays.npz"),
        (lambda d: (d / "ids.json").unlink(), "partial: ids.json missing"),
        (lambda d: (d / "checksums.json").write_text("{not json"), "checksums.json is corrupt"),
    ],
    ids=["flipped-byte-similarity", "flipped-byte-arrays", "missing-file", "corrupt-checksums"],
)
def test_pointer_to_corrupt_bundle_keeps_the_old_version_and_logs_why(start_server, private_root, damage, why):
    bundle = add_version(private_root, "2", 3)
    damage(bundle)
    s = start_server(models_root=private_root, workers=2)
    with Load(s.url, clients=2) as load:
        mark = s.log_size()
        s.set_pointer(3)
        s.wait_log(r"model reload refused.*serving=1 .*" + why.replace(".", r"\."), 2, since=mark)
        time.sleep(0.3)
        ready = s.get("/ready")
    assert ready.status_code == 200 and "version=1" in ready.text
    assert failures(load.answers) == [] and {a.version for a in load.answers} == {"1"}


def test_bundle_recording_another_version_is_refused(start_server, private_root):
    shutil.copytree(private_root / "2", private_root / "5")  # a misplaced copy: it says version 2
    s = start_server(models_root=private_root, workers=1)
    mark = s.log_size()
    s.set_pointer(5)
    s.wait_log(r"model reload refused.*records version 2, the pointer names 5", 1, since=mark)
    assert s.get("/recommend/5").headers["X-Model-Version"] == "1"


def test_pointer_holding_garbage_keeps_serving(start_server, models_root):
    s = start_server(models_root=models_root, workers=1)
    mark = s.log_size()
    s.pointer.write_text("two\n")
    s.wait_log(r"model reload refused.*not a version number", 1, since=mark)
    assert s.get("/ready").status_code == 200
    assert s.get("/recommend/5").headers["X-Model-Version"] == "1"


def test_server_without_bundle_starts_unready_and_becomes_ready_when_a_pointer_appears(start_server, private_root):
    s = start_server(models_root=private_root, version=None, workers=2, wait="health")
    assert s.get("/health").status_code == 200
    ready = s.get("/ready")
    assert ready.status_code == 503 and "does not exist" in ready.text and ready.text.count("\n") == 1
    r = s.get("/recommend/5")
    assert r.status_code == 503 and r.text.count("\n") == 1 and "X-Model-Version" not in r.headers
    assert s.get("/version").status_code == 503
    bad = s.get("/recommend/x5")
    assert bad.status_code == 400, "a malformed id is still the client's error"
    mark = s.log_size()
    s.set_pointer(2)
    s.wait_workers_on(2, since=mark)
    s.wait_for("ready", timeout=10)
    r = s.get("/recommend/5")
    assert r.status_code == 200 and r.headers["X-Model-Version"] == "2"


def test_sighup_with_a_changed_pointer_serves_the_new_version_without_a_failed_request(start_server, models_root):
    # The poll thread is made too slow to notice: only the SIGHUP can move this slot.
    s = start_server(models_root=models_root, workers=2, extra_env={"MOVIEREC_RELOAD_POLL_S": "3600"})
    old_workers = set(s.worker_pids())
    assert len(old_workers) == 2
    with Load(s.url, clients=4) as load:
        s.set_pointer(2)
        time.sleep(0.6)
        assert {a.version for a in load.snapshot()} == {"1"}, "the pointer alone did not move it"
        mark = s.log_size()
        s.hup()
        s.wait_workers_on(2, since=mark)
        deadline = time.monotonic() + 20
        while set(s.worker_pids()) & old_workers or len(s.worker_pids()) != 2:
            assert time.monotonic() < deadline, "old workers did not exit"
            time.sleep(0.1)
        t_new_only = time.monotonic()
        time.sleep(0.7)
    answers = load.answers
    assert failures(answers) == [], failures(answers)[:5]
    assert versions_between(answers, t_new_only, float("inf")) == {"2"}
    print(f"SIGHUP: {len(answers)} requests, slowest {max(a.seconds for a in answers) * 1000:.0f} ms")


def test_workers_booting_while_the_pointer_is_broken_serve_the_last_good_version(start_server, private_root):
    s = start_server(models_root=private_root, workers=2, extra_env={"MOVIEREC_RELOAD_POLL_S": "3600"})
    s.set_pointer(9)  # no such bundle
    mark = s.log_size()
    with Load(s.url, clients=2) as load:
        s.hup()  # new workers boot with the pointer naming 9
        s.wait_log(r"serving the last good version .*version=1 pointer_names=9", 2, since=mark)
        s.wait_log(r"worker ready pid=\d+ slot=stable_1 version=1", 2, since=mark)
        time.sleep(0.3)
    assert failures(load.answers) == [] and {a.version for a in load.answers} == {"1"}
    assert s.get("/ready").status_code == 200
