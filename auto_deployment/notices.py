"""Telling the team: what a notice says, and its delivery by email (SMTP) and to Slack (incoming webhook).

One module renders every message from a typed result — `release_notice` from a release's
`ReleaseResult`, `run_notice` from a retraining run's `RunSummary` (which carries its release's
result, so a run that releases its version sends one notice, not two) — and `Notifier` delivers it.

A notice is best effort by design: the release or retraining run it reports on has already
happened, so a missing setting is logged and skipped, and a mail or Slack server that is down or
refuses is logged and never raises into the caller. `send` returns what went out, so callers (and
tests) can say so.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

from app.logs import kv
from app.settings import Notify
from app.store import ABORTED, FAILED, PROMOTED

log = logging.getLogger(__name__)

FIGURES_SHOWN = ("latency_ms", "error_ratio", "requests", "errors", "no_data")  # a release's own notice
RUN_FIGURES_SHOWN = ("latency_ms", "error_ratio", "requests")  # the release part of a run's notice


@dataclass
class Delivery:
    """Outcome of one notice per channel: sent, skipped (not configured) or failed (with the reason)."""

    sent: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice:
    """One message: a subject, a sentence, and `key: value` fields in the order they are shown."""

    subject: str
    body: str
    fields: dict[str, Any] = field(default_factory=dict)


class Notifies(Protocol):
    def send(self, subject: str, body: str, fields: Mapping[str, object] | None = None) -> Delivery: ...


def format_fields(fields: Mapping[str, object]) -> list[str]:
    """`key: value` lines, floats shortened, in the caller's order."""
    lines = []
    for key, value in fields.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key}: {text}")
    return lines


# --- what the notices say --------------------------------------------------------------------------


class ReleaseResult(Protocol):
    """What a notice needs of a release's result (`auto_deployment.release.state.ReleaseResult`).

    Described here rather than imported, so that the release may send notices without the notices
    depending back on the release package.
    """

    candidate: int
    previous: int | None
    outcome: str
    reason: str
    figures: dict[str, Any]
    started_at: str | None
    finished_at: str | None
    commit: str | None
    recorded: bool
    decider: dict[str, Any] | None  # the check that decided: name, status, value, limit, sample, sample_of
    decided_by: str | None  # the person who decided by hand (abort, promote-now, approve)


def _number(value: object) -> str:
    return "unknown" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def decider_text(decider: Mapping[str, Any] | None) -> str | None:
    """``latency_vs_stable (failed): value 230, limit 45, sample 1000 requests``: the deciding check and its
    numbers, one field of its own in every notice (None when no check decided: by hand, deploy error)."""
    if not decider:
        return None
    sample = decider.get("sample")
    sample_text = "unknown" if sample is None else f"{float(sample):.0f} {decider.get('sample_of') or 'requests'}"
    return (f"{decider.get('name')} ({decider.get('status')}): value {_number(decider.get('value'))}, "
            f"limit {_number(decider.get('limit'))}, sample {sample_text}")


def release_notice(result: ReleaseResult) -> Notice:
    """The notice of a release (sent by the release itself when it runs alone: the CLI)."""
    c, p, reason = result.candidate, result.previous, result.reason
    verb = {PROMOTED: "promoted", ABORTED: "aborted", FAILED: "FAILED"}.get(result.outcome, result.outcome)
    subject = f"movierec release of model version {c}: {verb}"
    body = {
        PROMOTED: f"Version {c} now serves on every slot (was {p}): {reason}.",
        ABORTED: f"Version {c} did not pass the canary gate; every slot serves {p}: {reason}.",
    }.get(result.outcome, f"The release of version {c} failed: {reason}.")
    fields: dict[str, Any] = {"candidate": c, "previous": p, "outcome": result.outcome}
    decided = decider_text(getattr(result, "decider", None))
    if decided:
        fields["deciding check"] = decided
    if getattr(result, "decided_by", None):
        fields["decided by"] = result.decided_by
    fields.update(reason=reason, started_at=result.started_at, finished_at=result.finished_at)
    for side in ("canary", "stable"):
        figures = result.figures.get(side) or {}
        for key in FIGURES_SHOWN:
            if key in figures:
                fields[f"{side}_{key}"] = figures[key]
    if result.commit:
        fields["commit"] = result.commit
    fields["recorded_in_mysql"] = result.recorded
    return Notice(subject, body, fields)


@dataclass(frozen=True)
class RunSummary:
    """What a finished retraining run tells the team (built by the pipeline from its run report)."""

    run_id: str
    outcome: str  # versioned | released | release_aborted | refused | checks_failed | failed | interrupted
    reason: str = ""
    failed_step: str = ""
    version: int | None = None
    rmse: float | None = None
    rmse_gate: float | None = None
    ndcg: float | None = None
    data_checksum: str = ""
    commit: str = ""
    release: ReleaseResult | None = None


