"""Putting a model version on a slot, and knowing when the slot really serves it.

Deploying is writing the slot's pointer file (``<run>/slots/<slot>``, atomically): every worker of
the slot's inference server polls it and swaps the model in without dropping a request
(``app/slot.py``). The deployer then asks the slot's *own* URL (never NGINX, which would answer
from any slot) until the slot really serves the new version:

- ``/version`` names it on several consecutive polls (each a fresh connection, so any worker may
  answer), and
- ``/metrics`` shows ``model_info{version=...} 1`` for that version only. The gauge is the max over
  the *live* workers, so a worker still on the old version keeps the old version at 1: this is what
  proves that every worker moved (the kernel may hand many consecutive connections to the same idle
  worker, so polls alone cannot). A server without the gauge is judged by the polls alone.

`NativeDeployer` (one process per slot on this machine) and `ComposeDeployer` (containers sharing
the pointer directory as a volume, optionally nudged with ``docker-compose kill -s HUP``) differ only
in that nudge; the release controller sees the `SlotDeployer` protocol.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from app.contracts import pointer
from app.logs import kv
from app.settings import Paths, Release, Serving

log = logging.getLogger(__name__)

_MODEL_INFO = re.compile(r"^model_info\{([^}]*)\}\s+(\S+)", re.MULTILINE)
_VERSION_LABEL = re.compile(r'(?:^|,)version="([^"]*)"')


class DeployError(RuntimeError):
    """A slot did not come to serve the version it was given in time."""


class SlotDeployer(Protocol):
    """What the release controller needs to move slots between versions."""

    def deploy(self, slot: str, version: int) -> None:
        """Point `slot` at `version` and return once it serves it (or raise `DeployError`)."""
        ...

    def current(self, slot: str) -> int | None:
        """The version `slot` is told to serve (its pointer), None if it has none."""
        ...

    def serving(self, slot: str) -> int | None:
        """The version `slot` answers with right now, None when it is not ready or unreachable."""
        ...


def parse_slot_urls(text: str) -> dict[str, str]:
    """`stable_1=http://a:5001,canary=http://c:5003` → {slot: base URL}; unknown slots refused."""
    urls: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        slot, sep, url = item.partition("=")
        slot, url = slot.strip(), url.strip().rstrip("/")
        if not sep or not url or slot not in pointer.SLOTS:
            raise ValueError(f"slot URL {item!r}: expected SLOT=URL with SLOT one of {', '.join(pointer.SLOTS)}")
        urls[slot] = url
    return urls


def slot_urls(release: Release | None = None, serving: Serving | None = None) -> dict[str, str]:
    """Each slot's own URL: `RELEASE_SLOT_URLS` where given, else loopback and `MOVIEREC_SLOT_PORTS`."""
    release = release or Release.from_env()
    serving = serving or Serving.from_env()
    urls = {slot: f"http://127.0.0.1:{serving.port_of(slot)}" for slot in pointer.SLOTS}
    urls.update(parse_slot_urls(release.slot_urls))
    return urls


