"""The traffic router against a real NGINX (the Debian binary) in front of three tiny HTTP backends.

NGINX's upstream block includes the file the router writes; after `set_canary_share` and the
graceful reload (SIGHUP to the master) the split NGINX really applies is counted from the answers.
One worker process, so NGINX's smooth weighted round robin gives exact counts over whole cycles.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.contracts.topology import Topology
from auto_deployment.release.router import NginxRouter, NullRouter, RouteError
from tests.fixtures.receivers import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"  # ops/system-deps.sh installs it: missing is a failure, not a skip


def _backend(name: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _workers(master: int) -> set[int]:
    try:
        return set(map(int, Path(f"/proc/{master}/task/{master}/children").read_text().split()))
    except OSError:
        return set()


def write_nginx_conf(root: Path, port: int, upstream: Path, access_log: str = "off") -> None:
    """One worker in `root`, listening on `port`, proxying to the servers the `upstream` file lists."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log info;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"  access_log {access_log}; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n"
        f"  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;\n"
        f"  upstream inference {{ include {upstream}; }}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://inference; }} }}\n"
        "}\n"
    )


class Nginx:
    def __init__(self, root: Path, topology: Topology) -> None:
        self.root = root
        self.port = free_port()
        self.router = NginxRouter(topology, root / "upstream.conf", root / "nginx.pid")
        self.router.upstream_file.write_text(topology.nginx_servers(lambda s: f"127.0.0.1:{s.port}"))
        write_nginx_conf(root, self.port, root / "upstream.conf")
        subprocess.run([NGINX, "-p", str(root), "-c", str(root / "nginx.conf")], check=True, timeout=30)
        self.master = int((root / "nginx.pid").read_text())

    def count(self, n: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        for _ in range(n):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/recommend/1", timeout=5) as response:
                seen[response.read().decode()] += 1
        return seen

    def set_share_and_wait(self, share: float) -> None:
        """`set_canary_share`, then wait until only the workers of the new configuration are left."""
        before = _workers(self.master)
        self.router.set_canary_share(share)
        deadline = time.monotonic() + 20
        while _workers(self.master) & before or not _workers(self.master):
            assert time.monotonic() < deadline, (self.root / "error.log").read_text()[-2000:]
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run([NGINX, "-p", str(self.root), "-c", str(self.root / "nginx.conf"), "-s", "stop"],
                       check=False, timeout=30)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    backends = {name: _backend(name) for name in Topology().names}
    topology = Topology().with_ports({name: server.server_address[1] for name, server in backends.items()})
    proxy = Nginx(tmp_path, topology)
    try:
        yield proxy
    finally:
        proxy.stop()
        for server in backends.values():
            server.shutdown()
            server.server_close()


def test_canary_share_is_applied_by_nginx_after_a_graceful_reload(nginx: Nginx):
    assert nginx.count(100) == {"stable_1": 40, "stable_2": 40, "canary": 20}  # the resting 2/2/1

    workers = _workers(nginx.master)
    nginx.router.set_canary_share(0.2)  # the weights NGINX already has: nothing rewritten, no reload
    time.sleep(0.3)
    assert _workers(nginx.master) == workers

    nginx.set_share_and_wait(0.5)
    assert "weight=1" in nginx.router.upstream_file.read_text()
    assert nginx.count(100) == {"stable_1": 25, "stable_2": 25, "canary": 50}

    nginx.set_share_and_wait(0.05)
    assert nginx.count(200) == {"stable_1": 95, "stable_2": 95, "canary": 10}

    nginx.set_share_and_wait(0)  # weight 0 is written `down`: no request reaches the canary
    assert "down" in nginx.router.upstream_file.read_text()
    assert nginx.count(50) == {"stable_1": 25, "stable_2": 25}


def test_router_without_a_running_nginx_says_so(tmp_path: Path):
    router = NginxRouter(Topology(), tmp_path / "upstream.conf", tmp_path / "nginx.pid")
    with pytest.raises(RouteError, match="no NGINX master pid"):
        router.set_canary_share(0.2)
    assert "weight=2" in (tmp_path / "upstream.conf").read_text()  # written for the next (re)start
    NullRouter().set_canary_share(0.2)  # the default until nginx.conf includes the upstream file
