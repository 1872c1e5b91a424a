"""Compose's way of moving traffic: the router's reload handshake with NGINX's container script, both for real.

In compose the release runs in the pipeline's container and cannot signal NGINX's, so `NginxRouter.compose`
writes the weights and a reload token, and ``docker/nginx-run.sh`` (NGINX's container command) checks the files,
reloads and answers. Here the very script runs the Debian NGINX binary natively in a temporary prefix, in front of
three tiny backends; only the paths differ from the container (the script's settings).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.contracts.topology import Topology, reload_applied_path, reload_request_path
from app.settings import ROOT
from auto_deployment.release.router import HandshakeReload, NginxRouter, RouteError
from tests.fixtures.receivers import free_port
from tests.release.test_router import NGINX, Nginx, _backend, _workers, write_nginx_conf

SCRIPT = ROOT / "docker" / "nginx-run.sh"


class ScriptNginx(Nginx):
    """`Nginx` of test_router, but started by docker/nginx-run.sh and routed by handshake, as in compose."""

    def __init__(self, root: Path, topology: Topology, edge_log_max_mb: int = 100, pending: str = "") -> None:
        self.root = root
        self.port = free_port()
        (root / "nginx").mkdir()
        if pending:  # a reload request left by a router before NGINX (re)started
            reload_request_path(root).write_text(pending + "\n")
        self.router = NginxRouter(
            topology, root / "nginx" / "upstream.conf",
            HandshakeReload(reload_request_path(root), reload_applied_path(root), timeout_s=20),
            address=lambda s: f"127.0.0.1:{s.port}")
        self.router.upstream_file.write_text(topology.nginx_servers(lambda s: f"127.0.0.1:{s.port}"))
        self.edge_log = root / "edge" / "access.log"
        write_nginx_conf(root, self.port, root / "nginx" / "upstream.conf", access_log=str(self.edge_log))
        env = {**os.environ, "NGINX_BIN": NGINX, "NGINX_CONF": str(root / "nginx.conf"), "NGINX_PREFIX": str(root),
               "NGINX_RELOAD_REQUEST": str(reload_request_path(root)),
               "NGINX_RELOAD_APPLIED": str(reload_applied_path(root)), "NGINX_RELOAD_POLL_S": "0.1",
               "EDGE_LOG": str(self.edge_log), "EDGE_LOG_MAX_MB": str(edge_log_max_mb)}
        self.stderr = open(root / "nginx-run.err", "w")  # noqa: SIM115 (closed in stop)
        # as a container's PID 1 starts: default signal dispositions, even when this run inherited an ignored SIGHUP
        # (nohup): a shell cannot trap a signal ignored on entry
        self.script = subprocess.Popen(["sh", str(SCRIPT)], env=env, stderr=self.stderr,
                                       preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
        deadline = time.monotonic() + 20
        while not (root / "nginx.pid").exists() or not _workers(int((root / "nginx.pid").read_text() or 0)):
            assert self.script.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.05)
        self.master = int((root / "nginx.pid").read_text())

    def log(self) -> str:
        return (self.root / "nginx-run.err").read_text()

    def stop(self) -> None:
        if self.script.poll() is None:
            self.script.send_signal(signal.SIGTERM)
            try:
                self.script.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.script.kill()
        super().stop()  # in case the script left NGINX behind (a failed test)
        self.stderr.close()


@contextlib.contextmanager
def _running(tmp_path: Path, **kwargs: object) -> Iterator[ScriptNginx]:
    """Three backends and the script's NGINX in front of them; everything stopped afterwards."""
    backends = {name: _backend(name) for name in Topology().names}
    topology = Topology().with_ports({name: server.server_address[1] for name, server in backends.items()})
    proxy = None
    try:
        proxy = ScriptNginx(tmp_path, topology, **kwargs)
        yield proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for server in backends.values():
            server.shutdown()
            server.server_close()


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[ScriptNginx]:
    with _running(tmp_path) as proxy:
        yield proxy


def test_compose_router_moves_the_weights_through_the_reload_handshake(nginx: ScriptNginx):
    assert nginx.count(100) == {"stable_1": 40, "stable_2": 40, "canary": 20}

    nginx.set_share_and_wait(0.5)  # returns once the script answered the router's token
    token, status = reload_applied_path(nginx.root).read_text().split()
    assert status == "ok" and token == reload_request_path(nginx.root).read_text().strip()
    assert nginx.count(100) == {"stable_1": 25, "stable_2": 25, "canary": 50}

    nginx.set_share_and_wait(0)
    assert nginx.count(50) == {"stable_1": 25, "stable_2": 25}
    assert "reloaded for" in nginx.log()


