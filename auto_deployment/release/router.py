"""Traffic between the slots: the share of requests NGINX sends to the canary (design section 6).

`NginxRouter.set_canary_share(share)` re-renders NGINX's upstream ``server`` lines from the topology
(`Topology.with_canary_share`, `write_nginx_upstream`) into the file nginx.conf includes in its
upstream block, then reloads NGINX gracefully: SIGHUP to the master (pid file), which starts new
workers on the new weights while the old ones finish their requests, so no request is dropped.

The shadow step (``shadow=True``) also writes ``<run>/nginx/shadow.conf`` (`topology.SHADOW_MIRROR`),
which nginx.conf includes in its ``/recommend/`` location: NGINX then mirrors every live request to
the canary and discards the canary's answers; any other step removes the file. A call that changes
neither the weights nor the mirror rewrites nothing and reloads nothing, so putting the resting split
back after a release costs no reload when nothing moved.

The wiring picks `NginxRouter` natively when ``<run>/nginx/nginx.conf`` includes the upstream file, and
`NullRouter` (which only logs) otherwise, e.g. in compose, where NGINX runs in its own container.
Each progressive step of a release is one `set_canary_share` call from the controller.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from app.contracts.topology import (
    SHADOW_MIRROR,
    Slot,
    Topology,
    loopback_address,
    shadow_path,
    upstream_path,
    write_nginx_upstream,
)
from app.files import write_text_atomic
from app.logs import kv

log = logging.getLogger(__name__)


class RouteError(RuntimeError):
    """The new weights could not be applied (NGINX not running, unreadable pid file)."""


class Router(Protocol):
    """What the release controller needs to move traffic."""

    def set_canary_share(self, share: float | Fraction, shadow: bool = False) -> None:
        """Send `share` (0..1) of requests to the canary, the rest evenly to the stable replicas; with
        `shadow`, also mirror every live request to the canary (its answers discarded)."""
        ...


class NullRouter:
    """Leaves traffic as NGINX has it (its static 2/2/1 split); says what it would have done."""

    def set_canary_share(self, share: float | Fraction, shadow: bool = False) -> None:
        log.info("router: traffic left as configured", extra=kv(canary_share=float(share), shadow=shadow))


class NginxRouter:
    """Writes the upstream include and SIGHUPs the NGINX master named by its pid file."""

    def __init__(self, topology: Topology, upstream_file: Path, pid_file: Path,
                 address: Callable[[Slot], str] = loopback_address, shadow_file: Path | None = None) -> None:
        self.topology = topology
        self.upstream_file = Path(upstream_file)
        self.shadow_file = Path(shadow_file) if shadow_file else self.upstream_file.with_name("shadow.conf")
        self.pid_file = Path(pid_file)
        self.address = address

    @classmethod
    def native(cls, topology: Topology, run_dir: Path) -> NginxRouter:
        """The native stack's NGINX: ``<run>/nginx/upstream.conf`` and ``<run>/nginx/nginx.pid``."""
        return cls(topology, upstream_path(run_dir), Path(run_dir) / "nginx" / "nginx.pid",
                   shadow_file=shadow_path(run_dir))

    @classmethod
    def includes_upstream(cls, run_dir: Path) -> bool:
        """Whether the native stack's nginx.conf takes its upstream servers from the router's file."""
        conf = Path(run_dir) / "nginx" / "nginx.conf"
        try:
            return "upstream.conf" in conf.read_text()
        except OSError:
            return False

    def set_canary_share(self, share: float | Fraction, shadow: bool = False) -> None:
        weighted = self.topology.with_canary_share(share)
        servers = weighted.nginx_servers(self.address)
        try:
            same_weights = self.upstream_file.read_text() == servers
        except OSError:
            same_weights = False
        if same_weights and self.shadow_file.exists() == shadow:
            log.info("router: weights unchanged, no reload", extra=kv(canary_share=float(share), shadow=shadow))
            return
        if not same_weights:
            write_nginx_upstream(self.upstream_file, weighted, self.address)
        if shadow:
            write_text_atomic(self.shadow_file, SHADOW_MIRROR)
        else:
            self.shadow_file.unlink(missing_ok=True)
        pid = self._master_pid()
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise RouteError(f"NGINX master {pid} ({self.pid_file}) is not running") from exc
        log.info("router: canary share set", extra=kv(canary_share=float(share), shadow=shadow, pid=pid,
                                                      weights=",".join(f"{s.name}={s.weight}" for s in weighted.slots)))

    def _master_pid(self) -> int:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RouteError(f"no NGINX master pid in {self.pid_file}: {exc}") from exc
