"""The release controller's own metrics: `<run>/metrics/release.prom`, read back with prometheus_client's
parser and through the exporter's real `TextfileCollector`, and the Grafana panels that chart them.

Expected values are worked out by hand from the scripted figures (module `test_steps`' harness).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auto_deployment.monitor.online_eval import TextfileCollector
from auto_deployment.release.metrics import Measurement
from auto_deployment.release.state import OBSERVE, ReleaseState
from auto_deployment.release.steps import Step
from auto_deployment.release.textfile import ReleaseMetrics, render
from tests.release.test_steps import Script, good, make

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "model_quality.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text (the parser refuses a malformed file)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


STATE = ReleaseState(
    candidate=7, previous=6, state=OBSERVE, step=2, step_started=1000.0,
    gate={"steps": [Step("shadow", 0.0, True).to_dict(), Step("5%", 0.05).to_dict(), Step("20%", 0.2).to_dict(),
                    Step("50%", 0.5).to_dict()]},
    checks=[{"name": "latency", "status": "passed", "value": 12.5, "limit": 500.0, "text": "ok"},
            {"name": "error_ratio", "status": "failed", "value": 0.02, "limit": 0.01, "text": "too many 5xx"},
            {"name": "p99_vs_stable", "status": "inconclusive", "value": 31.0, "limit": None, "text": "no stable"}],
)


def test_the_textfile_of_a_release_in_a_step_parses_with_hand_checked_values():
    parsed = samples(render(STATE, {"started": 3, "promoted": 1, "aborted": 1}))
    assert value(parsed, "release_active") == 1.0
    assert value(parsed, "release_info", candidate="7", previous="6", state="OBSERVE", outcome="") == 1.0
    assert value(parsed, "release_step", step="20%") == 3.0 and value(parsed, "release_steps") == 4.0
    assert value(parsed, "release_canary_weight") == 0.2 and value(parsed, "release_shadow") == 0.0
    assert value(parsed, "release_paused") == 0.0 and value(parsed, "release_awaiting_approval") == 0.0
    assert value(parsed, "release_check_value", check="latency") == 12.5
    assert value(parsed, "release_check_limit", check="latency") == 500.0
    assert value(parsed, "release_check_verdict", check="latency") == 1.0
    assert value(parsed, "release_check_verdict", check="error_ratio") == 0.0
    assert value(parsed, "release_check_verdict", check="p99_vs_stable") == -1.0
    assert ("release_check_limit", (("check", "p99_vs_stable"),)) not in parsed  # no limit: no sample
    assert [value(parsed, "releases_total", event=e) for e in ("started", "promoted", "aborted", "failed")] == [
        3.0, 1.0, 1.0, 0.0]


def test_the_shadow_step_has_no_weight_and_a_finished_release_no_step():
    shadow = samples(render(ReleaseState(candidate=2, previous=1, state=OBSERVE, step=0, step_started=1.0,
                                         gate=STATE.gate), {}))
    assert value(shadow, "release_canary_weight") == 0.0 and value(shadow, "release_shadow") == 1.0
    assert value(shadow, "release_step", step="shadow") == 1.0
    done = samples(render(ReleaseState(candidate=2, previous=1, state="DONE", outcome="promoted", gate=STATE.gate,
                                       checks=STATE.checks), {"started": 1, "promoted": 1}))
    assert value(done, "release_active") == 0.0
    assert value(done, "release_info", candidate="2", previous="1", state="DONE", outcome="promoted") == 1.0
    assert not [name for name, _ in done if name.startswith(("release_step", "release_check", "release_canary"))]
    assert samples(render(None, {}))[("release_active", ())] == 0.0
    deploying = samples(render(ReleaseState(candidate=2, previous=1, gate=STATE.gate), {}))  # DEPLOY_CANARY
    assert value(deploying, "release_active") == 1.0 and ("release_canary_weight", ()) not in deploying


def test_a_running_release_writes_its_metrics_each_interval_and_counts_its_outcomes(tmp_path, models_root):
    # step 2 (20 %): canary average 30 ms, p99 60 ms over 1000 answers, none failed; stable 20 ms, p99 40 ms
    def canary(n: int, step: int) -> Measurement:
        return good(latency_ms=30.0) if step == 2 else good()

    controller, *_ = make(tmp_path, models_root, Script(canary), steps="shadow,5,20,50")
    written: list[str] = []
    original = controller.gauges.write

    def keep(state) -> None:
        original(state)
        written.append(controller.gauges.path.read_text())

    controller.gauges.write = keep  # type: ignore[method-assign]
    assert controller.run(2).outcome == "promoted"

    in_step = [samples(t) for t in written if ("release_step", (("step", "20%"),)) in samples(t)
               and ("release_check_value", (("check", "latency"),)) in samples(t)
               and value(samples(t), "release_check_value", check="latency") == 30.0]
    assert in_step, "no textfile written after an interval of the 20 % step"
    m = in_step[-1]
    assert value(m, "release_step", step="20%") == 3.0 and value(m, "release_canary_weight") == 0.2
    assert value(m, "release_check_limit", check="latency") == 500.0  # the card's gate
    # latency vs stable: 1.5 x 20 ms + 5 ms slack = 35 ms; p99 vs stable: 2 x 40 ms + 10 ms = 90 ms
    assert value(m, "release_check_limit", check="latency_vs_stable") == 35.0
    assert value(m, "release_check_value", check="p99_vs_stable") == 60.0
    assert value(m, "release_check_limit", check="p99_vs_stable") == 90.0
    assert value(m, "release_check_value", check="error_ratio") == 0.0
    assert value(m, "release_check_limit", check="error_ratio") == 0.01
    assert {value(m, "release_check_verdict", check=c) for c in
            ("latency", "latency_vs_stable", "p99_vs_stable", "error_ratio")} == {1.0}

    # a second release, aborted at once (the canary 1 s slow): the counters span both release processes
    slow = Script(lambda n, step: good(latency_ms=1000.0))
    second, *_ = make(tmp_path, models_root, slow, steps="50")  # version 1 stable again, version 2 once more
    assert second.run(2).outcome == "aborted"
    final = samples(ReleaseMetrics(tmp_path / "run").path.read_text())
    assert value(final, "release_active") == 0.0
    assert [value(final, "releases_total", event=e) for e in ("started", "promoted", "aborted", "failed")] == [
        2.0, 1.0, 1.0, 0.0]

    # the exporter Prometheus scrapes serves the file as it is
    registry = CollectorRegistry()
    registry.register(TextfileCollector(tmp_path / "run" / "metrics"))
    served = samples(generate_latest(registry).decode())
    assert value(served, "releases_total", event="aborted") == 1.0
    assert value(served, "release_info", candidate="2", previous="1", state="DONE", outcome="aborted") == 1.0


def test_the_release_row_of_the_dashboard_charts_metrics_the_controller_writes():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    (row,) = [p for p in panels if p["type"] == "row" and p["title"] == "Release"]
    below = [p for p in panels if p["type"] != "row" and p["gridPos"]["y"] > row["gridPos"]["y"]]
    exprs = [t["expr"] for p in below for t in p["targets"]]
    referenced = {name for expr in exprs for name in re.findall(r"\breleases?_[a-z_]+", expr)}
    running = ReleaseState(**{**STATE.__dict__, "paused_at": 1.0, "awaiting_since": 2.0})
    written = {name for name, _ in samples(render(running, {"started": 1}))}
    assert referenced and referenced <= written, referenced - written
    assert {"release_step", "release_canary_weight", "release_check_value", "release_check_limit",
            "releases_total"} <= referenced
    titles = {p["title"] for p in below}
    assert {"Release step", "Canary weight", "Release checks: value vs limit"} <= titles
