"""Every setting of the platform, read from the environment in this one module.

Each setting has a documented default so that a fresh checkout runs on loopback with no
configuration. Secrets (SMTP password, Slack webhook, MySQL passwords in production) have no
default value in the repository: they come from the environment or from an env file that git
ignores. ``python -m app.settings`` prints the table of every variable, its default and meaning.

`app/` is what runs in a serving container; `auto_deployment/` imports this module too (never the
other way round), so there is exactly one place where names and defaults live.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from app.contracts.topology import Topology, topology

ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}={raw!r} is not an integer") from exc


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"setting {name}={raw!r} is not a number") from exc


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _doc(default_env: str, help_text: str, default: Any = MISSING):
    """A dataclass field remembering its environment variable and meaning for the docs table.

    `default` only for fields added after callers construct the section by hand (they keep working).
    """
    return field(default=default, metadata={"env": default_env, "help": help_text})


@dataclass(frozen=True)
class Paths:
    data_dir: Path = _doc("MOVIEREC_DATA_DIR", "cleaned tables tracked by DVC (data.dvc)")
    models_dir: Path = _doc("MOVIEREC_MODELS_DIR", "model bundles, one folder per version")
    run_dir: Path = _doc("MOVIEREC_RUN_DIR", "pids, logs, sockets and spools of running parts")
    version_file: Path = _doc("MOVIEREC_VERSION_FILE", "number of the latest version that passed the gate")
    cache_dir: Path = _doc("MOVIEREC_CACHE_DIR", "downloaded datasets (MovieLens-100k)")

    @classmethod
    def from_env(cls) -> Paths:
        return cls(
            data_dir=Path(_env("MOVIEREC_DATA_DIR", str(ROOT / "data"))),
            models_dir=Path(_env("MOVIEREC_MODELS_DIR", str(ROOT / "models"))),
            run_dir=Path(_env("MOVIEREC_RUN_DIR", str(ROOT / ".run"))),
            version_file=Path(_env("MOVIEREC_VERSION_FILE", str(ROOT / "version.txt"))),
            cache_dir=Path(_env("MOVIEREC_CACHE_DIR", str(Path.home() / ".cache" / "movierec"))),
        )


@dataclass(frozen=True)
class Serving:
    slot: str = _doc("MOVIEREC_SLOT", "slot this server plays: stable_1, stable_2 or canary")
    port: int = _doc("MOVIEREC_PORT", "port the inference server listens on")
    host: str = _doc("MOVIEREC_HOST", "address the inference server binds (0.0.0.0 = every interface)")
    workers: int = _doc("MOVIEREC_WORKERS", "gunicorn worker processes")
    model_dir: str = _doc("MOVIEREC_MODEL_DIR", "serve this bundle directly (overrides the pointer)")
    pointer_file: str = _doc("MOVIEREC_POINTER", "file naming the version this slot serves (<run>/slots/<slot>)")
    reload_poll_s: float = _doc("MOVIEREC_RELOAD_POLL_S", "how often a worker checks its pointer for a new version")
    fault_latency_ms: float = _doc("MOVIEREC_FAULT_LATENCY_MS", "fault injection: added ms per /recommend (drills)")
    fault_error_ratio: float = _doc("MOVIEREC_FAULT_ERROR_RATIO", "fault injection: share of /recommend answered 503")
    metrics_dir: str = _doc("PROMETHEUS_MULTIPROC_DIR", "prometheus-client multiprocess directory")
    slot_ports: str = _doc("MOVIEREC_SLOT_PORTS", "slot ports in the native stack: one per slot in topology order, "
                            "or SLOT=PORT pairs; empty = the topology's own")

    @classmethod
    def from_env(cls) -> Serving:
        slot = _env("MOVIEREC_SLOT", "stable_1")
        paths = Paths.from_env()
        return cls(
            slot=slot,
            port=_env_int("MOVIEREC_PORT", 5001),
            host=_env("MOVIEREC_HOST", "0.0.0.0"),
            workers=_env_int("MOVIEREC_WORKERS", 2),
            model_dir=_env("MOVIEREC_MODEL_DIR", ""),
            pointer_file=_env("MOVIEREC_POINTER", str(paths.run_dir / "slots" / slot)),
            reload_poll_s=_env_float("MOVIEREC_RELOAD_POLL_S", 0.5),
            fault_latency_ms=_env_float("MOVIEREC_FAULT_LATENCY_MS", 0.0),
            fault_error_ratio=_env_float("MOVIEREC_FAULT_ERROR_RATIO", 0.0),
            metrics_dir=_env("PROMETHEUS_MULTIPROC_DIR", str(paths.run_dir / "metrics" / slot)),
            slot_ports=_env("MOVIEREC_SLOT_PORTS", ""),
        )

    @cached_property
    def topology(self) -> Topology:
        """The slot topology (`app.contracts.topology`) on the ports `MOVIEREC_SLOT_PORTS` names."""
        return topology(self.slot_ports)

    def port_of(self, slot: str) -> int:
        """Port of `slot` in the native stack."""
        return self.topology.slot(slot).port

    @cached_property
    def role(self) -> str:
        """`stable` or `canary`, the value of the X-Slot header (design section 2)."""
        return self.topology.role_of(self.slot)


SPOOL_MAX_BYTES = 6 * 1024**3  # see MySQL.spool_max_bytes


@dataclass(frozen=True)
class MySQL:
    host: str = _doc("MYSQL_HOST", "MySQL/MariaDB host")
    port: int = _doc("MYSQL_PORT", "MySQL/MariaDB port")
    database: str = _doc("MYSQL_DATABASE", "provenance database name")
    app_user: str = _doc("MYSQL_APP_USER", "account of the inference servers (insert reccom, read tracking)")
    app_password: str = _doc("MYSQL_APP_PASSWORD", "its password (secret; local default only for loopback)")
    auditor_user: str = _doc("MYSQL_AUDITOR_USER", "read-only account of auditors")
    auditor_password: str = _doc("MYSQL_AUDITOR_PASSWORD", "its password (secret)")
    admin_user: str = _doc("MYSQL_ADMIN_USER", "account that applies the schema (and tests/repairs)")
    admin_password: str = _doc("MYSQL_ADMIN_PASSWORD", "its password (secret)")
    enabled: bool = _doc("MOVIEREC_PROVENANCE", "write provenance rows (set 0 to benchmark without)")
    batch_size: int = _doc("MOVIEREC_PROVENANCE_BATCH", "rows per INSERT batch")
    flush_interval_s: float = _doc("MOVIEREC_PROVENANCE_FLUSH_S", "longest wait of a row before its batch is written")
    connect_timeout_s: float = _doc("MOVIEREC_MYSQL_TIMEOUT_S", "connect/read/write timeout towards MySQL")
    spool_dir: str = _doc("MOVIEREC_SPOOL_DIR", "on-disk spool while MySQL is unreachable")
    # A day's outage at 200 req/s, all of it on one slot: 200 x 86,400 = 17.28 M rows x ~320 B a spooled
    # line (two 32-hex ids, 20 movie ids, keys) = 5.5 GB; 6 GiB holds ~20 M rows, ~28 h. Past it rows are
    # dropped and counted (provenance_rows_total{outcome="dropped"}), serving goes on.
    spool_max_bytes: int = _doc("MOVIEREC_SPOOL_MAX_BYTES", "cap of the spool directory; newer rows past it "
                                "are dropped and counted (default 6 GiB: a day at 200 req/s)", SPOOL_MAX_BYTES)
    dead_letter_dir: str = _doc("MOVIEREC_DEAD_LETTER_DIR", "refused rows and unreadable spool lines/files, with "
                                "the reason (default <spool_dir>.dead-letter)", "")
    # A few µs per answer buy back the rows a SIGKILLed/OOM-killed worker held in memory (app/provenance.py).
    journal: bool = _doc("MOVIEREC_PROVENANCE_JOURNAL", "keep each worker's queued rows in a journal file in the "
                         "spool dir, so a killed worker's rows are replayed by another (default on)", True)
    # added after callers built MySQL(...) by hand: defaults keep them working (same values as from_env)
    pipeline_user: str = _doc("MYSQL_PIPELINE_USER", "account of the scheduler/pipeline (writes tracking, "
                              "inserts releases; nothing else)", "movierec_pipeline")
    pipeline_password: str = _doc("MYSQL_PIPELINE_PASSWORD", "its password (secret)", "local-pipeline")
    verify_tracking: bool = _doc("MOVIEREC_VERIFY_TRACKING", "a slot refuses a bundle whose checksum differs from "
                                 "its version's tracking row (no row or MySQL down: served, logged unverified)", True)

    @classmethod
    def from_env(cls) -> MySQL:
        paths = Paths.from_env()
        slot = _env("MOVIEREC_SLOT", "stable_1")
        return cls(
            host=_env("MYSQL_HOST", "127.0.0.1"),
            port=_env_int("MYSQL_PORT", 3306),
            database=_env("MYSQL_DATABASE", "provenance"),
            app_user=_env("MYSQL_APP_USER", "movierec_app"),
            app_password=_env("MYSQL_APP_PASSWORD", "local-app"),
            auditor_user=_env("MYSQL_AUDITOR_USER", "movierec_auditor"),
            auditor_password=_env("MYSQL_AUDITOR_PASSWORD", "local-auditor"),
            admin_user=_env("MYSQL_ADMIN_USER", "movierec_admin"),
            admin_password=_env("MYSQL_ADMIN_PASSWORD", "local-admin"),
            enabled=_env_bool("MOVIEREC_PROVENANCE", True),
            batch_size=_env_int("MOVIEREC_PROVENANCE_BATCH", 200),
            flush_interval_s=_env_float("MOVIEREC_PROVENANCE_FLUSH_S", 0.5),
            connect_timeout_s=_env_float("MOVIEREC_MYSQL_TIMEOUT_S", 2.0),
            spool_dir=_env("MOVIEREC_SPOOL_DIR", str(paths.run_dir / "spool" / slot)),
            spool_max_bytes=_env_int("MOVIEREC_SPOOL_MAX_BYTES", SPOOL_MAX_BYTES),
            dead_letter_dir=_env("MOVIEREC_DEAD_LETTER_DIR", ""),
            journal=_env_bool("MOVIEREC_PROVENANCE_JOURNAL", True),
            pipeline_user=_env("MYSQL_PIPELINE_USER", "movierec_pipeline"),
            pipeline_password=_env("MYSQL_PIPELINE_PASSWORD", "local-pipeline"),
            verify_tracking=_env_bool("MOVIEREC_VERIFY_TRACKING", True),
        )


@dataclass(frozen=True)
class Monitoring:
    prometheus_url: str = _doc("PROMETHEUS_URL", "Prometheus HTTP API base URL")
    prometheus_port: int = _doc("PROMETHEUS_PORT", "port of the native Prometheus")
    alertmanager_port: int = _doc("ALERTMANAGER_PORT", "port of the native Alertmanager")
    nginx_port: int = _doc("NGINX_PORT", "port NGINX answers /recommend on")
    nginx_status_port: int = _doc("NGINX_STATUS_PORT", "loopback port of NGINX's stub_status (metrics)")
    alert_webhook_url: str = _doc("ALERT_WEBHOOK_URL", "extra Alertmanager webhook receiver; empty = none")

    @classmethod
    def from_env(cls) -> Monitoring:
        port = _env_int("PROMETHEUS_PORT", 9090)
        return cls(
            prometheus_url=_env("PROMETHEUS_URL", f"http://127.0.0.1:{port}"),
            prometheus_port=port,
            alertmanager_port=_env_int("ALERTMANAGER_PORT", 9093),
            nginx_port=_env_int("NGINX_PORT", 8082),
            nginx_status_port=_env_int("NGINX_STATUS_PORT", 8083),
            alert_webhook_url=_env("ALERT_WEBHOOK_URL", ""),
        )


@dataclass(frozen=True)
class Kafka:
    bootstrap: str = _doc("KAFKA_BOOTSTRAP", "Kafka bootstrap servers")
    topic: str = _doc("KAFKA_TOPIC", "topic of the simulator's event log")
    group: str = _doc("KAFKA_GROUP", "consumer group of the collector")

    @classmethod
    def from_env(cls) -> Kafka:
        return cls(
            bootstrap=_env("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            topic=_env("KAFKA_TOPIC", "movielog"),
            group=_env("KAFKA_GROUP", "movierec-collector"),
        )


@dataclass(frozen=True)
class Notify:
    smtp_host: str = _doc("SMTP_HOST", "mail server; empty = email notices are skipped (and logged)")
    smtp_port: int = _doc("SMTP_PORT", "mail server port")
    smtp_user: str = _doc("SMTP_USER", "SMTP login, empty for none")
    smtp_password: str = _doc("SMTP_PASSWORD", "SMTP password (secret)")
    smtp_starttls: bool = _doc("SMTP_STARTTLS", "use STARTTLS")
    mail_from: str = _doc("MAIL_FROM", "sender address")
    mail_to: str = _doc("MAIL_TO", "comma-separated recipients")
    slack_webhook: str = _doc("SLACK_WEBHOOK_URL", "Slack incoming webhook (secret); empty = skipped")
    timeout_s: float = _doc("NOTIFY_TIMEOUT_S", "timeout of one notice")

    @classmethod
    def from_env(cls) -> Notify:
        return cls(
            smtp_host=_env("SMTP_HOST", ""),
            smtp_port=_env_int("SMTP_PORT", 25),
            smtp_user=_env("SMTP_USER", ""),
            smtp_password=_env("SMTP_PASSWORD", ""),
            smtp_starttls=_env_bool("SMTP_STARTTLS", False),
            mail_from=_env("MAIL_FROM", "movierec@localhost"),
            mail_to=_env("MAIL_TO", ""),
            slack_webhook=_env("SLACK_WEBHOOK_URL", ""),
            timeout_s=_env_float("NOTIFY_TIMEOUT_S", 5.0),
        )


@dataclass(frozen=True)
class Release:
    observe_s: float = _doc("RELEASE_OBSERVE_S", "canary observation window in seconds (12 h)")
    max_latency_ms: float = _doc("RELEASE_MAX_LATENCY_MS", "promote only if the canary's average latency is below")
    max_error_ratio: float = _doc("RELEASE_MAX_ERROR_RATIO",
                                  "promote only if the canary's 5xx ratio is at most (its upper confidence bound)")
    min_requests: int = _doc("RELEASE_MIN_REQUESTS", "fewest answers before the latency checks may judge")
    runtime: str = _doc("RELEASE_RUNTIME", "how slots are deployed: native (pointer files) or compose (+ SIGHUP)")
    slot_urls: str = _doc("RELEASE_SLOT_URLS", "slot=URL,... of each slot's own server; empty = loopback ports")
    deploy_timeout_s: float = _doc("RELEASE_DEPLOY_TIMEOUT_S", "longest wait for a slot to serve a new version")
    confidence: float = _doc("RELEASE_CONFIDENCE",
                             "level of the 5xx ratio's upper bound (0.95: 299 clean requests to claim < 1%)", 0.95)
    latency_vs_stable: float = _doc("RELEASE_LATENCY_VS_STABLE",
                                    "promote only if the canary's average latency is at most stable's times this", 1.5)
    latency_slack_ms: float = _doc("RELEASE_LATENCY_SLACK_MS",
                                   "ms added to that limit: a smaller difference is noise, not a regression", 5.0)
    # progression (auto_deployment.release.steps.Progression)
    steps: str = _doc("RELEASE_STEPS", "traffic steps of a release: shadow and percentages of live requests",
                      "shadow,5,20,50")
    interval_s: float = _doc("RELEASE_INTERVAL_S", "the checks run every this many seconds", 60.0)
    failure_limit: int = _doc("RELEASE_FAILURE_LIMIT", "failed intervals (in a whole release) that abort it", 2)
    inconclusive_limit: int = _doc("RELEASE_INCONCLUSIVE_LIMIT", "inconclusive intervals in a row past a step's "
                                   "time that abort (no data is never a pass)", 10)
    require_approval: bool = _doc("RELEASE_REQUIRE_APPROVAL", "after the last step passed, wait for `release "
                                  "--approve` before promoting (the checks keep running; 0 = promote at once)", False)
    # p99 vs stable (auto_deployment.release.checks.Tail)
    p99_vs_stable: float = _doc("RELEASE_P99_VS_STABLE", "promote only if the canary's p99 is at most stable's "
                                "times this", 2.0)
    p99_slack_ms: float = _doc("RELEASE_P99_SLACK_MS", "ms added to that limit (a p99 within one bucket is noise)",
                               10.0)
    p99_min_requests: int = _doc("RELEASE_P99_MIN_REQUESTS", "fewest answers before the p99 may judge (below, "
                                 "a p99 is the max of a handful)", 300)
    # model quality online (auto_deployment.release.quality.Quality)
    event_log: str = _doc("RELEASE_EVENT_LOG", "event log whose lists and watches judge the canary's quality "
                          "vs stable; empty = no quality check", "")
    quality_min_lists: int = _doc("RELEASE_QUALITY_MIN_LISTS", "fewest lists per side before the quality test "
                                  "may judge", 200)
    quality_confidence: float = _doc("RELEASE_QUALITY_CONFIDENCE", "level of the one-sided quality test", 0.95)

    @classmethod
    def from_env(cls) -> Release:
        return cls(
            observe_s=_env_float("RELEASE_OBSERVE_S", 12 * 3600.0),
            max_latency_ms=_env_float("RELEASE_MAX_LATENCY_MS", 500.0),
            max_error_ratio=_env_float("RELEASE_MAX_ERROR_RATIO", 0.01),
            min_requests=_env_int("RELEASE_MIN_REQUESTS", 20),
            runtime=_env("RELEASE_RUNTIME", "native"),
            slot_urls=_env("RELEASE_SLOT_URLS", ""),
            deploy_timeout_s=_env_float("RELEASE_DEPLOY_TIMEOUT_S", 120.0),
            confidence=_env_float("RELEASE_CONFIDENCE", 0.95),
            latency_vs_stable=_env_float("RELEASE_LATENCY_VS_STABLE", 1.5),
            latency_slack_ms=_env_float("RELEASE_LATENCY_SLACK_MS", 5.0),
            steps=_env("RELEASE_STEPS", "shadow,5,20,50"),
            interval_s=_env_float("RELEASE_INTERVAL_S", 60.0),
            failure_limit=_env_int("RELEASE_FAILURE_LIMIT", 2),
            inconclusive_limit=_env_int("RELEASE_INCONCLUSIVE_LIMIT", 10),
            require_approval=_env_bool("RELEASE_REQUIRE_APPROVAL", False),
            p99_vs_stable=_env_float("RELEASE_P99_VS_STABLE", 2.0),
            p99_slack_ms=_env_float("RELEASE_P99_SLACK_MS", 10.0),
            p99_min_requests=_env_int("RELEASE_P99_MIN_REQUESTS", 300),
            event_log=_env("RELEASE_EVENT_LOG", "").strip(),
            quality_min_lists=_env_int("RELEASE_QUALITY_MIN_LISTS", 200),
            quality_confidence=_env_float("RELEASE_QUALITY_CONFIDENCE", 0.95),
        )


@dataclass(frozen=True)
class Pipeline:
    rmse_gate: float = _doc("PIPELINE_RMSE_GATE", "a model is versioned only if its RMSE is below")
    collect_s: float = _doc("PIPELINE_COLLECT_S", "how long one run collects the stream (15 min)")
    min_new_ratings: int = _doc("PIPELINE_MIN_NEW_RATINGS", "data check: fewest new ratings for a run")
    every: str = _doc("SCHEDULE_EVERY", "retraining period, e.g. 2d, 6h, 30s")
    at: str = _doc("SCHEDULE_AT", "time of day of the run when the period is in days (HH:MM)")
    dvc_remote: str = _doc("DVC_REMOTE", "DVC remote URL or path (default <run>/dvc-remote)")
    git_remote: str = _doc("GIT_REMOTE", "git remote to push version commits to; empty = no push")
    max_unknown_share: float = _doc("PIPELINE_MAX_UNKNOWN_SHARE", "data check: max share of unknown users/movies")
    repo_dir: Path = _doc("MOVIEREC_REPO_DIR", "git + DVC repository that versions data/ and models/ (project root)")

    @classmethod
    def from_env(cls) -> Pipeline:
        return cls(
            rmse_gate=_env_float("PIPELINE_RMSE_GATE", 1.0),
            collect_s=_env_float("PIPELINE_COLLECT_S", 15 * 60.0),
            min_new_ratings=_env_int("PIPELINE_MIN_NEW_RATINGS", 1),
            every=_env("SCHEDULE_EVERY", "2d"),
            at=_env("SCHEDULE_AT", "03:00"),
            dvc_remote=_env("DVC_REMOTE", ""),
            git_remote=_env("GIT_REMOTE", ""),
            max_unknown_share=_env_float("PIPELINE_MAX_UNKNOWN_SHARE", 0.01),
            repo_dir=Path(_env("MOVIEREC_REPO_DIR", str(ROOT))),
        )


@dataclass(frozen=True)
class Drift:
    """Drift thresholds (auto_deployment.monitor.drift): PSI > 0.2 is the usual "significant shift",
    a Jensen-Shannon distance > 0.1 Evidently's default; tests build the section with its defaults."""

    psi_max: float = _doc("DRIFT_PSI_MAX", "drift: largest population stability index (ratings, popularity)", 0.2)
    js_max: float = _doc("DRIFT_JS_MAX", "drift: largest Jensen-Shannon distance (ratings, popularity)", 0.1)
    unknown_users_max: float = _doc("DRIFT_UNKNOWN_USERS_MAX", "drift: largest share of ratings by unknown users "
                                    "(new users arrive all the time)", 0.5)
    unknown_movies_max: float = _doc("DRIFT_UNKNOWN_MOVIES_MAX", "drift: largest share of unknown movies", 0.05)
    activity_ratio_max: float = _doc("DRIFT_ACTIVITY_RATIO_MAX", "drift: ratings per active user may change by "
                                     "at most this factor, either way", 3.0)
    min_ratings: int = _doc("DRIFT_MIN_RATINGS", "drift: a smaller window is reported, never flagged", 100)
    refuse: bool = _doc("PIPELINE_REFUSE_ON_DRIFT", "a pipeline run stops before training on drifted data", False)

    @classmethod
    def from_env(cls) -> Drift:
        d = cls()
        return cls(
            psi_max=_env_float("DRIFT_PSI_MAX", d.psi_max),
            js_max=_env_float("DRIFT_JS_MAX", d.js_max),
            unknown_users_max=_env_float("DRIFT_UNKNOWN_USERS_MAX", d.unknown_users_max),
            unknown_movies_max=_env_float("DRIFT_UNKNOWN_MOVIES_MAX", d.unknown_movies_max),
            activity_ratio_max=_env_float("DRIFT_ACTIVITY_RATIO_MAX", d.activity_ratio_max),
            min_ratings=_env_int("DRIFT_MIN_RATINGS", d.min_ratings),
            refuse=_env_bool("PIPELINE_REFUSE_ON_DRIFT", d.refuse),
        )


SECTIONS = (Paths, Serving, MySQL, Monitoring, Kafka, Notify, Release, Pipeline, Drift)


def describe() -> str:
    """Markdown table of every setting with its current value (secrets masked)."""
    rows = ["| variable | value | meaning |", "|---|---|---|"]
    for section in SECTIONS:
        current = section.from_env()
        for f in fields(section):
            value = str(getattr(current, f.name))
            secret = any(word in f.metadata["env"] for word in ("PASSWORD", "WEBHOOK"))
            if secret and value:
                value = "***"
            rows.append(f"| `{f.metadata['env']}` | `{value}` | {f.metadata['help']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe())
