"""Live delivery against Alertmanager, several times over: the median ratio, and every run's.

A live phase lasts a few seconds, and this project's development machine is a VM whose speed
changes from minute to minute: within one ``bench/run.py`` run the bridge's live phase and
Alertmanager's can meet different machines (the simulator's own CPU per create, the same code in
both phases, is the tell). One pair of phases is a sample, not a figure. This runs
``bench/run.py --phases live,alertmanager`` K times, one after the other, and prints each
pair's rates, their ratio, the ratio of their middle 80% (the rates between the 10th and 90th
percentile of incidents created, without the ramp at the start and the tail), the milliseconds
each took to its first 10%, the simulator's CPU per create in each phase, and the median ratios.

    .venv/bin/python bench/live_pairs.py              # 5 pairs, N = 3,000
    .venv/bin/python bench/live_pairs.py --runs 9     # more pairs, a steadier median
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pair:
    """One run's two live phases: incidents per second, and the simulator's CPU (ms) per
    alert during each (how fast the machine was then)."""

    bridge_per_s: float
    alertmanager_per_s: float
    simulator_ms_bridge: float | None
    simulator_ms_alertmanager: float | None
    # The machine's context switches per alert in each phase (None: a report from before).
    switches_bridge: float | None = None
    switches_alertmanager: float | None = None
    # Each phase's rate between its 10th and 90th percentile of incidents created, and the
    # milliseconds to its 10th percentile: the steady middle, and the ramp at the start.
    middle_bridge_per_s: float | None = None
    middle_alertmanager_per_s: float | None = None
    head_ms_bridge: float | None = None
    head_ms_alertmanager: float | None = None
    # The whole machine's CPU (ms) per alert in each phase: the bench's and everything's.
    machine_ms_bridge: float | None = None
    machine_ms_alertmanager: float | None = None

    @property
    def ratio(self) -> float:
        return self.bridge_per_s / self.alertmanager_per_s

    @property
    def middle_ratio(self) -> float | None:
        if not self.middle_bridge_per_s or not self.middle_alertmanager_per_s:
            return None
        return self.middle_bridge_per_s / self.middle_alertmanager_per_s


def pair_of(report: dict[str, Any], alerts: int) -> Pair:
    """The pair in one ``bench/run.py`` JSON report; KeyError if a phase is missing."""
    ours = report["results"]["live"]
    theirs = report["results"]["alertmanager"]["live"]

    def cpu_ms(phase: dict[str, Any], process: str) -> float | None:
        seconds = phase.get("cpu_s_by_process", {}).get(process)
        return None if seconds is None else round(seconds / alerts * 1000, 3)

    def simulator_ms(phase: dict[str, Any]) -> float | None:
        return cpu_ms(phase, "simulator")

    def switches(phase: dict[str, Any]) -> float | None:
        machine = phase.get("context_switches_per_alert", {}).get("machine (all CPUs)", {})
        return None if machine.get("all") is None else float(machine["all"])

    def curve(phase: dict[str, Any], name: str, scale: float = 1.0) -> float | None:
        value = (phase.get("creation_curve") or {}).get(name)
        return None if value is None else round(float(value) * scale, 1)

    return Pair(
        bridge_per_s=ours["incidents_per_s"],
        alertmanager_per_s=theirs["incidents_per_s"],
        simulator_ms_bridge=simulator_ms(ours),
        simulator_ms_alertmanager=simulator_ms(theirs),
        switches_bridge=switches(ours),
        switches_alertmanager=switches(theirs),
        middle_bridge_per_s=curve(ours, "middle_per_s"),
        middle_alertmanager_per_s=curve(theirs, "middle_per_s"),
        head_ms_bridge=curve(ours, "p10_s", 1000),
        head_ms_alertmanager=curve(theirs, "p10_s", 1000),
        machine_ms_bridge=cpu_ms(ours, "machine (all CPUs)"),
        machine_ms_alertmanager=cpu_ms(theirs, "machine (all CPUs)"),
    )


def summary(pairs: list[Pair]) -> dict[str, Any]:
    ratios = [pair.ratio for pair in pairs]
    middles = [pair.middle_ratio for pair in pairs if pair.middle_ratio is not None]
    return {
        "runs": len(pairs),
        "median_ratio": round(statistics.median(ratios), 3),
        "min_ratio": round(min(ratios), 3),
        "max_ratio": round(max(ratios), 3),
        "median_middle_ratio": round(statistics.median(middles), 3) if middles else None,
        "pairs": [
            {
                **asdict(pair),
                "ratio": round(pair.ratio, 3),
                "middle_ratio": None if pair.middle_ratio is None else round(pair.middle_ratio, 3),
            }
            for pair in pairs
        ],
    }


def table(figures: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    def ratio(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}x"

    def head(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    lines = [
        "| run | pagerbridge | Alertmanager | ratio | middle 80% ratio "
        "| ms to the first 10% (ours / theirs) | machine CPU ms/alert (ours / theirs) "
        "| simulator ms/alert (ours / theirs) | context switches/alert (ours / theirs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for number, pair in enumerate(figures["pairs"], 1):
        lines.append(
            f"| {number} | {pair['bridge_per_s']:,.0f}/s | {pair['alertmanager_per_s']:,.0f}/s "
            f"| {pair['ratio']:.2f}x | {ratio(pair.get('middle_ratio'))} "
            f"| {head(pair.get('head_ms_bridge'))} / {head(pair.get('head_ms_alertmanager'))} "
            f"| {ms(pair.get('machine_ms_bridge'))} / {ms(pair.get('machine_ms_alertmanager'))} "
            f"| {ms(pair['simulator_ms_bridge'])} / {ms(pair['simulator_ms_alertmanager'])} "
            f"| {ms(pair.get('switches_bridge'))} / {ms(pair.get('switches_alertmanager'))} |"
        )
    lines.append(
        f"\nMedian ratio over {figures['runs']} runs: **{figures['median_ratio']:.2f}x** "
        f"(from {figures['min_ratio']:.2f}x to {figures['max_ratio']:.2f}x)"
    )
    if figures.get("median_middle_ratio") is not None:
        lines.append(
            f"Median ratio of the middle 80% (10th to 90th percentile of incidents created): "
            f"**{figures['median_middle_ratio']:.2f}x**"
        )
    return "\n".join(lines)


def parse_run_options(
    parser: argparse.ArgumentParser, argv: list[str] | None, *, runs: int, json_name: str
) -> argparse.Namespace:
    """The options every script that repeats ``bench/run.py`` takes (this one and
    ``bench/alternate.py``): how many runs, N, the worker processes, where the JSON goes."""
    parser.add_argument(
        "--runs", type=int, default=runs, help=f"pairs of live phases (default {runs})"
    )
    parser.add_argument("--alerts", type=int, default=3000, help="N per live phase (default 3000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: bench/run.py's, the bridge's)",
    )
    parser.add_argument(
        "--calls-in-flight",
        type=int,
        default=None,
        metavar="K",
        help="bench/run.py's --calls-in-flight (default: its own, the bridge's; a revision "
        "older than the option takes none)",
    )
    parser.add_argument(
        "--live-warm-up",
        type=int,
        default=None,
        metavar="W",
        help="bench/run.py's --live-warm-up (default: its own, 300; a revision older than the "
        "option takes none)",
    )
    default = BENCH / "results" / json_name
    parser.add_argument(
        "--json", type=Path, default=default, help=f"where the JSON goes (default {default})"
    )
    options = parser.parse_args(argv)
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    return options


def run_bench(
    tree: Path, phases: str, options: argparse.Namespace, report: Path
) -> tuple[dict[str, Any] | None, int]:
    """``bench/run.py --phases phases`` of the checkout at ``tree`` (its code first on the
    path), with ``options``' N and workers: its JSON report (None if it wrote none that reads)
    and its exit status."""
    command = [
        sys.executable,
        str(tree / "bench" / "run.py"),
        "--phases",
        phases,
        "--alerts",
        str(options.alerts),
        "--json",
        str(report),
    ]
    if options.workers is not None:
        command += ["--workers", str(options.workers)]
    if options.live_warm_up is not None:
        command += ["--live-warm-up", str(options.live_warm_up)]
    if getattr(options, "calls_in_flight", None) is not None:
        command += ["--calls-in-flight", str(options.calls_in_flight)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, env=env, check=False)
    try:
        return json.loads(report.read_text()), finished.returncode
    except (OSError, ValueError):
        return None, finished.returncode


def main(argv: list[str] | None = None) -> int:
    options = parse_run_options(
        argparse.ArgumentParser(description=__doc__.split("\n\n")[0]),
        argv,
        runs=5,
        json_name="live_pairs.json",
    )
    pairs: list[Pair] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="pagerbridge-pairs-") as workdir:
        for number in range(1, options.runs + 1):
            print(f"[pairs] run {number} of {options.runs}…", file=sys.stderr, flush=True)
            found, status = run_bench(
                BENCH.parent, "live,alertmanager", options, Path(workdir) / f"run{number}.json"
            )
            try:
                pairs.append(pair_of(found or {}, options.alerts))
            except (KeyError, TypeError):
                failed += 1
                print(f"[pairs] run {number} gave no pair (exit {status})", file=sys.stderr)
    if not pairs:
        print("no run gave a pair of live phases", file=sys.stderr)
        return 1
    figures = summary(pairs)
    print(table(figures))
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nJSON: {options.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
