"""Progressive traffic and the judgement of each analysis interval (issue 11), as data and pure functions.

A release moves its canary through `Step`s (default ``shadow,5,20,50``: NGINX mirrors live requests to the
canary and discards its answers, then 5 %, 20 % — the card's 80/20 — and 50 % of live requests), and is
promoted after the last one. Every `Progression.interval_s` the checks judge the canary over the step so
far, and `next_move` turns that verdict into what happens next:

======================  ========================================================================
verdict of an interval  move
======================  ========================================================================
failed                  one more failure; at `failure_limit` failures (the release's total) the
                        release aborts at once, whatever the step's time left
inconclusive            (Prometheus unreachable, no data, too small a sample): nothing while the
                        step's time runs; once it is over, the step is *held* one more interval;
                        `inconclusive_limit` held intervals in a row abort. Never a pass.
passed                  advance once the step's time (`step_s`) is over, else stay; since every
                        check returns inconclusive below its minimum sample, a step advances only
                        after its minimum sample
======================  ========================================================================

The step's time is the observation window (``RELEASE_OBSERVE_S``, the card's 12 h) shared equally by the
steps. The settings live in `app.settings.Release` (read once at the edge); `Progression.from_settings`
turns them into this value. With ``RELEASE_REQUIRE_APPROVAL=1`` a release whose last step passed waits for
``release --approve`` (the controller's AWAIT_APPROVAL state) instead of promoting at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.settings import Release

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"  # the verdict of one interval
STAY, ADVANCE, ABORT = "stay", "advance", "abort"  # the move it makes
SHADOW = "shadow"
DEFAULT_STEPS = "shadow,5,20,50"


@dataclass(frozen=True)
class Step:
    """One stage of traffic: `share` of live requests to the canary; `shadow`: every request mirrored to it."""

    name: str
    share: float
    shadow: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_steps(text: str) -> tuple[Step, ...]:
    """``shadow,5,20,50`` → the steps, in order: ``shadow`` or a percentage of live traffic in (0, 100)."""
    steps: list[Step] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() == SHADOW:
            steps.append(Step(SHADOW, 0.0, shadow=True))
            continue
        try:
            percent = float(item.removesuffix("%"))
        except ValueError:
            raise ValueError(f"release step {item!r}: 'shadow' or a percentage such as 20") from None
        if not 0 < percent < 100:
            raise ValueError(f"release step {item!r}: a percentage strictly between 0 and 100")
        steps.append(Step(f"{percent:g}%", percent / 100.0))
    if not steps:
        raise ValueError(f"no release step in {text!r}")
    return tuple(steps)


@dataclass(frozen=True)
class Progression:
    """How a release moves (`app.settings.Release`, read once at the edge by `wiring.ReleaseSettings.from_env`)."""

    steps: tuple[Step, ...]  # RELEASE_STEPS, default "shadow,5,20,50"
    interval_s: float = 60.0  # RELEASE_INTERVAL_S: the checks run every interval
    failure_limit: int = 2  # RELEASE_FAILURE_LIMIT: failed intervals (in the whole release) that abort it
    inconclusive_limit: int = 10  # RELEASE_INCONCLUSIVE_LIMIT: held intervals in a row past a step's time that abort
    require_approval: bool = False  # RELEASE_REQUIRE_APPROVAL: after the last step, wait for `release --approve`

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.failure_limit < 1 or self.inconclusive_limit < 1:
            raise ValueError(f"release progression out of range: interval {self.interval_s} s, failure limit "
                             f"{self.failure_limit}, inconclusive limit {self.inconclusive_limit}")

    @classmethod
    def from_settings(cls, release: Release) -> Progression:
        """The progression the settings describe (a bad step list or limit names the progression)."""
        try:
            return cls(steps=parse_steps(release.steps), interval_s=release.interval_s,
                       failure_limit=release.failure_limit, inconclusive_limit=release.inconclusive_limit,
                       require_approval=release.require_approval)
        except ValueError as exc:
            raise ValueError(f"release progression settings: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps], "interval_s": self.interval_s,
                "failure_limit": self.failure_limit, "inconclusive_limit": self.inconclusive_limit,
                "require_approval": self.require_approval}


@dataclass(frozen=True)
class Move:
    """What one interval's verdict does, and the counters after it."""

    action: str  # stay | advance | abort
    failures: int
    held: int
    reason: str


def next_move(verdict: str, *, step_over: bool, failures: int, held: int, progression: Progression,
              why: str = "") -> Move:
    """The move of one interval (table in the module docstring). `why` is the verdict's own text."""
    if verdict == FAILED:
        failures += 1
        if failures >= progression.failure_limit:
            return Move(ABORT, failures, held, f"failed {failures} of {progression.failure_limit} allowed "
                                               f"interval(s): {why}")
        return Move(STAY, failures, held, f"failed interval {failures} of {progression.failure_limit}: {why}")
    if verdict == INCONCLUSIVE:
        if not step_over:
            return Move(STAY, failures, held, f"inconclusive so far: {why}")
        held += 1
        if held >= progression.inconclusive_limit:
            return Move(ABORT, failures, held, f"inconclusive for {held} interval(s) past the step's time "
                                               f"(limit {progression.inconclusive_limit}): {why}")
        return Move(STAY, failures, held, f"step held ({held} of {progression.inconclusive_limit}): {why}")
    if verdict != PASSED:
        raise ValueError(f"unknown verdict {verdict!r}")
    if step_over:
        return Move(ADVANCE, failures, 0, why)
    return Move(STAY, failures, 0, f"passing, step time not over: {why}")
