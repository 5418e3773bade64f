"""The shipped alert rules (deploy/prometheus/): `promtool check rules` accepts them, their `promtool test rules`
unit tests pass, every alert has a case that fires and one where it stays silent, and every alert says what to
do and links its runbook section in docs/alerts.md."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.binaries import require_binary
from tests.support.processes import REPOSITORY

pytestmark = pytest.mark.timeout(120)

RULES_DIR = REPOSITORY / "deploy" / "prometheus"
RULES = RULES_DIR / "slashing-sidecar.rules.yml"
RULE_TESTS = RULES_DIR / "slashing-sidecar.rules.test.yml"
ALERTS_DOC = REPOSITORY / "docs" / "alerts.md"


def alerts() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool", "prometheus"), *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


def test_promtool_check_rules_accepts_the_rules_file() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    checks = [check for test in document["tests"] for check in test["alert_rule_test"]]
    fires = {check["alertname"] for check in checks if check.get("exp_alerts")}
    silent = {check["alertname"] for check in checks if not check.get("exp_alerts")}
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))
        for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE)
    }


def test_every_alert_says_what_to_do_and_links_its_runbook_section() -> None:
    known = anchors(ALERTS_DOC.read_text())
    for rule in alerts():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 80, name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/alerts.md" and anchor in known, (name, annotations["runbook_url"])