class NativeDeployer:
    """Pointer files in the run dir + each slot's HTTP base URL."""

    def __init__(
        self,
        run_dir: Path,
        urls: Mapping[str, str],
        timeout_s: float = 120.0,
        poll_s: float = 0.25,
        consecutive: int = 6,
        http_timeout_s: float = 2.0,
    ) -> None:
        missing = [slot for slot in pointer.SLOTS if slot not in urls]
        if missing:
            raise ValueError(f"no URL for slot(s) {', '.join(missing)}")
        self.run_dir = Path(run_dir)
        self.urls = dict(urls)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.consecutive = max(1, consecutive)
        self.http_timeout_s = http_timeout_s

    def deploy(self, slot: str, version: int) -> None:
        started = time.monotonic()
        log.info("deploy: pointing slot", extra=kv(slot=slot, version=version, url=self.urls[slot]))
        pointer.write_slot(self.run_dir, slot, version)
        self._after_write(slot, version)
        self.wait_serving(slot, version)
        log.info(
            "deploy: slot serves version",
            extra=kv(slot=slot, version=version, seconds=round(time.monotonic() - started, 2)),
        )

    def wait_serving(self, slot: str, version: int) -> None:
        """Return once `consecutive` polls in a row of the slot's /version name `version`."""
        deadline = time.monotonic() + self.timeout_s
        streak, last, workers = 0, None, None
        while True:
            last = self.serving(slot)
            streak = streak + 1 if last == version else 0
            if streak >= self.consecutive:
                workers = self.worker_versions(slot)
                if workers is None or workers == {version}:
                    return
            if time.monotonic() >= deadline:
                answer = "not ready/unreachable" if last is None else f"version {last}"
                if workers:
                    answer += f"; live workers serve {sorted(workers)}"
                raise DeployError(
                    f"slot {slot} did not serve version {version} within {self.timeout_s:g}s (last answer: {answer})"
                )
            time.sleep(self.poll_s)

    def worker_versions(self, slot: str) -> set[int] | None:
        """Versions the slot's live workers serve (`model_info` gauge); None if /metrics does not say."""
        request = urllib.request.Request(f"{self.urls[slot]}/metrics", headers={"Connection": "close"})
        try:
            with urllib.request.urlopen(request, timeout=self.http_timeout_s) as response:
                text = response.read().decode("utf-8", errors="replace")
        except (urllib.error.URLError, OSError):
            return None
        found: set[int] = set()
        seen = False
        for match in _MODEL_INFO.finditer(text):
            seen = True
            labels, value = match.group(1), float(match.group(2))
            version = _VERSION_LABEL.search(labels)
            if value >= 1 and version and version.group(1).isdigit():
                found.add(int(version.group(1)))
        return found if seen else None

    def current(self, slot: str) -> int | None:
        return pointer.read_slot(self.run_dir, slot)

    def serving(self, slot: str) -> int | None:
        # urllib opens a new connection per request: polls are spread over the server's workers
        request = urllib.request.Request(f"{self.urls[slot]}/version", headers={"Connection": "close"})
        try:
            with urllib.request.urlopen(request, timeout=self.http_timeout_s) as response:
                body = json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None
        try:
            return int(body.get("version"))
        except (TypeError, ValueError):
            return None

    def _after_write(self, slot: str, version: int) -> None:
        """Hook after the pointer is written; the workers pick it up by themselves natively."""


class ComposeDeployer(NativeDeployer):
    """The same pointer files on the volume the containers share, plus an optional SIGHUP.

    ``docker-compose kill -s HUP inference_<slot>`` makes Gunicorn fork fresh workers that load
    the pointer's version before accepting; the workers' own polling does the same without it, so
    the nudge is off by default and a failing nudge is logged, not fatal.
    """

    def __init__(
        self,
        run_dir: Path,
        urls: Mapping[str, str],
        compose_cmd: Sequence[str] = ("docker-compose", "-f", "compose.yml"),
        hup: bool = False,
        service_prefix: str = "inference_",
        **kwargs,
    ) -> None:
        super().__init__(run_dir, urls, **kwargs)
        self.compose_cmd = list(compose_cmd)
        self.hup = hup
        self.service_prefix = service_prefix

    def _after_write(self, slot: str, version: int) -> None:
        if not self.hup:
            return
        command = [*self.compose_cmd, "kill", "-s", "HUP", f"{self.service_prefix}{slot}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("deploy: HUP not sent", extra=kv(slot=slot, command=" ".join(command), reason=exc))
            return
        if done.returncode != 0:
            log.warning(
                "deploy: HUP failed",
                extra=kv(slot=slot, command=" ".join(command), rc=done.returncode, stderr=done.stderr.strip()[-300:]),
            )
        else:
            log.info("deploy: HUP sent", extra=kv(slot=slot, service=f"{self.service_prefix}{slot}"))


def build_deployer(
    runtime: str | None = None,
    urls: Mapping[str, str] | None = None,
    paths: Paths | None = None,
    release: Release | None = None,
    timeout_s: float | None = None,
    compose_hup: bool = False,
) -> NativeDeployer:
    """The deployer of `runtime` (`native` | `compose`) from settings, with explicit overrides."""
    release = release or Release.from_env()
    paths = paths or Paths.from_env()
    runtime = runtime or release.runtime
    chosen_urls = dict(slot_urls(release))
    chosen_urls.update(urls or {})
    timeout = release.deploy_timeout_s if timeout_s is None else timeout_s
    if runtime == "native":
        return NativeDeployer(paths.run_dir, chosen_urls, timeout_s=timeout)
    if runtime == "compose":
        return ComposeDeployer(paths.run_dir, chosen_urls, hup=compose_hup, timeout_s=timeout)
    raise ValueError(f"unknown runtime {runtime!r}: native or compose")