def release_fields(release: ReleaseResult | None, run_reason: str) -> dict[str, Any]:
    """The release's outcome and figures inside a run's notice (the release itself sends none)."""
    if release is None:
        return {}
    out: dict[str, Any] = {"release": release.outcome}
    decided = decider_text(getattr(release, "decider", None))
    if decided:
        out["release deciding check"] = decided
    if getattr(release, "decided_by", None):
        out["release decided by"] = release.decided_by
    if release.reason and release.reason != run_reason:
        out["release reason"] = release.reason
    for side in ("canary", "stable"):
        figures = release.figures.get(side) or {}
        for key in RUN_FIGURES_SHOWN:
            if figures.get(key) is not None:
                out[f"{side} {key}"] = figures[key]
    if release.commit:
        out["promotion commit"] = release.commit
    return out


def run_notice(run: RunSummary) -> Notice:
    """The one notice of a retraining run: new version, release outcome, refusal or failure, and why."""
    fields: dict[str, Any] = {"run": run.run_id}
    if run.version is not None:
        fields["version"] = run.version
    if run.rmse is not None:
        fields["RMSE"] = run.rmse
        fields["RMSE gate"] = run.rmse_gate
    if run.ndcg is not None:
        fields["NDCG@20"] = run.ndcg
    if run.data_checksum:
        fields["data checksum"] = run.data_checksum
    if run.commit:
        fields["commit"] = run.commit
    fields.update(release_fields(run.release, run.reason))
    if run.outcome in ("versioned", "released"):
        what = "promoted to stable" if run.outcome == "released" else "versioned (not released)"
        rmse = f"{run.rmse:.4f}" if run.rmse is not None else "?"
        subject = f"movierec: model version {run.version} {what}, RMSE {rmse}"
        body = f"Retraining run {run.run_id} made model version {run.version}: {what}."
        return Notice(subject, body, fields)
    fields["step"] = run.failed_step
    fields["reason"] = run.reason
    if run.outcome == "release_aborted":
        subject = f"movierec: model version {run.version} versioned, release not promoted"
        body = f"Version {run.version} passed the gate and was versioned; its release ended: {run.reason}"
    elif run.outcome == "refused":
        subject = f"movierec: retraining refused by the RMSE gate ({run.reason})"
        body = f"Run {run.run_id} made no version: {run.reason}."
    elif run.outcome == "checks_failed":
        subject = "movierec: retraining refused by the data checks"
        body = f"Run {run.run_id} made no version: {run.reason}."
    else:
        subject = f"movierec: retraining failed at step {run.failed_step}"
        body = f"Run {run.run_id} made no version: {run.reason}."
    return Notice(subject, body, fields)


# --- delivery --------------------------------------------------------------------------------------


class Notifier:
    """`Notifier(settings).send(subject, body, fields)` → email and Slack, never raises."""

    def __init__(self, settings: Notify) -> None:
        self.settings = settings

    def send_notice(self, notice: Notice) -> Delivery:
        return self.send(notice.subject, notice.body, notice.fields)

    def send(self, subject: str, body: str, fields: Mapping[str, object] | None = None) -> Delivery:
        fields = dict(fields or {})
        delivery = Delivery()
        for channel, deliver in (("email", self._email), ("slack", self._slack)):
            try:
                skipped = deliver(subject, body, fields)
            except Exception as exc:  # a notice must never fail the run it reports on
                reason = f"{type(exc).__name__}: {exc}"
                delivery.failed[channel] = reason
                log.warning("notice not delivered", extra=kv(channel=channel, subject=subject, reason=reason))
                continue
            if skipped:
                delivery.skipped[channel] = skipped
                log.info("notice skipped", extra=kv(channel=channel, subject=subject, reason=skipped))
            else:
                delivery.sent.append(channel)
                log.info("notice sent", extra=kv(channel=channel, subject=subject))
        return delivery

    # -- channels: return None when sent, a reason string when skipped, raise when failed ----------

    def _email(self, subject: str, body: str, fields: dict[str, object]) -> str | None:
        s = self.settings
        recipients = [addr.strip() for addr in s.mail_to.split(",") if addr.strip()]
        if not s.smtp_host:
            return "SMTP_HOST is not set"
        if not recipients:
            return "MAIL_TO is not set"
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = s.mail_from
        msg["To"] = ", ".join(recipients)
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = make_msgid(domain="movierec")
        msg.set_content("\n".join([body, "", *format_fields(fields)]).rstrip() + "\n")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout_s) as smtp:
            smtp.ehlo()
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(msg, from_addr=s.mail_from, to_addrs=recipients)
        return None

    def _slack(self, subject: str, body: str, fields: dict[str, object]) -> str | None:
        url = self.settings.slack_webhook
        if not url:
            return "SLACK_WEBHOOK_URL is not set"
        lines = [f"*{subject}*", body, *format_fields(fields)]
        payload = json.dumps({"text": "\n".join(line for line in lines if line)}).encode()
        request = urllib.request.Request(
            url, data=payload, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"Slack webhook answered HTTP {exc.code}") from exc
        except (TimeoutError, urllib.error.URLError) as exc:
            raise RuntimeError(f"Slack webhook unreachable: {getattr(exc, 'reason', exc)}") from exc
        return None
