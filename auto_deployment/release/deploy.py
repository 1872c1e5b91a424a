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
in that nudge; the release controller sees the `SlotDeployer` protocol. Which slots exist, and their
ports, come from the topology (`app.contracts.topology`).

`StableVersion` is the other half of a promotion: ``version.txt`` and ``<run>/slots/stable`` name the
new stable version, and ``version.txt`` is committed (and pushed) when the repository is a git
repository, so a release from the command line leaves no uncommitted ``version.txt`` behind.
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
from app.contracts.topology import Topology, loopback_address
from app.logs import kv

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


def parse_slot_urls(text: str, topology: Topology) -> dict[str, str]:
    """`stable_1=http://a:5001,canary=http://c:5003` → {slot: base URL}; unknown slots refused."""
    urls: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        slot, sep, url = item.partition("=")
        slot, url = slot.strip(), url.strip().rstrip("/")
        if not sep or not url or slot not in topology.names:
            raise ValueError(f"slot URL {item!r}: expected SLOT=URL with SLOT one of {', '.join(topology.names)}")
        urls[slot] = url
    return urls


def slot_urls(topology: Topology, overrides: str = "") -> dict[str, str]:
    """Each slot's own URL: `overrides` (`RELEASE_SLOT_URLS`) where given, else loopback and its port."""
    urls = {slot.name: f"http://{loopback_address(slot)}" for slot in topology.slots}
    urls.update(parse_slot_urls(overrides, topology))
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
        topology: Topology | None = None,
    ) -> None:
        names = topology.names if topology is not None else tuple(urls)
        missing = [slot for slot in names if slot not in urls]
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

    def warm_up(self, slot: str, requests: int = 60) -> int:
        """Ask the slot's own URL for `requests` lists as shadow copies (``X-Shadow: 1``: no provenance row, metrics
        labelled shadow), so the first judged answers of a freshly swapped model are not its cold ones (pages of a
        memory-mapped model read from disk, caches empty). Returns how many answered 200; errors are ignored."""
        from app.contracts.topology import SHADOW_HEADER

        ok = 0
        for user in range(1, requests + 1):
            request = urllib.request.Request(f"{self.urls[slot]}/recommend/{user}",
                                             headers={SHADOW_HEADER: "1", "Connection": "close"})
            try:
                with urllib.request.urlopen(request, timeout=self.http_timeout_s) as response:
                    ok += response.status == 200
            except (urllib.error.URLError, OSError):
                continue
        return ok

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


class StableVersion:
    """``version.txt`` (+ ``<run>/slots/stable``): which version the stable replicas serve, committed in git.

    `repo_dir` is the git + DVC repository that versions data and models (``MOVIEREC_REPO_DIR``);
    the commit is made only when it is a git repository holding ``version.txt``, and a git problem is
    logged and returned, never raised: the promotion has happened.
    """

    def __init__(self, version_file: Path, run_dir: Path, repo_dir: Path | None = None, git_remote: str = "") -> None:
        self.version_file = Path(version_file)
        self.run_dir = Path(run_dir)
        self.repo_dir = Path(repo_dir) if repo_dir is not None else None
        self.git_remote = git_remote

    def read(self) -> int | None:
        return pointer.read_stable(self.version_file, self.run_dir)

    def write(self, version: int) -> tuple[str | None, str]:
        """Name `version` stable and commit ``version.txt``: (commit or None, why there is none)."""
        pointer.write_stable(self.version_file, self.run_dir, version)
        if self.repo_dir is None or not (self.repo_dir / ".git").exists():
            return None, "not a git repository"
        from auto_deployment.model.registry import Layout, commit_promotion

        root = self.repo_dir.resolve()
        layout = Layout(root=root, data_dir=root / "data", models_dir=root / "models",
                        version_file=self.version_file.resolve(), run_dir=self.run_dir.resolve(),
                        git_remote=self.git_remote)
        try:
            commit = commit_promotion(layout, version)
        except Exception as exc:  # the promotion happened; a git hiccup is reported, not fatal
            log.warning("version.txt not committed", extra=kv(version=version, repo=root, error=exc))
            return None, f"{type(exc).__name__}: {exc}"
        if commit:
            log.info("version.txt committed", extra=kv(version=version, commit=commit[:12], repo=root))
        return commit, "" if commit else "nothing to commit (version.txt outside the repository or unchanged)"
