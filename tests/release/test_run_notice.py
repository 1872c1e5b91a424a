"""The notices as the team reads them, rendered by one module from typed results.

A retraining run sends one notice, carrying its release's outcome and figures; a release run alone
(the CLI) sends its own. Both are rendered by `auto_deployment.notices` and delivered to real receivers.
"""

from __future__ import annotations

from auto_deployment.notices import Notifier, RunSummary, release_notice, run_notice
from auto_deployment.pipeline import RunReport, StepRecord, run_summary
from auto_deployment.release.state import ReleaseResult

FIGURES = {"canary": {"latency_ms": 12.5, "error_ratio": 0.0, "requests": 240.0, "errors": 0.0},
           "stable": {"latency_ms": 11.0, "error_ratio": 0.001, "requests": 960.0, "errors": 1.0}}


def released(outcome: str, reason: str) -> ReleaseResult:
    return ReleaseResult(candidate=4, previous=3, outcome=outcome, reason=reason, figures=FIGURES,
                         started_at="2026-11-24T10:00:00.000Z", finished_at="2026-11-24T10:00:30.000Z",
                         commit="f00d" if outcome == "promoted" else None, recorded=True)


def released_run(outcome: str, reason: str) -> RunSummary:
    report = RunReport(run_id="r1", started="2026-11-24T10:00:00Z", version=4, rmse=0.91, rmse_gate=1.0,
                       outcome="released" if outcome == "promoted" else "release_aborted")
    report.steps = [StepRecord("version", "ok", 1.0, {"commit": "abc123"})]
    if outcome != "promoted":
        report.reason, report.failed_step = reason, "release"
    return run_summary(report, {"ndcg@20": 0.31}, released(outcome, reason))


def test_a_promoted_run_notice_carries_the_canary_and_stable_figures():
    notice = run_notice(released_run("promoted", "gate passed"))
    assert "version 4 promoted to stable" in notice.subject
    fields = notice.fields
    assert (fields["commit"], fields["NDCG@20"]) == ("abc123", 0.31)
    assert fields["release"] == "promoted" and fields["release reason"] == "gate passed"
    assert fields["promotion commit"] == "f00d"
    assert (fields["canary latency_ms"], fields["canary requests"]) == (12.5, 240.0)
    assert (fields["stable latency_ms"], fields["stable error_ratio"]) == (11.0, 0.001)


def test_an_aborted_release_says_why_once():
    reason = "canary latency 612 ms >= 500 ms"
    notice = run_notice(released_run("aborted", reason))
    assert "release not promoted" in notice.subject and reason in notice.body
    assert notice.fields["release"] == "aborted" and notice.fields["reason"] == reason
    assert "release reason" not in notice.fields  # the run's reason is the release's: not said twice


def test_a_run_without_a_release_has_no_release_fields():
    report = RunReport(run_id="r2", started="2026-11-24T10:00:00Z", outcome="refused", reason="RMSE 1.02 >= 1.0",
                       failed_step="gate")
    notice = run_notice(run_summary(report, {}))
    assert "refused by the RMSE gate" in notice.subject
    assert not any(key.startswith(("release", "canary", "stable")) for key in notice.fields)


def test_a_release_notice_names_the_outcome_the_figures_and_the_commit():
    promoted = release_notice(released("promoted", "average latency 12.5 ms < 500 ms"))
    assert promoted.subject == "movierec release of model version 4: promoted"
    assert promoted.body == "Version 4 now serves on every slot (was 3): average latency 12.5 ms < 500 ms."
    assert promoted.fields["canary_requests"] == 240.0 and promoted.fields["stable_errors"] == 1.0
    assert promoted.fields["commit"] == "f00d" and promoted.fields["recorded_in_mysql"] is True
    failed = release_notice(ReleaseResult(candidate=5, previous=4, outcome="failed", reason="interrupted",
                                          figures={"canary": {"no_data": "unreachable"}}))
    assert failed.subject.endswith("version 5: FAILED") and failed.fields["canary_no_data"] == "unreachable"
    assert "commit" not in failed.fields


def test_one_run_is_one_mail_and_one_slack_post(notify_settings, smtp_receiver, slack_receiver):
    delivery = Notifier(notify_settings).send_notice(run_notice(released_run("promoted", "gate passed")))
    assert sorted(delivery.sent) == ["email", "slack"]
    [mail] = smtp_receiver.messages
    assert "model version 4 promoted to stable" in mail["Subject"]
    assert "release: promoted" in mail.get_content() and "canary latency_ms: 12.5" in mail.get_content()
    [post] = slack_receiver.posts
    assert "canary requests: 240" in post["text"]
