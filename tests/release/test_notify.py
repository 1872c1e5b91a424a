"""The notifier against a real SMTP server and a real HTTP webhook receiver on loopback."""

from __future__ import annotations

import dataclasses
import logging
import socket

from auto_deployment.notices import Notifier
from tests.fixtures.receivers import SMTP_PASSWORD, SMTP_USER, free_port


def test_notice_reaches_email_and_slack_with_subject_body_and_fields(notify_settings, smtp_receiver, slack_receiver):
    delivery = Notifier(notify_settings).send(
        "release v7: promoted", "canary met the gate", {"latency_ms": 41.25, "requests": 1234}
    )

    assert sorted(delivery.sent) == ["email", "slack"]
    assert not delivery.failed and not delivery.skipped
    [mail] = smtp_receiver.messages
    assert mail["Subject"] == "release v7: promoted"
    assert mail["From"] == "movierec@localhost"
    text = mail.get_content()
    assert "canary met the gate" in text
    assert "latency_ms: 41.25" in text and "requests: 1234" in text
    [(_sender, recipients)] = smtp_receiver.envelopes
    assert recipients == ["team@example.org", "oncall@example.org"]
    [post] = slack_receiver.posts
    assert "release v7: promoted" in post["text"]
    assert "canary met the gate" in post["text"] and "requests: 1234" in post["text"]


def test_missing_settings_skip_the_channel_and_say_why(notify_settings, smtp_receiver, slack_receiver, caplog):
    settings = dataclasses.replace(notify_settings, smtp_host="", slack_webhook="")
    with caplog.at_level(logging.INFO, logger="auto_deployment.notices"):
        delivery = Notifier(settings).send("subject", "body", {})

    assert delivery.sent == []
    assert set(delivery.skipped) == {"email", "slack"}
    assert "SMTP_HOST" in delivery.skipped["email"] and "SLACK_WEBHOOK_URL" in delivery.skipped["slack"]
    assert smtp_receiver.messages == [] and slack_receiver.posts == []
    assert "notice skipped" in caplog.text


def test_no_recipients_skips_email_but_still_posts_to_slack(notify_settings, smtp_receiver, slack_receiver):
    delivery = Notifier(dataclasses.replace(notify_settings, mail_to=" , ")).send("s", "b", {})
    assert delivery.sent == ["slack"] and "MAIL_TO" in delivery.skipped["email"]
    assert smtp_receiver.messages == []


def test_dead_smtp_port_is_logged_and_slack_still_gets_the_notice(notify_settings, slack_receiver, caplog):
    settings = dataclasses.replace(notify_settings, smtp_port=free_port())
    with caplog.at_level(logging.WARNING, logger="auto_deployment.notices"):
        delivery = Notifier(settings).send("release v3: aborted", "too slow", {"reason": "latency"})

    assert delivery.sent == ["slack"]
    assert "email" in delivery.failed and "Connection" in delivery.failed["email"]
    [warning] = [r for r in caplog.records if r.getMessage() == "notice not delivered"]
    assert warning.kv["channel"] == "email" and "Connection" in warning.kv["reason"]
    assert len(slack_receiver.posts) == 1


def test_slack_error_status_is_a_failed_channel_not_an_exception(notify_settings, smtp_receiver, slack_receiver):
    slack_receiver.status = 500
    delivery = Notifier(notify_settings).send("s", "b", {})
    assert delivery.sent == ["email"]
    assert "HTTP 500" in delivery.failed["slack"]
    assert len(smtp_receiver.messages) == 1


def test_unreachable_slack_webhook_is_a_failed_channel(notify_settings):
    settings = dataclasses.replace(notify_settings, slack_webhook=f"http://127.0.0.1:{free_port()}/hook")
    delivery = Notifier(settings).send("s", "b", {})
    assert "unreachable" in delivery.failed["slack"] and delivery.sent == ["email"]


def test_smtp_login_is_used_when_configured(notify_settings, smtp_receiver):
    settings = dataclasses.replace(notify_settings, smtp_user=SMTP_USER, smtp_password=SMTP_PASSWORD)
    delivery = Notifier(settings).send("s", "b", {})
    assert "email" in delivery.sent
    assert smtp_receiver.logins == [SMTP_USER] and len(smtp_receiver.messages) == 1


def test_rejected_smtp_login_fails_the_email_only(notify_settings, smtp_receiver):
    settings = dataclasses.replace(notify_settings, smtp_user=SMTP_USER, smtp_password="wrong")
    delivery = Notifier(settings).send("s", "b", {})
    assert "email" in delivery.failed and "slack" in delivery.sent
    assert smtp_receiver.messages == [] and smtp_receiver.logins == []


def test_mail_server_that_never_answers_times_out_instead_of_hanging(notify_settings):
    with socket.socket() as silent:  # accepts connections in the kernel backlog, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        settings = dataclasses.replace(notify_settings, smtp_port=silent.getsockname()[1], timeout_s=0.5)
        delivery = Notifier(settings).send("s", "b", {})
    assert "email" in delivery.failed and "slack" in delivery.sent
