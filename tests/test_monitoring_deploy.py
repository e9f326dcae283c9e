"""deploy/prometheus and deploy/grafana (SPEC 10): rules pass promtool, the dashboard's
metrics exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from personsd import metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "personsd.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "personsd.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "personsd.json"
REQUIRE_TOOLS = os.environ.get("PERSONSD_TEST_REQUIRE_TOOLS", "") not in ("", "0")
ALERTS = {
    "PersonsdImportFailed",
    "PersonsdTenantOverdue",
    "PersonsdQueueStuck",
    "PersonsdDatabaseDown",
    "PersonsdDiskNearlyFull",
    "PersonsdAddressBanned",
    "PersonsdWebhooksFailing",
    "PersonsdWebhookGaveUp",
}
_METRIC = re.compile(r"\bpersonsd_[a-z_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if REQUIRE_TOOLS:
            pytest.fail("promtool is missing (PERSONSD_TEST_REQUIRE_TOOLS is set)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent
    )


def test_promtool_checks_the_rules() -> None:
    """promtool check rules: the file is valid and holds every alert SPEC 10 lists."""
    done = run("check", "rules", RULES.name)
    assert 0 == done.returncode, done.stdout + done.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert ALERTS == names


def test_promtool_unit_tests_pass() -> None:
    """promtool test rules: each alert fires when it should and not before."""
    done = run("test", "rules", RULE_TESTS.name)
    assert 0 == done.returncode, done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    """One alert_rule_test at least per alert in personsd.rules.test.yml."""
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert ALERTS == tested


def test_the_overdue_alert_is_tested_quiet_at_20_h_and_firing_at_30_h() -> None:
    """The judged case: a 24 h cadence, nothing at 20 h, an alert at 30 h."""
    cases = {
        case["eval_time"]: bool(case["exp_alerts"])
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == "PersonsdTenantOverdue"
    }
    assert (False, True) == (cases["20h"], cases["30h"])


def test_promtool_fails_a_broken_expectation(tmp_path: Path) -> None:
    """The unit tests can fail: an overdue threshold moved to 1.3 x breaks the 30 h case."""
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("> 1.1 *", "> 1.3 *"))
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert 1 == done.returncode
    assert "PersonsdTenantOverdue" in done.stdout + done.stderr


def registered_names() -> set[str]:
    """Every series name the daemon's registry can expose, state gauges included."""
    collector = metrics.StateCollector(engine=None, root=Path("/"), sftp=lambda: None)  # type: ignore[arg-type]
    names = {sample_family.name for sample_family in collector.describe()}
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in data["templating"]["list"] if "definition" in v]
    return exprs


def test_every_metric_of_the_dashboard_exists() -> None:
    """No panel graphs a name the daemon does not export (a typo shows as 'No data')."""
    used = {name for expr in dashboard_exprs() for name in _METRIC.findall(expr)}
    assert used
    assert set() == used - registered_names()


def test_every_metric_of_the_rules_exists() -> None:
    """Alerts on a misspelt metric never fire."""
    used = set(_METRIC.findall(RULES.read_text())) | set(_METRIC.findall(RULE_TESTS.read_text()))
    assert set() == used - registered_names()


def test_the_dashboard_graphs_every_spec_metric() -> None:
    """Every SPEC 10 metric appears on at least one panel."""
    from test_metrics import SPEC_METRICS

    used = {name for expr in dashboard_exprs() for name in _METRIC.findall(expr)}
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert set() == SPEC_METRICS - base
