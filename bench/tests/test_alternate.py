"""bench/alternate.py: live phases of two revisions read from bench/run.py's reports, compared."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from bench.tests.scripts import captured_commands, load_bench_script


@pytest.fixture(scope="module")
def alternate() -> ModuleType:
    return load_bench_script("alternate")


def report(per_s: float, pool: float, machine: float) -> dict[str, Any]:
    """What bench/run.py writes for --phases live (the parts read here)."""
    cpu = {"worker (pool)": pool, "machine (all CPUs)": machine, "api": 1.0}
    return {"results": {"live": {"incidents_per_s": per_s, "cpu_s_by_process": cpu}}}


def test_a_report_gives_the_rate_and_the_cpu_by_process(alternate: ModuleType) -> None:
    phase = alternate.phase_of(report(1234.5, 1.2, 4.0))
    assert phase.per_s == 1234.5
    assert phase.cpu_s["worker (pool)"] == 1.2
    with pytest.raises(KeyError):
        alternate.phase_of({"results": {}})


def test_medians_of_each_side_and_the_pairs_the_checkout_won(alternate: ModuleType) -> None:
    pairs = [
        (alternate.phase_of(report(a, pa, ma)), alternate.phase_of(report(b, pb, mb)))
        for (a, pa, ma), (b, pb, mb) in [
            ((1100, 1.6, 4.6), (1230, 1.2, 4.0)),
            ((1300, 1.5, 4.2), (1290, 1.1, 4.1)),
            ((1200, 1.7, 5.0), (1250, 1.3, 4.3)),
        ]
    ]
    figures = alternate.summary(pairs)
    assert figures["pairs"] == 3 and figures["checkout_faster"] == 2
    assert figures["against"]["per_s"] == 1200 and figures["checkout"]["per_s"] == 1250
    assert figures["against"]["cpu_s"]["worker (pool)"] == 1.6
    assert figures["checkout"]["cpu_s"]["machine (all CPUs)"] == 4.1
    assert figures["checkout"]["cpu_s"]["simulator"] == 0.0  # not in the reports: none

    text = alternate.table({"revision": "abc1234", **figures}, "abc1234")
    assert "| 1 | 1,100/s | 1,230/s | 1.12x |" in text
    assert "| worker (pool) | 1.60 | 1.20 | -25% |" in text
    assert "Median rate 1,200/s (abc1234) against 1,250/s (checkout), +4%" in text
    assert "faster in 2 of 3 pairs" in text


def test_the_other_side_takes_its_own_settings_and_the_checkouts_otherwise(
    alternate: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    commands = captured_commands(monkeypatch)
    argv = ["--against", "HEAD", "--workers", "2", "--calls-in-flight", "4"]
    ours = alternate.parse_options([*argv, "--against-calls-in-flight", "1"])
    theirs = alternate.against_options(ours)
    for options in (theirs, ours):
        alternate.run_bench(tmp_path, "live", options, tmp_path / "report.json")

    def option(command: list[str], name: str) -> str:
        return command[command.index(name) + 1]

    assert [option(c, "--workers") for c in commands] == ["2", "2"]
    assert [option(c, "--calls-in-flight") for c in commands] == ["1", "4"]
