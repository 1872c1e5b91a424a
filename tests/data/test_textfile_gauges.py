"""The online-evaluation exporter serves the pipeline's gauge files, so the drift alert has data to fire on."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from auto_deployment.monitor import drift
from auto_deployment.monitor.online_eval import TextfileCollector
from tests.data.test_drift import LOOSE, frame, reference_table


def scrape(folder) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(TextfileCollector(folder))
    text = generate_latest(registry).decode()
    return {(s.name, s.labels.get("check", "")): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_drift_gauges_written_by_a_run_are_served_and_re_read_at_each_scrape(tmp_path):
    metrics = tmp_path / "metrics"
    shifted = drift.compute(reference_table(), frame([(0, "movie+0", 5.0, 5000)] * 3), LOOSE)
    drift.write_gauges(shifted, metrics / drift.TEXTFILE)
    first = scrape(metrics)
    assert first[("movierec_drift_detected", "")] == 1
    assert first[("movierec_drift_value", "rating_psi")] == shifted.value("rating_psi")

    ref = reference_table()
    calm = drift.compute(ref, drift.window_of(ref, ref.assign(timestamp=ref["timestamp"] + 10_000)), LOOSE)
    drift.write_gauges(calm, metrics / drift.TEXTFILE)  # the next run's figures replace the last ones
    assert scrape(metrics)[("movierec_drift_detected", "")] == 0
    assert not calm.drifted


def test_a_corrupt_gauge_file_is_skipped_and_the_others_still_served(tmp_path):
    metrics = tmp_path / "metrics"
    drift.write_gauges(drift.compute(reference_table(), frame([(0, "movie+0", 5.0, 5000)] * 3), LOOSE),
                       metrics / drift.TEXTFILE)
    (metrics / "broken.prom").write_text("movierec_x{check=\"unterminated} 1\n")
    assert scrape(metrics)[("movierec_drift_window_ratings", "")] == 3


def test_no_folder_means_no_series_not_an_error(tmp_path):
    assert scrape(tmp_path / "absent") == {}
