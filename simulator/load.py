"""Load mode: `/recommend` at a target rate, with a live progress line and a latency summary.

Open loop: requests are scheduled at fixed intervals whatever the server does, and a request's
latency is measured from its scheduled time, so a stalled server shows up in the tail instead of
silently slowing the generator down (coordinated omission). The client times out at 800 ms like
the real streaming service, and counts timeouts apart from errors.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import requests

CLIENT_TIMEOUT_S = 0.8


def ensure_loopback(base_url: str, allow_remote: bool = False) -> None:
    """Refuse to drive anything but this machine unless told otherwise."""
    host = urlsplit(base_url).hostname or ""
    if allow_remote:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from exc
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ValueError(f"{base_url} is not on loopback; pass --allow-remote to drive it anyway")


@dataclass
class Outcome:
    """One request as the client saw it."""

    user_id: int
    status: int  # 0 = timeout or connection error
    latency_ms: float
    movies: tuple[str, ...] = ()
    version: str = ""
    slot: str = ""
    error: str = ""
    sent_at: float = 0.0


@dataclass
class LoadSummary:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.outcomes)

    @property
    def ok(self) -> int:
        return sum(o.status == 200 for o in self.outcomes)

    @property
    def timeouts(self) -> int:
        return sum(o.status == 0 and o.error == "timeout" for o in self.outcomes)

    @property
    def errors(self) -> int:
        return self.requests - self.ok - self.timeouts

    def percentile(self, q: float) -> float:
        lat = [o.latency_ms for o in self.outcomes if o.status == 200]
        return float(np.percentile(lat, q)) if lat else float("nan")

    def share(self, attr: str) -> dict[str, float]:
        counts = Counter(getattr(o, attr) or "?" for o in self.outcomes if o.status == 200)
        total = sum(counts.values()) or 1
        return {k: v / total for k, v in sorted(counts.items())}

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "seconds": round(self.seconds, 3),
            "rps": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(self.percentile(50), 3),
            "p95_ms": round(self.percentile(95), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(max((o.latency_ms for o in self.outcomes), default=float("nan")), 3),
            "version_share": self.share("version"),
            "slot_share": self.share("slot"),
        }

    def render(self) -> str:
        d = self.as_dict()
        lines = [
            f"requests {d['requests']}  ok {d['ok']}  errors {d['errors']}  timeouts {d['timeouts']}"
            f"  in {d['seconds']} s ({d['rps']} req/s)",
            f"latency ms  p50 {d['p50_ms']}  p95 {d['p95_ms']}  p99 {d['p99_ms']}  max {d['max_ms']}",
            "served by version: " + ", ".join(f"{k} {v:.1%}" for k, v in d["version_share"].items()),
            "served by slot:    " + ", ".join(f"{k} {v:.1%}" for k, v in d["slot_share"].items()),
        ]
        return "\n".join(lines)


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def fetch(base_url: str, user_id: int, timeout: float = CLIENT_TIMEOUT_S) -> Outcome:
    """`GET /recommend/<user>` the way the real client does: 800 ms, then it gives up."""
    started = time.perf_counter()
    try:
        resp = _session().get(f"{base_url}/recommend/{user_id}", timeout=timeout)
    except requests.Timeout:
        return Outcome(user_id, 0, (time.perf_counter() - started) * 1e3, error="timeout")
    except requests.RequestException as exc:
        return Outcome(user_id, 0, (time.perf_counter() - started) * 1e3, error=type(exc).__name__)
    elapsed = (time.perf_counter() - started) * 1e3
    if elapsed > timeout * 1e3:
        return Outcome(user_id, 0, elapsed, error="timeout")
    movies = tuple(m for m in resp.text.strip().split(",") if m) if resp.status_code == 200 else ()
    return Outcome(
        user_id,
        resp.status_code,
        elapsed,
        movies=movies,
        version=resp.headers.get("X-Model-Version", ""),
        slot=resp.headers.get("X-Slot", ""),
        error="" if resp.status_code == 200 else resp.text.strip()[:200],
    )


def run_load(
    base_url: str,
    users: Sequence[int],
    rate: float,
    duration_s: float,
    concurrency: int = 16,
    max_requests: int | None = None,
    seed: int = 0,
    progress: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
    stop: threading.Event | None = None,
) -> LoadSummary:
    """Send `rate` requests/s for `duration_s` (or `max_requests`), users drawn from `users` by seed."""
    rng = np.random.default_rng(seed)
    total = int(rate * duration_s)
    if max_requests is not None:
        total = min(total, max_requests)
    picks = rng.choice(np.asarray(users), size=total) if total else []
    summary = LoadSummary()
    lock = threading.Lock()
    start = time.perf_counter()
    last_progress = start

    def one(user: int, due: float) -> None:
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        outcome = fetch(base_url, int(user))
        lag = max(0.0, time.perf_counter() - due - outcome.latency_ms / 1e3)
        outcome.latency_ms += lag * 1e3  # count the time it waited for a free client (open loop)
        outcome.sent_at = due
        with lock:
            summary.outcomes.append(outcome)
        if on_outcome:
            on_outcome(outcome)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for n, user in enumerate(picks):
            if stop is not None and stop.is_set():
                break
            due = start + n / rate
            # keep the queue short: submit at most ~1 s ahead of the schedule
            ahead = due - time.perf_counter() - 1.0
            if ahead > 0:
                time.sleep(ahead)
            pool.submit(one, int(user), due)
            now = time.perf_counter()
            if progress and now - last_progress >= 1.0:
                last_progress = now
                with lock:
                    done = summary.requests
                    ok = summary.ok
                    p99 = summary.percentile(99)
                print(f"\r[{now - start:6.1f}s] sent {n + 1}/{total}  done {done}  ok {ok}  "
                      f"errors {done - ok}  p99 {p99:.1f} ms   ", end="", file=sys.stderr, flush=True)
    summary.seconds = time.perf_counter() - start
    if progress:
        print(file=sys.stderr)
    return summary
