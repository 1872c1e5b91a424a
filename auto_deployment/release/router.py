"""Traffic between the slots: the share of requests NGINX sends to the canary (design section 6).

`NginxRouter.set_canary_share(share)` re-renders NGINX's upstream ``server`` lines from the topology
(`Topology.with_canary_share`, `write_nginx_upstream`) into the file nginx.conf includes in its
upstream block, then reloads NGINX gracefully: the master starts new workers on the new weights while
the old ones finish their requests, so no request is dropped (how it is told: below).

The shadow step (``shadow=True``) also writes ``<run>/nginx/shadow.conf`` (`topology.SHADOW_MIRROR`),
which nginx.conf includes in its ``/recommend/`` location: NGINX then mirrors every live request to
the canary and discards the canary's answers; any other step removes the file. A call that changes
neither the weights nor the mirror rewrites nothing and reloads nothing, so putting the resting split
back after a release costs no reload when nothing moved.

How NGINX is told to reload is the router's one collaborator that differs by runtime:

* natively `SignalReload`: SIGHUP to the master named by ``<run>/nginx/nginx.pid``;
* in compose `HandshakeReload`: NGINX runs in its own container, which no other container may signal, so the
  router writes a fresh token to ``<run>/nginx/reload.request`` (on the ``upstream`` volume NGINX shares) and
  waits for NGINX's container (docker/nginx-run.sh) to run ``nginx -t``, reload and echo the token into
  ``reload.applied``: a step starts counting only once its weights serve, and a refused file is an error here,
  not a silent no-op.

The wiring picks `NginxRouter.native` when ``<run>/nginx/nginx.conf`` includes the upstream file,
`NginxRouter.compose` in compose once the upstream volume is mounted, and `NullRouter` (which only logs)
otherwise. Each progressive step of a release is one `set_canary_share` call from the controller.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from app.contracts.topology import (
    SHADOW_MIRROR,
    Slot,
    Topology,
    loopback_address,
    reload_applied_path,
    reload_request_path,
    service_address,
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


class Reload(Protocol):
    """Makes NGINX load its files again, gracefully (old workers finish their requests); returns what it did."""

    keeps_files_on_failure: bool  # on RouteError: leave the new files (True) or have the router put the old back

    def __call__(self) -> str:
        ...


class SignalReload:
    """Natively: SIGHUP to the NGINX master named by its pid file."""

    keeps_files_on_failure = True  # NGINX not running: the files are what its next start should read

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = Path(pid_file)

    def __call__(self) -> str:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RouteError(f"no NGINX master pid in {self.pid_file}: {exc}") from exc
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise RouteError(f"NGINX master {pid} ({self.pid_file}) is not running") from exc
        return f"SIGHUP to {pid}"


class HandshakeReload:
    """In compose: a token in the request file, answered by NGINX's container in the applied file."""

    # A refused, failed or unanswered reload: the router puts the previous files back, so that what the files say
    # is what NGINX serves (a retry of the same step reloads again, and a restart cannot read a refused file).
    keeps_files_on_failure = False

    def __init__(self, request_file: Path, applied_file: Path, timeout_s: float = 15.0, poll_s: float = 0.05) -> None:
        self.request_file = Path(request_file)
        self.applied_file = Path(applied_file)
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def __call__(self) -> str:
        token = f"{time.time_ns()}-{os.getpid()}"
        write_text_atomic(self.request_file, token + "\n")
        deadline = time.monotonic() + self.timeout_s
        answer = ""
        while time.monotonic() < deadline:
            try:
                answer = self.applied_file.read_text().strip()
            except OSError:
                answer = ""
            if answer.split(" ")[0] == token:
                if answer.endswith(" ok"):
                    return f"reloaded by NGINX's container (token {token})"
                raise RouteError(f"NGINX did not apply the new configuration ({answer.partition(' ')[2]}); "
                                 "it keeps serving the previous one")
            time.sleep(self.poll_s)
        raise RouteError(f"NGINX did not confirm the reload within {self.timeout_s:g} s ({self.applied_file} says "
                         f"{answer or 'nothing'!r}): is the nginx container running docker/nginx-run.sh?")


class NginxRouter:
    """Writes the upstream include (and the shadow file), then has NGINX reload gracefully."""

    def __init__(self, topology: Topology, upstream_file: Path, reload: Reload | Path,
                 address: Callable[[Slot], str] = loopback_address, shadow_file: Path | None = None) -> None:
        """`reload`: how NGINX learns of the files; a path is the native master's pid file (`SignalReload`)."""
        self.topology = topology
        self.upstream_file = Path(upstream_file)
        self.shadow_file = Path(shadow_file) if shadow_file else self.upstream_file.with_name("shadow.conf")
        self.reload = SignalReload(reload) if isinstance(reload, (str, Path)) else reload
        self.address = address

    @classmethod
    def native(cls, topology: Topology, run_dir: Path) -> NginxRouter:
        """The native stack's NGINX: ``<run>/nginx/upstream.conf`` and ``<run>/nginx/nginx.pid``."""
        return cls(topology, upstream_path(run_dir), Path(run_dir) / "nginx" / "nginx.pid",
                   shadow_file=shadow_path(run_dir))

    @classmethod
    def compose(cls, topology: Topology, run_dir: Path, timeout_s: float = 15.0) -> NginxRouter:
        """Compose's NGINX: the same files on the ``upstream`` volume, reloaded by handshake."""
        return cls(topology, upstream_path(run_dir),
                   HandshakeReload(reload_request_path(run_dir), reload_applied_path(run_dir), timeout_s),
                   address=service_address, shadow_file=shadow_path(run_dir))

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
        before = self._files()
        if not same_weights:
            write_nginx_upstream(self.upstream_file, weighted, self.address)
        if shadow:
            write_text_atomic(self.shadow_file, SHADOW_MIRROR)
        else:
            self.shadow_file.unlink(missing_ok=True)
        try:
            how = self.reload()
        except RouteError:
            if not self.reload.keeps_files_on_failure:
                self._restore(*before)
            raise
        log.info("router: canary share set", extra=kv(canary_share=float(share), shadow=shadow, reload=how,
                                                      weights=",".join(f"{s.name}={s.weight}" for s in weighted.slots)))

    def _files(self) -> tuple[str | None, str | None]:
        """The upstream and shadow files' contents (None: absent)."""
        def text(path: Path) -> str | None:
            try:
                return path.read_text()
            except FileNotFoundError:
                return None
        return text(self.upstream_file), text(self.shadow_file)

    def _restore(self, upstream: str | None, shadow: str | None) -> None:
        for path, content in ((self.upstream_file, upstream), (self.shadow_file, shadow)):
            if content is None:
                path.unlink(missing_ok=True)
            else:
                write_text_atomic(path, content)
        log.warning("router: NGINX did not take the new weights; the previous files are back",
                    extra=kv(upstream=self.upstream_file))
