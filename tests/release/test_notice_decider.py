"""Notices name the check that decided a release, with its numbers, in a field of their own (design section 6.5).

Results are made by hand; the delivery goes to a real SMTP server and a real webhook receiver on loopback.
"""

from __future__ import annotations

from auto_deployment.notices import Notifier, RunSummary, decider_text, release_notice, run_notice
from auto_deployment.release.checks import CheckResult, ProportionCheck, Verdict, default_checks
from auto_deployment.release.controller import decider_of
from auto_deployment.release.metrics import Figures, NoData
from auto_deployment.release.state import ReleaseResult
from tests.release.test_steps import GATE, Script, good, make

CHECKS = default_checks(GATE)
CANARY = Figures({"requests": 1200.0, "quality_lists": 450.0}, "60s")


def result(status: str, value: float | None, limit: float | None, name: str = "latency") -> CheckResult:
    return CheckResult(name, status, value, limit, f"{name} {status}")


def test_a_failed_verdict_is_decided_by_its_first_failed_check_with_the_canary_sample():
    verdict = Verdict(False, "x", [result("passed", 20.0, 500.0), result("failed", 0.03, 0.01, "error_ratio"),
                                   result("failed", 90.0, 35.0, "latency_vs_stable")])
    decider = decider_of(CHECKS, verdict, CANARY)
    assert {k: decider[k] for k in ("name", "status", "value", "limit", "sample", "sample_of")} == {
        "name": "error_ratio", "status": "failed", "value": 0.03, "limit": 0.01, "sample": 1200.0,
        "sample_of": "requests"}


def test_a_passed_verdict_names_the_check_closest_to_its_limit():
    # margins |limit - value| / |limit|: latency (500 - 400) / 500 = 0.2; vs stable (35 - 33) / 35 = 0.057;
    # 5xx ratio (0.01 - 0.0) / 0.01 = 1: the comparison with stable came nearest to stopping the release
    verdict = Verdict(True, "x", [result("passed", 400.0, 500.0), result("passed", 33.0, 35.0, "latency_vs_stable"),
                                  result("passed", 0.0, 0.01, "error_ratio")])
    assert decider_of(CHECKS, verdict, CANARY)["name"] == "latency_vs_stable"


def test_inconclusive_no_data_and_a_proportion_check_name_their_own_sample():
    inconclusive = Verdict(False, "x", [result("passed", 20.0, 500.0), result("inconclusive", 40.0, None, "p99")])
    assert decider_of(CHECKS, inconclusive, CANARY)["name"] == "p99"
    no_data = decider_of(CHECKS, Verdict(False, "no data from Prometheus: down"), NoData("down"))
    assert (no_data["name"], no_data["sample"], no_data["text"]) == ("no_data", None, "no data from Prometheus: down")
    quality = ProportionCheck("quality_vs_stable", hits="quality_hits", sample="quality_lists", min_sample=200)
    verdict = Verdict(False, "x", [result("failed", 0.1, 0.15, "quality_vs_stable")])
    decider = decider_of((*CHECKS, quality), verdict, CANARY)
    assert (decider["sample"], decider["sample_of"]) == (450.0, "lists")


ABORTED = ReleaseResult(
    candidate=8, previous=7, outcome="aborted", reason="step 20%: failed 2 of 2 allowed interval(s): average latency",
    figures={"canary": {"latency_ms": 612.5, "requests": 980.0}}, started_at="2026-11-29T10:00:00.000Z",
    finished_at="2026-11-29T10:20:00.000Z",
    decider={"name": "latency", "status": "failed", "value": 612.5, "limit": 500.0, "sample": 980.0,
             "sample_of": "requests", "text": "average latency 612.5 ms >= 500 ms"},
)
LINE = "deciding check: latency (failed): value 612.5, limit 500, sample 980 requests"


def test_the_deciding_check_reaches_email_and_slack_in_a_field_of_its_own(notify_settings, smtp_receiver,
                                                                          slack_receiver):
    notice = release_notice(ABORTED)
    assert notice.fields["deciding check"] == "latency (failed): value 612.5, limit 500, sample 980 requests"
    assert list(notice.fields)[:4] == ["candidate", "previous", "outcome", "deciding check"]
    delivery = Notifier(notify_settings).send_notice(notice)
    assert sorted(delivery.sent) == ["email", "slack"]
    [mail] = smtp_receiver.messages
    assert LINE in mail.get_content().splitlines()
    [post] = slack_receiver.posts
    assert LINE in post["text"].splitlines()


def test_a_decision_by_hand_names_the_person_and_no_check():
    by_hand = ReleaseResult(candidate=8, previous=7, outcome="promoted", reason="promoted by hand by dave",
                            decided_by="dave")
    fields = release_notice(by_hand).fields
    assert fields["decided by"] == "dave" and "deciding check" not in fields
    assert decider_text(None) is None
    unknown = {"name": "p99", "status": "inconclusive", "value": 40.0, "limit": None, "sample": None}
    assert decider_text(unknown) == "p99 (inconclusive): value 40, limit unknown, sample unknown"


def test_a_run_notice_carries_its_release_deciding_check():
    run = RunSummary(run_id="r1", outcome="release_aborted", reason="release aborted", version=8, release=ABORTED)
    fields = run_notice(run).fields
    assert fields["release deciding check"] == "latency (failed): value 612.5, limit 500, sample 980 requests"


def test_an_aborted_release_result_carries_the_check_that_aborted_it(tmp_path, models_root):
    # canary 900 ms average over 1000 answers: the card's gate (< 500 ms) is the first check that fails
    controller, *_ = make(tmp_path, models_root, Script(lambda n, step: good(latency_ms=900.0)), steps="50")
    res = controller.run(2)
    assert res.outcome == "aborted"
    assert {k: res.decider[k] for k in ("name", "status", "value", "limit", "sample")} == {
        "name": "latency", "status": "failed", "value": 900.0, "limit": 500.0, "sample": 1000.0}
    assert release_notice(res).fields["deciding check"] == (
        "latency (failed): value 900, limit 500, sample 1000 requests")
