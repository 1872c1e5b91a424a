"""Manual control of a running release: pause, resume, abort, promote now, approve (issue 11), and its status.

``release --pause|--resume|--abort|--promote-now --who NAME --why TEXT`` drops one request file into
``<run>/release/control/`` (atomically, uniquely named, so two operators never overwrite each other); the
running controller takes the files in order at its next poll (`ControlChannel.take`), applies them, and
keeps each one with who, why and when in its state file and in the ``releases`` row (``controls``; an
abort or a promotion by hand also sets ``decided_by``). A file is the channel because the release runs in
another process (the CLI, the scheduler), possibly in another container sharing the run directory.

- pause: the weights stay as they are, no interval is analysed, and the step's clock stops;
- resume: the step's clock runs again, from where it stopped;
- abort: the release goes to ABORT at once (canary rolled back), outcome ``aborted``;
- promote-now: the release goes to PROMOTE at once, whatever the checks say (the person answers for it);
- approve: with ``RELEASE_REQUIRE_APPROVAL=1`` a release whose last step passed waits (AWAIT_APPROVAL, the
  checks still running, a failure still aborting) until someone approves: it then goes to PROMOTE, outcome
  ``promoted``, ``decided_by`` the approver (Flagger's confirm-promotion gate). An approval sent before the
  release waits is kept in ``controls`` as not applied, and changes nothing.

`status_text` renders ``release --status``: the step, its weight, each check's value and limit, and the
time left.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from app.files import write_json_atomic
from app.logs import kv
from auto_deployment.release.state import AWAIT_APPROVAL, ReleaseState

log = logging.getLogger(__name__)

PAUSE, RESUME, ABORT_NOW, PROMOTE_NOW, APPROVE = "pause", "resume", "abort", "promote-now", "approve"
ACTIONS = (PAUSE, RESUME, ABORT_NOW, PROMOTE_NOW, APPROVE)


def default_who() -> str:
    """The operator's name when `--who` is not given: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


@dataclass(frozen=True)
class ControlRequest:
    action: str
    who: str
    why: str
    at: float

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown release control {self.action!r}: one of {', '.join(ACTIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ControlChannel:
    """``<run>/release/control/<time>-<pid>.json``: one file per request, taken in order by the controller."""

    def __init__(self, run_dir: Path) -> None:
        self.directory = Path(run_dir) / "release" / "control"

    def send(self, request: ControlRequest) -> Path:
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}.json"
        write_json_atomic(path, request.to_dict())
        return path

    def take(self) -> list[ControlRequest]:
        """The pending requests, oldest first, each removed once read (an unreadable one is set aside)."""
        try:
            paths = sorted(p for p in self.directory.iterdir() if p.suffix == ".json")
        except FileNotFoundError:
            return []
        requests = []
        for path in paths:
            try:
                data = json.loads(path.read_text())
                requests.append(ControlRequest(str(data["action"]), str(data["who"])[:128], str(data["why"])[:500],
                                               float(data["at"])))
                path.unlink(missing_ok=True)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("release: unreadable control request set aside", extra=kv(path=path, reason=exc))
                path.replace(path.with_suffix(".broken"))
        return requests

    def clear(self) -> None:
        """Drop requests nobody took (sent while no release ran): they must not steer the next release."""
        for request in self.take():
            log.warning("release: stale control request dropped", extra=kv(action=request.action, who=request.who))


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def status_text(state: ReleaseState | None, now: float | None = None) -> str:
    """``release --status``: where the last release is, its step and weight, each check, the time left."""
    if state is None:
        return "no release has run yet"
    now = time.time() if now is None else now
    gate = state.gate or {}
    steps = gate.get("steps") or []
    lines = [f"release of version {state.candidate} (stable {state.previous}): {state.state}"
             + (f", outcome {state.outcome}" if state.outcome else "")]
    if steps and state.state not in ("DONE",):
        index = min(state.step, len(steps) - 1)
        step = steps[index]
        weight = "shadow: every live request mirrored to the canary, none served by it" if step.get("shadow") \
            else f"{100 * float(step.get('share', 0)):g}% of live requests to the canary"
        lines.append(f"step {index + 1}/{len(steps)} {step.get('name')}: {weight}")
        step_s = float(gate.get("step_s") or 0)
        if state.step_started is not None and state.state != AWAIT_APPROVAL:
            paused = (now - state.paused_at) if state.paused_at else 0.0
            elapsed = now - state.step_started - paused
            left = max(0.0, step_s - elapsed)
            later = step_s * (len(steps) - index - 1)
            lines.append(f"time left: {_duration(left)} in this step, {_duration(left + later)} to promotion "
                         f"at the earliest" + (" (PAUSED)" if state.paused_at else ""))
        lines.append(f"failed intervals {state.failures} of {gate.get('failure_limit')} allowed; held "
                     f"{state.held} of {gate.get('inconclusive_limit')} intervals past the step's time")
        if state.state == AWAIT_APPROVAL:
            waited = now - (state.awaiting_since or now)
            lines.append(f"AWAITING APPROVAL for {_duration(waited)}: every step passed; promote with `release "
                         f"--approve --who NAME --why TEXT` (the checks keep running: a failure still aborts)")
        elif gate.get("require_approval"):
            lines.append("approval required: after the last step the release waits for `release --approve`")
    if state.checks:
        lines.append("checks (last interval):")
        for check in state.checks:
            value, limit = check.get("value"), check.get("limit")
            shown = "-" if value is None else f"{value:.4g}"
            bound = "-" if limit is None else f"{limit:.4g}"
            lines.append(f"  {check.get('name')}: {check.get('status')}, value {shown}, threshold {bound} "
                         f"({check.get('text')})")
    for control in state.controls:
        lines.append(f"control: {control.get('action')} by {control.get('who')} ({control.get('why')})")
    if state.reason:
        lines.append(f"reason: {state.reason}")
    return "\n".join(lines)
