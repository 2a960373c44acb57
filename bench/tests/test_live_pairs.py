"""bench/live_pairs.py: the pairs read from bench/run.py's reports, and their median ratio."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from bench.tests.scripts import captured_commands, load_bench_script


@pytest.fixture(scope="module")
def live_pairs() -> ModuleType:
    return load_bench_script("live_pairs")


def report(ours: float, theirs: float, sim_ours: float, sim_theirs: float) -> dict[str, Any]:
    """What bench/run.py writes for --phases live,alertmanager (the parts read here)."""
    return {
        "results": {
            "live": {"incidents_per_s": ours, "cpu_s_by_process": {"simulator": sim_ours}},
            "alertmanager": {
                "live": {"incidents_per_s": theirs, "cpu_s_by_process": {"simulator": sim_theirs}}
            },
        }
    }


def test_a_report_gives_the_two_rates_and_the_simulators_cpu_per_alert(
    live_pairs: ModuleType,
) -> None:
    pair = live_pairs.pair_of(report(1024.0, 2018.0, 0.72, 0.48), alerts=3000)
    assert (pair.bridge_per_s, pair.alertmanager_per_s) == (1024.0, 2018.0)
    assert (pair.simulator_ms_bridge, pair.simulator_ms_alertmanager) == (0.24, 0.16)
    assert pair.ratio == pytest.approx(0.507, abs=0.001)


def test_a_report_without_alertmanagers_phase_gives_no_pair(live_pairs: ModuleType) -> None:
    broken = report(1000.0, 2000.0, 0.7, 0.5)
    del broken["results"]["alertmanager"]
    with pytest.raises(KeyError):
        live_pairs.pair_of(broken, alerts=3000)


def test_the_median_ratio_and_every_pair_are_reported(live_pairs: ModuleType) -> None:
    pairs = [
        live_pairs.pair_of(report(ours, theirs, 0.7, 0.5), alerts=3000)
        for ours, theirs in ((1000, 2000), (900, 2000), (1200, 2000), (700, 2000), (1100, 2000))
    ]
    figures = live_pairs.summary(pairs)
    assert (figures["median_ratio"], figures["min_ratio"], figures["max_ratio"]) == (
        0.5,
        0.35,
        0.6,
    )
    assert [pair["ratio"] for pair in figures["pairs"]] == [0.5, 0.45, 0.6, 0.35, 0.55]
    text = live_pairs.table(figures)
    assert "| 4 | 700/s | 2,000/s | 0.35x | n/a | n/a / n/a | n/a / n/a | 0.23 / 0.17 |" in text
    assert "Median ratio over 5 runs: **0.50x** (from 0.35x to 0.60x)" in text


@pytest.mark.parametrize(
    ("option", "value"), [("--live-warm-up", "0"), ("--calls-in-flight", "4"), ("--workers", "3")]
)
def test_an_option_reaches_bench_run_only_when_asked_for(
    live_pairs: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, option: str, value: str
) -> None:
    import argparse

    commands = captured_commands(monkeypatch)
    for argv in ([], [option, value]):
        options = live_pairs.parse_run_options(
            argparse.ArgumentParser(), argv, runs=5, json_name="x.json"
        )
        live_pairs.run_bench(tmp_path, "live", options, tmp_path / "report.json")
    # Not given: bench/run.py's own default (and a revision older than the option still runs).
    assert option not in commands[0]
    assert commands[1][-2:] == [option, value]


def test_bench_run_warms_each_side_up_by_default_and_takes_zero_for_none() -> None:
    run = load_bench_script("run")
    assert run.parse_options([]).live_warm_up == run.LIVE_WARM_UP > 0
    assert run.parse_options(["--live-warm-up", "0"]).live_warm_up == 0
    with pytest.raises(SystemExit):
        run.parse_options(["--live-warm-up", "-1"])


def test_each_sides_context_switches_per_alert_are_shown_when_the_report_has_them(
    live_pairs: ModuleType,
) -> None:
    with_switches = report(1000.0, 2000.0, 0.7, 0.5)
    results = with_switches["results"]
    results["live"]["context_switches_per_alert"] = {"machine (all CPUs)": {"all": 7.95}}
    results["alertmanager"]["live"]["context_switches_per_alert"] = {
        "machine (all CPUs)": {"all": 3.12}
    }
    pairs = [
        live_pairs.pair_of(with_switches, alerts=3000),
        live_pairs.pair_of(report(1000.0, 2000.0, 0.7, 0.5), alerts=3000),  # an older report
    ]
    assert (pairs[0].switches_bridge, pairs[0].switches_alertmanager) == (7.95, 3.12)
    rows = live_pairs.table(live_pairs.summary(pairs)).splitlines()
    assert rows[2].endswith("| 0.50x | n/a | n/a / n/a | n/a / n/a | 0.23 / 0.17 | 7.95 / 3.12 |")
    assert rows[3].endswith("| 0.50x | n/a | n/a / n/a | n/a / n/a | 0.23 / 0.17 | n/a / n/a |")
    text = "\n".join(rows)
    assert "middle 80%" not in text.split("\n\n")[-1]  # no pair had the curves: no median


def test_bench_run_sends_the_bridges_calls_in_flight_unless_told() -> None:
    run_script = load_bench_script("run")
    assert run_script.parse_options(["--calls-in-flight", "4"]).calls_in_flight == 4
    assert run_script.parse_options([]).calls_in_flight == run_script.BRIDGE_CALLS_IN_FLIGHT


def test_the_middle_80_percent_and_the_ramp_are_shown_when_the_report_has_the_curves(
    live_pairs: ModuleType,
) -> None:
    def with_curves(ours: float, theirs: float, middle: tuple[float, float]) -> dict[str, Any]:
        made = report(ours, theirs, 0.7, 0.5)
        results = made["results"]
        results["live"]["creation_curve"] = {"middle_per_s": middle[0], "p10_s": 0.168}
        results["live"]["cpu_s_by_process"]["machine (all CPUs)"] = 2.4
        results["alertmanager"]["live"]["cpu_s_by_process"]["machine (all CPUs)"] = 2.1
        results["alertmanager"]["live"]["creation_curve"] = {
            "middle_per_s": middle[1],
            "p10_s": 0.0981,
        }
        return made

    pairs = [
        live_pairs.pair_of(with_curves(2400, 3000, (2500.0, 2600.0)), alerts=3000),
        live_pairs.pair_of(with_curves(2100, 3000, (2700.0, 3000.0)), alerts=3000),
        live_pairs.pair_of(report(1000.0, 2000.0, 0.7, 0.5), alerts=3000),  # an older report
    ]
    assert (pairs[0].head_ms_bridge, pairs[0].head_ms_alertmanager) == (168.0, 98.1)
    assert pairs[0].middle_ratio == pytest.approx(0.9615, abs=0.0001)
    assert pairs[2].middle_ratio is None
    figures = live_pairs.summary(pairs)
    # The median of the two pairs that had the curves
    assert figures["median_middle_ratio"] == pytest.approx(0.931, abs=0.0005)
    text = live_pairs.table(figures)
    assert (
        "| 1 | 2,400/s | 3,000/s | 0.80x | 0.96x | 168 / 98 | 0.80 / 0.70 | 0.23 / 0.17 |" in text
    )
    assert (
        "Median ratio of the middle 80% (10th to 90th percentile of incidents created): **0.93x**"
        in text
    )
