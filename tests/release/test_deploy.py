"""Slot deployers against a real inference server (Gunicorn, two workers, bundles 1 and 2)."""

from __future__ import annotations

import json
import stat
import time
import urllib.request
from pathlib import Path

import pytest

from app.contracts import pointer
from app.contracts.topology import Topology
from auto_deployment.release.deploy import ComposeDeployer, DeployError, NativeDeployer, parse_slot_urls, slot_urls
from tests.fixtures.receivers import free_port


def _urls(server) -> dict[str, str]:
    """The server under test plays the canary; the other slots are closed ports."""
    dead = f"http://127.0.0.1:{free_port()}"
    return {"stable_1": dead, "stable_2": dead, "canary": server.url}


def _fresh_versions(url: str, n: int) -> set[str]:
    """`n` /version answers, each on a new connection (so any worker may answer)."""
    seen = set()
    for _ in range(n):
        request = urllib.request.Request(f"{url}/version", headers={"Connection": "close"})
        with urllib.request.urlopen(request, timeout=5) as response:
            seen.add(str(json.load(response)["version"]))
    return seen


@pytest.fixture
def canary(start_server, models_root):
    return start_server(slot="canary", models_root=models_root, version=1)


def test_deploy_returns_once_every_worker_serves_the_new_version(canary):
    deployer = NativeDeployer(canary.run_dir, _urls(canary), timeout_s=60, poll_s=0.1)
    assert deployer.serving("canary") == 1 and deployer.worker_versions("canary") == {1}

    deployer.deploy("canary", 2)

    assert pointer.read_slot(canary.run_dir, "canary") == 2 == deployer.current("canary")
    assert deployer.worker_versions("canary") == {2}  # the old version's gauge is down in every live worker
    assert _fresh_versions(canary.url, 20) == {"2"}
    assert deployer.serving("canary") == 2


def test_deploy_of_a_version_without_bundle_times_out_and_the_old_one_keeps_serving(canary):
    deployer = NativeDeployer(canary.run_dir, _urls(canary), timeout_s=2, poll_s=0.1)

    with pytest.raises(DeployError, match=r"slot canary did not serve version 9 within 2s \(last answer: version 1\)"):
        deployer.deploy("canary", 9)

    assert _fresh_versions(canary.url, 5) == {"1"}
    deployer.deploy("canary", 1)  # putting the pointer back is a deploy like any other


def test_unreachable_slot_is_not_serving_and_deploy_says_so(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    deployer = NativeDeployer(tmp_path, {"stable_1": dead, "stable_2": dead, "canary": dead}, timeout_s=0.5)
    assert deployer.serving("stable_1") is None
    with pytest.raises(DeployError, match="not ready/unreachable"):
        deployer.deploy("stable_1", 2)
    assert deployer.current("stable_1") == 2  # the pointer was written: the slot picks it up when it comes back


def test_compose_deployer_sends_hup_to_the_slot_service_and_new_workers_serve(canary, tmp_path):
    # stand-in for `docker-compose -f compose.yml` (no Docker engine here): `kill -s HUP <service>`
    # is mapped onto the real Gunicorn master of the service, which forks fresh workers.
    fake_compose = tmp_path / "compose"
    fake_compose.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n[ "$1" = kill ] && kill -s "$3" {canary.pid}\n')
    fake_compose.chmod(fake_compose.stat().st_mode | stat.S_IXUSR)
    workers_before = set(canary.worker_pids())
    deployer = ComposeDeployer(
        canary.run_dir, _urls(canary), compose_cmd=[str(fake_compose)], hup=True, timeout_s=60, poll_s=0.1
    )

    deployer.deploy("canary", 2)

    assert (tmp_path / "calls").read_text().split() == ["kill", "-s", "HUP", "inference_canary"]
    assert _fresh_versions(canary.url, 10) == {"2"}
    canary.wait_log(r"Handling signal: hup", timeout=10)
    deadline = time.monotonic() + 30
    while set(canary.worker_pids()) & workers_before:  # the old workers finish and leave
        assert time.monotonic() < deadline, "old workers still alive after SIGHUP"
        time.sleep(0.2)
    assert canary.worker_pids() and _fresh_versions(canary.url, 10) == {"2"}


def test_compose_deployer_survives_a_failing_hup_command(canary):
    deployer = ComposeDeployer(canary.run_dir, _urls(canary), compose_cmd=["false"], hup=True, timeout_s=60)
    deployer.deploy("canary", 2)
    assert deployer.serving("canary") == 2


def test_slot_urls_are_parsed_and_unknown_slots_refused():
    topology = Topology()
    assert parse_slot_urls("stable_1=http://a:5001/, canary=http://c:5003", topology) == {
        "stable_1": "http://a:5001",
        "canary": "http://c:5003",
    }
    assert parse_slot_urls("", topology) == {}
    with pytest.raises(ValueError, match="SLOT=URL"):
        parse_slot_urls("primary=http://x", topology)
    with pytest.raises(ValueError, match="SLOT=URL"):
        parse_slot_urls("canary", topology)


def test_each_slot_url_defaults_to_its_topology_port_on_loopback():
    moved = Topology().with_ports({"canary": 6003})
    assert slot_urls(moved, "stable_2=http://b:7002") == {
        "stable_1": "http://127.0.0.1:5001", "stable_2": "http://b:7002", "canary": "http://127.0.0.1:6003"}
    with pytest.raises(ValueError, match="no URL for slot"):
        NativeDeployer(Path("/nonexistent"), {"canary": "http://c"}, topology=moved)
