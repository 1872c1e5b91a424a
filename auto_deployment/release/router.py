"""Traffic between the slots: the share of requests NGINX sends to the canary (design section 6).

`NginxRouter.set_canary_share(share)` re-renders NGINX's upstream ``server`` lines from the topology
(`Topology.with_canary_share`, `write_nginx_upstream`) into the file nginx.conf includes in its
upstream block, then reloads NGINX gracefully: SIGHUP to the master (pid file), which starts new
workers on the new weights while the old ones finish their requests, so no request is dropped.

A share that gives the weights NGINX already has rewrites nothing and reloads nothing, so the
controller's one use today — putting the resting split back after a release — costs no reload when
nothing moved. The wiring picks `NginxRouter` natively when ``<run>/nginx/nginx.conf`` includes the
upstream file, and `NullRouter` (which only logs) otherwise, e.g. in compose, where NGINX runs in its
own container. Progressive steps (issue 11) are `set_canary_share` calls from the controller.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from app.contracts.topology import Slot, Topology, loopback_address, upstream_path, write_nginx_upstream
from app.logs import kv

log = logging.getLogger(__name__)


class RouteError(RuntimeError):
    """The new weights could not be applied (NGINX not running, unreadable pid file)."""


class Router(Protocol):
    """What the release controller needs to move traffic."""

    def set_canary_share(self, share: float | Fraction) -> None:
        """Send `share` (0..1) of requests to the canary, the rest evenly to the stable replicas."""
        ...


class NullRouter:
    """Leaves traffic as NGINX has it (its static 2/2/1 split); says what it would have done."""

    def set_canary_share(self, share: float | Fraction) -> None:
        log.info("router: traffic left as configured", extra=kv(canary_share=float(share)))


class NginxRouter:
    """Writes the upstream include and SIGHUPs the NGINX master named by its pid file."""

    def __init__(self, topology: Topology, upstream_file: Path, pid_file: Path,
                 address: Callable[[Slot], str] = loopback_address) -> None:
        self.topology = topology
        self.upstream_file = Path(upstream_file)
        self.pid_file = Path(pid_file)
        self.address = address

    @classmethod
    def native(cls, topology: Topology, run_dir: Path) -> NginxRouter:
        """The native stack's NGINX: ``<run>/nginx/upstream.conf`` and ``<run>/nginx/nginx.pid``."""
        return cls(topology, upstream_path(run_dir), Path(run_dir) / "nginx" / "nginx.pid")

    @classmethod
    def includes_upstream(cls, run_dir: Path) -> bool:
        """Whether the native stack's nginx.conf takes its upstream servers from the router's file."""
        conf = Path(run_dir) / "nginx" / "nginx.conf"
        try:
            return "upstream.conf" in conf.read_text()
        except OSError:
            return False

    def set_canary_share(self, share: float | Fraction) -> None:
        weighted = self.topology.with_canary_share(share)
        try:
            unchanged = self.upstream_file.read_text() == weighted.nginx_servers(self.address)
        except OSError:
            unchanged = False
        if unchanged:
            log.info("router: weights unchanged, no reload", extra=kv(canary_share=float(share)))
            return
        write_nginx_upstream(self.upstream_file, weighted, self.address)
        pid = self._master_pid()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise RouteError(f"NGINX master {pid} ({self.pid_file}) is not running") from exc
        log.info("router: canary share set", extra=kv(canary_share=float(share), pid=pid,
                                                      weights=",".join(f"{s.name}={s.weight}" for s in weighted.slots)))

    def _master_pid(self) -> int:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RouteError(f"no NGINX master pid in {self.pid_file}: {exc}") from exc