def test_files_nginx_refuses_are_an_error_and_the_previous_weights_keep_serving(nginx: ScriptNginx):
    resting = nginx.router.upstream_file.read_text()
    address = nginx.router.address
    nginx.router.address = lambda s: f"127.0.0.1:{s.port}x"  # a server line nginx -t rejects
    master = nginx.master
    with pytest.raises(RouteError, match="NGINX did not apply the new configuration"):
        nginx.router.set_canary_share(0.5, shadow=True)
    assert "invalid" in reload_applied_path(nginx.root).read_text()
    assert nginx.master == master and nginx.script.poll() is None
    assert nginx.count(100) == {"stable_1": 40, "stable_2": 40, "canary": 20}  # still the resting split
    # the files say what NGINX serves again: a restart reads valid files, and a retry really reloads
    assert nginx.router.upstream_file.read_text() == resting and not nginx.router.shadow_file.exists()
    nginx.router.address = address
    nginx.set_share_and_wait(0.5)
    assert nginx.count(100) == {"stable_1": 25, "stable_2": 25, "canary": 50}


def test_no_answer_from_nginx_is_an_error_naming_the_script(tmp_path: Path):
    reload = HandshakeReload(tmp_path / "reload.request", tmp_path / "reload.applied", timeout_s=0.3)
    with pytest.raises(RouteError, match=r"did not confirm the reload within 0\.3 s.*nginx-run\.sh"):
        reload()


def test_a_request_written_before_nginx_started_is_answered_at_start(tmp_path: Path):
    """A release that wrote its files while NGINX's container restarted: the fresh NGINX read them, so the
    waiting router gets its answer without a second reload."""
    with _running(tmp_path, pending="early-token") as proxy:
        deadline = time.monotonic() + 10
        while not reload_applied_path(tmp_path).exists():  # answered once NGINX's workers run
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.05)
        assert reload_applied_path(tmp_path).read_text() == "early-token ok\n"
        time.sleep(0.5)  # five polls: the answered token is not reloaded again
        assert "reloaded for" not in proxy.log()


def test_the_edge_log_is_rotated_above_its_limit_and_nginx_writes_a_fresh_one(tmp_path: Path):
    with _running(tmp_path, edge_log_max_mb=1) as proxy:
        proxy.count(3)
        with open(proxy.edge_log, "a") as fh:  # as if a day of traffic had been logged
            fh.write("x" * 1_200_000 + "\n")
        deadline = time.monotonic() + 20
        rotated = proxy.edge_log.with_name("access.log.1")
        while not rotated.exists():
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.1)
        proxy.count(5)
        deadline = time.monotonic() + 10
        while not proxy.edge_log.exists() or proxy.edge_log.read_text().count("GET /recommend/1") < 5:
            assert time.monotonic() < deadline, proxy.log()
            time.sleep(0.1)
        assert rotated.stat().st_size > 1_200_000 and proxy.edge_log.stat().st_size < 10_000
        assert "rotated" in proxy.log()


def test_sigterm_stops_nginx_gracefully_and_the_script_exits_0(nginx: ScriptNginx):
    nginx.script.send_signal(signal.SIGTERM)
    assert nginx.script.wait(timeout=20) == 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{nginx.master}").exists():
        assert time.monotonic() < deadline, "NGINX's master outlived its container script"
        time.sleep(0.05)


def test_sighup_to_the_script_is_nginx_reloading_not_the_container_dying(nginx: ScriptNginx):
    """docker/ci-deploy.sh sends `compose kill -s HUP nginx` after recreating slots: PID 1 is the script."""
    before = _workers(nginx.master)
    nginx.router.upstream_file.write_text(nginx.router.topology.with_canary_share(0.5).nginx_servers(
        nginx.router.address))
    nginx.script.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while _workers(nginx.master) & before or not _workers(nginx.master):
        assert time.monotonic() < deadline and nginx.script.poll() is None, nginx.log()
        time.sleep(0.05)
    assert nginx.script.poll() is None
    assert nginx.count(100) == {"stable_1": 25, "stable_2": 25, "canary": 50}

