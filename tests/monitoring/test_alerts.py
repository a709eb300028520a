"""``monitoring/alerts.yml`` passes Prometheus' own checks: ``promtool check rules``, and ``promtool test rules``
on ``monitoring/alerts-test.yml``, which has a case where each alert fires and one where it does not."""

from __future__ import annotations

import re

from tests.monitoring.expressions import ALERTS, ALERTS_TEST, promtool, rules


def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS" in promtool("check", "rules", ALERTS.name)


def test_promtool_runs_the_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", ALERTS_TEST.name)


def test_every_alert_is_tested_firing_and_not() -> None:
    alerts = {name for name, _ in rules(ALERTS.read_text()) if not name.startswith("klined:")}
    text = ALERTS_TEST.read_text()
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", text)
    assert len(cases) == text.count("alertname:"), "each alertname is followed by its exp_alerts"
    fires = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert alerts - fires == set(), "alerts with no case where they fire"
    assert alerts - quiet == set(), "alerts with no case where they do not fire"
    assert (fires | quiet) <= alerts


def test_every_alert_has_for_severity_and_annotations() -> None:
    text = ALERTS.read_text()
    blocks = re.split(r"\n(?=\s*- (?:alert|record):)", text)[1:]
    alerts = [b for b in blocks if re.match(r"\s*- alert:", b)]
    assert len(alerts) == len([n for n, _ in rules(text) if not n.startswith("klined:")])
    for block in alerts:
        name = block.split()[2]
        assert re.search(r"\n\s+for: \d+[smh]\n", block), f"{name}: no for:"
        assert re.search(r"\n\s+severity: (critical|warning)\n", block), f"{name}: no severity"
        assert re.search(r"\n\s+summary: .+\n", block), f"{name}: no summary"
        assert re.search(r"\n\s+description: .+", block), f"{name}: no description"


def test_the_readme_explains_every_alert() -> None:
    alerts = [name for name, _ in rules(ALERTS.read_text()) if not name.startswith("klined:")]
    explained = re.findall(r"^\| `(Klined\w+)` \|", (ALERTS.parent / "README.md").read_text(), re.MULTILINE)
    assert explained == alerts
