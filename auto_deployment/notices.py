"""Telling the team: one notice goes by email (SMTP) and to Slack (incoming webhook).

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

from app.logs import kv
from app.settings import Notify

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """Outcome of one notice per channel: sent, skipped (not configured) or failed (with the reason)."""

    sent: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def format_fields(fields: Mapping[str, object]) -> list[str]:
    """`key: value` lines, floats shortened, in the caller's order."""
    lines = []
    for key, value in fields.items():
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key}: {text}")
    return lines


class Notifier:
    """`Notifier(Notify.from_env()).send(subject, body, fields)` → email and Slack, never raises."""

    def __init__(self, settings: Notify | None = None) -> None:
        self.settings = settings or Notify.from_env()

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
