""".gitlab-ci.yml as GitLab reads it: its schema, the card's stages, JUnit from every test job, coverage gating.

The fast tests check the file with GitLab's own JSON schema (check-jsonschema vendors it), resolve `extends`
the way GitLab does, and run the Makefile recipes the jobs call (`make -n` for the stage jobs; the real
`make coverage` on a tiny coverage data file, 50% covered, which must fail under the project's threshold).
The slow tests install gitlab-ci-local (npm, into the git-ignored `.ci/node_modules`) and let it list the
pipeline and run the `test-data` job with its shell executor in this checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CI_FILE = ROOT / ".gitlab-ci.yml"
COMPOSE_FILE = ROOT / "compose.yml"
CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")
CARD_STAGES = ["test-data", "test-model", "test-app", "coverage", "deploy"]
TEST_JOBS = {"test-data": "data", "test-model": "model", "test-app": "app", "test-release": "release",
             "test-e2e": "e2e"}  # job -> tests/<folder> it runs (make test-<folder>)
# Top-level keys of a GitLab CI file that are not jobs.
RESERVED = {"stages", "variables", "default", "include", "workflow", "image", "services", "cache", "before_script",
            "after_script", "types", "pages:deploy"}
GITLAB_CI_LOCAL_VERSION = "4.60.0"  # 4.75 crashes on this Node (20)
NODE_PREFIX = ROOT / ".ci"
GITLAB_CI_LOCAL = NODE_PREFIX / "node_modules" / ".bin" / "gitlab-ci-local"


def _config() -> dict[str, Any]:
    return yaml.safe_load(CI_FILE.read_text())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """GitLab's `extends` merge: hashes deep-merged, everything else (lists too) replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve(config: dict[str, Any], name: str) -> dict[str, Any]:
    job = config[name]
    parents = job.get("extends", [])
    resolved: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        resolved = _merge(resolved, _resolve(config, parent))
    return _merge(resolved, {k: v for k, v in job.items() if k != "extends"})


def _jobs() -> dict[str, dict[str, Any]]:
    config = _config()
    return {name: _resolve(config, name) for name, value in config.items()
            if name not in RESERVED and not name.startswith(".") and isinstance(value, dict)}


def _make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # -o: the venv counts as up to date (this test must not reinstall the shared .venv)
    return subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _gitlab_regex(pattern: str) -> re.Pattern[str]:
    assert pattern.startswith("/") and pattern.endswith("/"), pattern
    return re.compile(pattern[1:-1])


def _gitlab_coverage(regex: re.Pattern[str], log: str) -> float | None:
    """What GitLab reads from a job log: the last matching line, its last group, the first number in it."""
    found = None
    for line in log.splitlines():
        match = regex.search(line)
        if match:
            found = match.groups()[-1] if match.groups() else match.group(0)
    if found is None:
        return None
    number = re.search(r"\d+(\.\d+)?", found)
    return float(number.group(0)) if number else None


def _project_threshold() -> float:
    return float(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["coverage"]["report"]["fail_under"])


# ---------------------------------------------------------------------- schema


def test_gitlab_ci_file_passes_gitlabs_own_schema():
    done = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.gitlab-ci", str(CI_FILE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_really_rejects_a_coverage_regex_gitlab_refuses(tmp_path: Path):
    broken = _config()
    broken["coverage"]["coverage"] = r"/^TOTAL.+?(\d+\%)$/"  # the pipeline's old regex: `\%` is no valid regex
    path = tmp_path / ".gitlab-ci.yml"
    path.write_text(yaml.safe_dump(broken))
    done = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.gitlab-ci", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "is not a 'regex'" in done.stdout


