"""The retraining run's notice: one per run, and when the run released its version, the release's figures."""

from __future__ import annotations

from auto_deployment.pipeline import RunReport, StepRecord, notice
from auto_deployment.release.controller import HeldNotifier


def released_run(outcome: str, reason: str) -> RunReport:
    figures = {"canary": {"latency_ms": 12.5, "error_ratio": 0.0, "requests": 240.0, "errors": 0.0},
               "stable": {"latency_ms": 11.0, "error_ratio": 0.001, "requests": 960.0, "errors": 1.0}}
    report = RunReport(run_id="r1", started="2026-11-24T10:00:00Z", version=4, rmse=0.91, rmse_gate=1.0,
                       outcome="released" if outcome == "promoted" else "release_aborted")
    report.steps = [StepRecord("version", "ok", 1.0, {"commit": "abc123"}),
                    StepRecord("release", "ok", 30.0, {"outcome": outcome, "reason": reason, "figures": figures})]
    if outcome != "promoted":
        report.reason, report.failed_step = reason, "release"
    return report


def test_a_promoted_run_notice_carries_the_canary_and_stable_figures():
    subject, _body, fields = notice(released_run("promoted", "gate passed"), {})
    assert "version 4 promoted to stable" in subject
    assert fields["release"] == "promoted" and fields["release reason"] == "gate passed"
    assert (fields["canary latency_ms"], fields["canary requests"]) == (12.5, 240.0)
    assert (fields["stable latency_ms"], fields["stable error_ratio"]) == (11.0, 0.001)


def test_an_aborted_release_says_why_once():
    reason = "canary latency 612 ms >= 500 ms"
    subject, body, fields = notice(released_run("aborted", reason), {})
    assert "release not promoted" in subject and reason in body
    assert fields["release"] == "aborted" and fields["reason"] == reason
    assert "release reason" not in fields  # the run's reason is the release's: not said twice


def test_a_run_without_a_release_has_no_release_fields():
    report = RunReport(run_id="r2", started="2026-11-24T10:00:00Z", outcome="refused", reason="RMSE 1.02 >= 1.0",
                       failed_step="gate")
    _subject, _body, fields = notice(report, {})
    assert not any(key.startswith(("release", "canary", "stable")) for key in fields)


def test_the_held_notifier_sends_nothing_and_says_so():
    delivery = HeldNotifier().send("release of model version 4: promoted", "body", {})
    assert delivery.sent == [] and not delivery.failed and "retraining run" in delivery.skipped["all"]
