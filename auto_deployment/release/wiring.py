"""Putting a release together: settings in, a controller with its real collaborators out.

`ReleaseSettings.from_env()` is the one place the release reads the environment (through
`app.settings`, where every variable and its default is documented); the CLI and the retraining
pipeline (the edges) call it once and pass the result down. The collaborators' own values
(`Progression`, `Tail`, `Quality`) are built here from the `Release` section. Everything below takes
explicit values, so a test or the pipeline can wire a release without touching the environment.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from app.contracts.topology import upstream_path
from app.settings import Monitoring, MySQL, Notify, Paths, Pipeline, Release, Serving
from auto_deployment.notices import Notifier
from auto_deployment.release.checks import ProportionCheck, Tail, default_checks
from auto_deployment.release.controller import Analysis, Controller
from auto_deployment.release.deploy import ComposeDeployer, NativeDeployer, StableVersion, slot_urls
from auto_deployment.release.metrics import MetricsQuery, Prometheus
from auto_deployment.release.quality import Quality, QualityFigures, WithQuality, log_events
from auto_deployment.release.recorder import MySQLRecorder
from auto_deployment.release.router import NginxRouter, NullRouter, Router
from auto_deployment.release.state import ReleaseResult, release_lock
from auto_deployment.release.steps import Progression

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseSettings:
    """Every setting a release uses, read once at the edge."""

    paths: Paths
    release: Release
    serving: Serving
    monitoring: Monitoring
    mysql: MySQL
    notify: Notify
    pipeline: Pipeline
    progression: Progression
    tail: Tail
    quality: Quality

    @classmethod
    def from_env(cls) -> ReleaseSettings:
        release = Release.from_env()
        return cls(Paths.from_env(), release, Serving.from_env(), Monitoring.from_env(), MySQL.from_env(),
                   Notify.from_env(), Pipeline.from_env(), Progression.from_settings(release),
                   Tail.from_settings(release), Quality.from_settings(release))

    def with_progression(self, **overrides: object) -> ReleaseSettings:
        """The same settings with some `Progression` values replaced (command-line options; None = keep)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, progression=dataclasses.replace(self.progression, **given))

    def with_release(self, **overrides: object) -> ReleaseSettings:
        """The same settings with some `Release` values replaced (command-line options; None = keep)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, release=dataclasses.replace(self.release, **given))


def build_deployer(
    settings: ReleaseSettings | None = None,
    runtime: str | None = None,
    urls: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    compose_hup: bool = False,
) -> NativeDeployer:
    """The deployer of `runtime` (`native` | `compose`; default `RELEASE_RUNTIME`), explicit values first."""
    settings = settings or ReleaseSettings.from_env()
    topology = settings.serving.topology
    runtime = runtime or settings.release.runtime
    chosen = slot_urls(topology, settings.release.slot_urls)
    chosen.update(urls or {})
    timeout = settings.release.deploy_timeout_s if timeout_s is None else timeout_s
    if runtime == "native":
        return NativeDeployer(settings.paths.run_dir, chosen, timeout_s=timeout, topology=topology)
    if runtime == "compose":
        return ComposeDeployer(settings.paths.run_dir, chosen, hup=compose_hup, timeout_s=timeout, topology=topology)
    raise ValueError(f"unknown runtime {runtime!r}: native or compose")


def build_router(settings: ReleaseSettings, runtime: str | None = None) -> Router:
    """NGINX's weights: natively once nginx.conf includes the router's upstream file, in compose once the
    ``upstream`` volume (with the file model-init wrote) is mounted; else traffic is left alone."""
    run_dir = settings.paths.run_dir
    runtime = runtime or settings.release.runtime
    if runtime == "native" and NginxRouter.includes_upstream(run_dir):
        return NginxRouter.native(settings.serving.topology, run_dir)
    if runtime == "compose" and upstream_path(run_dir).is_file():
        return NginxRouter.compose(settings.serving.topology, run_dir)
    return NullRouter()


def build_controller(
    settings: ReleaseSettings,
    *,
    runtime: str | None = None,
    slot_urls: Mapping[str, str] | None = None,
    deploy_timeout_s: float | None = None,
    compose_hup: bool = False,
    prometheus_url: str | None = None,
    notify: bool = True,
    router: Router | None = None,
    stop: threading.Event | None = None,
) -> Controller:
    """A controller with the real collaborators; `notify=False` when the caller sends the notice itself."""
    topology = settings.serving.topology
    paths = settings.paths
    checks = default_checks(settings.release, settings.tail)
    metrics: MetricsQuery = Prometheus(prometheus_url or settings.monitoring.prometheus_url, topology)
    if settings.quality.event_log is not None:  # model quality online: the canary's lists vs stable's
        from auto_deployment.monitor.online_eval import ProvenanceAttributor

        checks = (*checks, settings.quality.check())
        metrics = WithQuality(metrics, QualityFigures(log_events(settings.quality.event_log),
                                                      ProvenanceAttributor(settings.mysql), topology))
    return Controller(
        topology=topology,
        deployer=build_deployer(settings, runtime, slot_urls, deploy_timeout_s, compose_hup),
        metrics=metrics,
        recorder=MySQLRecorder(settings.mysql),
        stable=StableVersion(paths.version_file, paths.run_dir, settings.pipeline.repo_dir,
                             settings.pipeline.git_remote),
        models_dir=paths.models_dir,
        run_dir=paths.run_dir,
        analysis=spread_checks(Analysis(settings.release.observe_s, checks, settings.progression)),
        notifier=Notifier(settings.notify) if notify else None,
        router=router or build_router(settings, runtime),
        stop=stop,
    )


def release_version(candidate: int, settings: ReleaseSettings, *, notify: bool = True,
                    stop: threading.Event | None = None, **wiring: object) -> ReleaseResult:
    """Python API (the retraining pipeline): release `candidate` under the lock; raises ReleaseLocked/ReleaseRefused."""
    controller = build_controller(settings, notify=notify, stop=stop, **wiring)
    with release_lock(settings.paths.run_dir, candidate):
        return controller.run(candidate)


def spread_checks(analysis: Analysis) -> Analysis:
    """The analysis with each repeated statistical check's error spread over the looks the release plans."""
    looks = analysis.live_looks
    checks = tuple(c.spread_over(looks) if isinstance(c, ProportionCheck) else c for c in analysis.checks)
    return dataclasses.replace(analysis, checks=checks)