def test_compose_files_pass_the_compose_spec_schema():
    done = subprocess.run([CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE),
                           str(ROOT / "compose.ops.yml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------- stages and jobs


def test_stages_are_the_cards_in_order():
    assert _config()["stages"] == CARD_STAGES


def test_every_job_runs_in_a_declared_stage_and_every_stage_has_a_job():
    jobs = _jobs()
    stages = {job["stage"] for job in jobs.values()}
    assert stages <= set(CARD_STAGES), {name: job["stage"] for name, job in jobs.items()}
    assert stages == set(CARD_STAGES)
    assert {name: jobs[name]["stage"] for name in TEST_JOBS} == {
        "test-data": "test-data", "test-model": "test-model", "test-app": "test-app",
        "test-release": "test-app", "test-e2e": "test-app"}


def test_the_image_is_a_concrete_name_gitlab_can_pull():
    config = _config()
    image = config["default"]["image"]
    assert ":-" not in image and "${" not in image  # the runner does no shell expansion in `image:`
    variable = re.fullmatch(r"\$(\w+)", image)
    name = config["variables"][variable.group(1)] if variable else image
    assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+", name), name


@pytest.mark.parametrize("job_name", TEST_JOBS)
def test_every_test_job_writes_junit_and_its_coverage_data_as_artifacts(job_name: str):
    job = _jobs()[job_name]
    folder = TEST_JOBS[job_name]
    assert job["script"] == [f"make test-{folder}"]
    # what `make test-<folder>` really runs (make -n prints the recipe; the prerequisites' recipes too)
    done = _make("-n", f"test-{folder}")
    assert done.returncode == 0, done.stderr
    commands = done.stdout.replace("\\\n", " ").splitlines()  # one line per command: continuations joined
    pytest_line = next(line for line in commands if ".venv/bin/pytest" in line)
    junit = re.search(r"--junitxml=(\S+)", pytest_line).group(1)
    data_file = re.search(r"COVERAGE_FILE=(\S+)", pytest_line).group(1)
    data_file = str(Path(data_file).relative_to(ROOT)) if data_file.startswith("/") else data_file
    assert data_file == f"reports/coverage/.coverage.{folder}"
    assert f"tests/{folder}" in pytest_line and "--cov=app" in pytest_line
    artifacts = job["artifacts"]
    assert artifacts["when"] == "always"  # a failed job's JUnit is what a merge request shows
    assert fnmatch(junit, artifacts["reports"]["junit"]), (junit, artifacts["reports"]["junit"])
    assert any(data_file.startswith(path) for path in artifacts["paths"]), (data_file, artifacts["paths"])


def test_the_coverage_job_combines_the_data_of_every_test_job_without_running_tests():
    jobs = _jobs()
    job = jobs["coverage"]
    assert set(job["dependencies"]) == set(TEST_JOBS)
    done = _make("-n", "coverage")
    assert done.returncode == 0, done.stderr
    assert "pytest" not in done.stdout
    assert "coverage combine" in done.stdout and "coverage report" in done.stdout
    report = job["artifacts"]["reports"]["coverage_report"]
    assert report["coverage_format"] == "cobertura"
    assert f"-o {report['path']}" in done.stdout


def test_ci_caches_hold_pip_the_venv_the_kafka_jars_and_maven_inside_the_project():
    config = _config()
    variables = config["variables"]
    cached = {path.rstrip("/") for cache in config["default"]["cache"] for path in cache["paths"]}
    expected = {
        "PIP_CACHE_DIR": variables["PIP_CACHE_DIR"],
        "KAFKA_LIBS_DIR": variables["KAFKA_LIBS_DIR"],  # read by ops/kafka.sh
        "MOVIEREC_CACHE_DIR": variables["MOVIEREC_CACHE_DIR"],  # MovieLens
        "maven.repo.local": re.search(r"-Dmaven\.repo\.local=(\S+)", variables["MAVEN_OPTS"]).group(1),
    }
    for name, value in expected.items():
        assert value.startswith("$CI_PROJECT_DIR/"), (name, value)
        assert value.removeprefix("$CI_PROJECT_DIR/") in cached, (name, value, cached)
    assert ".venv" in cached
    assert "KAFKA_LIBS_DIR" in (ROOT / "ops" / "kafka.sh").read_text()


# ---------------------------------------------------------------------- the coverage gate, for real


def _half_covered_data(tmp_path: Path) -> Path:
    """A coverage data file of a module with one covered line (the def) and one uncovered (its body): 50%."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "half.py").write_text("def never_called():\n    return 1\n")
    stage = tmp_path / "reports" / "coverage"
    stage.mkdir(parents=True)
    data = stage / ".coverage.tiny"
    done = subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={data}", "half.py"], cwd=src,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return data


def test_coverage_report_fails_under_the_threshold_and_passes_at_it(tmp_path: Path):
    data = _half_covered_data(tmp_path)
    cwd = data.parent.parent.parent / "src"  # no coverage config there: only the command line's threshold

    def report(threshold: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coverage", "report", f"--data-file={data}",
                               f"--fail-under={threshold}"], cwd=cwd, capture_output=True, text=True, timeout=60)

    below = report(90)
    assert below.returncode == 2, below.stdout + below.stderr
    assert "TOTAL" in below.stdout and "50%" in below.stdout
    assert "total of 50 is less than fail-under=90" in below.stdout + below.stderr
    assert report(50).returncode == 0


def test_the_coverage_job_fails_on_half_covered_data_with_the_projects_threshold(tmp_path: Path):
    threshold = _project_threshold()
    assert threshold >= 90  # the card's bar
    _half_covered_data(tmp_path)
    reports = tmp_path / "reports"
    done = _make("coverage", f"REPORTS={reports}")
    log = done.stdout + done.stderr
    assert done.returncode != 0, log
    assert f"is less than fail-under={threshold:g}" in log
    # GitLab's coverage regex reads the combined total from the job log
    assert _gitlab_coverage(_gitlab_regex(_jobs()["coverage"]["coverage"]), done.stdout) == 50.0
    # Cobertura is written before the gate, so the merge request shows it even when the job fails
    cobertura = ET.parse(reports / "coverage.xml").getroot()
    assert cobertura.tag == "coverage" and float(cobertura.get("line-rate")) == 0.5


def test_the_coverage_job_passes_and_reports_the_total_on_fully_covered_data(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "full.py").write_text("def called():\n    return 1\n\n\ncalled()\n")
    stage = tmp_path / "reports" / "coverage"
    stage.mkdir(parents=True)
    for name in ("data", "model"):  # two stages' files, combined
        done = subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={stage / ('.coverage.' + name)}",
                               "full.py"], cwd=src, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    done = _make("coverage", f"REPORTS={tmp_path / 'reports'}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _gitlab_coverage(_gitlab_regex(_jobs()["coverage"]["coverage"]), done.stdout) == 100.0
    assert (stage / ".coverage.data").exists()  # --keep: the stage files stay (artifacts of their own jobs)
    assert (tmp_path / "reports" / "coverage.xml").exists()


def test_the_coverage_job_says_what_to_run_when_no_stage_left_data(tmp_path: Path):
    done = _make("coverage", f"REPORTS={tmp_path / 'reports'}")
    assert done.returncode != 0
    assert "run make test-<stage> first" in done.stderr


# ---------------------------------------------------------------------- gitlab-ci-local (slow)


@pytest.fixture(scope="module")
def gitlab_ci_local() -> Path:
    return install_gitlab_ci_local()


def install_gitlab_ci_local() -> Path:
    """gitlab-ci-local, installed by npm into the git-ignored .ci/node_modules (Node and npm from Debian if root).

    Also used by tests/e2e/test_compose.py, which runs the deploy job against its compose stack."""
    if GITLAB_CI_LOCAL.exists():
        version = subprocess.run([str(GITLAB_CI_LOCAL), "--version"], capture_output=True, text=True, timeout=60)
        if version.stdout.strip() == GITLAB_CI_LOCAL_VERSION:
            return GITLAB_CI_LOCAL
    if shutil.which("npm") is None:
        if os.geteuid() != 0:
            pytest.fail("npm is needed: sudo apt-get install -y --no-install-recommends nodejs npm")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for command in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nodejs", "npm"]):
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=900)
    done = subprocess.run(["npm", "install", "--prefix", str(NODE_PREFIX), "--no-save", "--no-audit", "--no-fund",
                           f"gitlab-ci-local@{GITLAB_CI_LOCAL_VERSION}"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return GITLAB_CI_LOCAL


@pytest.mark.slow
def test_gitlab_ci_local_lists_the_jobs_by_stage(gitlab_ci_local: Path):
    done = subprocess.run([str(gitlab_ci_local), "--list-json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = json.loads(done.stdout[done.stdout.index("["):])
    by_stage: dict[str, list[str]] = {}
    for job in listed:
        by_stage.setdefault(job["stage"], []).append(job["name"])
    assert list(by_stage) == CARD_STAGES
    assert by_stage == {"test-data": ["test-data"], "test-model": ["test-model"],
                        "test-app": ["test-app", "test-release", "test-e2e"], "coverage": ["coverage"],
                        "deploy": ["deploy"]}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gitlab_ci_local_runs_the_test_data_job_green_with_its_shell_executor(gitlab_ci_local: Path, tmp_path: Path):
    """The job's own script in this checkout (shell executor: no Docker), with warm caches as a second pipeline
    has them: the developer's MovieLens and Kafka jars stand in for the restored GitLab cache. The reports the
    job writes are checked, then put back as they were (inside CI's test-e2e job they must not pose as its own)."""
    cache = Path.home() / ".cache" / "movierec"
    junit = ROOT / "reports" / "junit" / "data.xml"
    data_file = ROOT / "reports" / "coverage" / ".coverage.data"
    saved = {}
    for path in (junit, data_file):
        if path.exists():
            saved[path] = tmp_path / path.name
            shutil.move(path, saved[path])
    try:
        done = subprocess.run([str(gitlab_ci_local), "test-data", "--force-shell-executor",
                               "--variable", f"MOVIEREC_CACHE_DIR={cache}",
                               "--variable", f"KAFKA_LIBS_DIR={cache / 'kafka-libs'}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=840)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-6000:]
        assert "$ make test-data" in log
        summary = re.findall(r"=+ (\d+) passed[^=]*=+", log)
        assert summary and int(summary[-1]) > 0, log[-3000:]
        suite = ET.parse(junit).getroot().find("testsuite")
        assert int(suite.get("tests")) > 0 and suite.get("failures") == "0" and suite.get("errors") == "0"
        assert data_file.stat().st_size > 0
    finally:
        for path in (junit, data_file):
            path.unlink(missing_ok=True)
        for path, copy in saved.items():
            shutil.move(copy, path)
