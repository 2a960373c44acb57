"""The bridge's live phase, this checkout against another revision, alternated in the same minutes.

On the development VM two live phases of the same code a quarter of an hour apart can differ by
15% (README, Benchmarks), more than most single changes are worth. So a change is judged by
running the live phase of the other revision (a git worktree of it) and of this checkout one
after the other, K times, and comparing each pair: the rates, and the CPU each process took for
the same N alerts (``bench/run.py``'s ``cpu_s_by_process``), which says where a difference came
from. The worktree is removed at the end.

    .venv/bin/python bench/alternate.py --against d40885d            # 4 pairs
    .venv/bin/python bench/alternate.py --against HEAD~3 --runs 6
    .venv/bin/python bench/alternate.py --against HEAD --against-workers 4 \
        --against-calls-in-flight 1 --workers 2 --calls-in-flight 4   # two settings, one code

Each side runs its own ``bench/run.py`` with its own code (``PYTHONPATH``), in this checkout's
virtualenv: a revision whose dependencies differ needs them installed. A revision older than
``bench/run.py``'s ``--live-warm-up`` (300 alerts delivered before the phase, untimed) meets its
live phase cold: against one, the difference includes the warm-up's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from live_pairs import parse_run_options, run_bench  # noqa: E402

SIDES = ("against", "checkout")
# The processes compared, in bench/run.py's names, and the machine's total last.
PROCESSES = (
    "api",
    "worker (pool)",
    "worker (main)",
    "postgres (bench db backends)",
    "redis-server (whole server)",
    "simulator",
    "machine (all CPUs)",
)


@dataclass(frozen=True)
class Phase:
    """One live phase: incidents per second, and CPU seconds by process."""

    per_s: float
    cpu_s: dict[str, float]


def phase_of(report: dict[str, Any]) -> Phase:
    """The live phase in one ``bench/run.py`` JSON report; KeyError if it is missing."""
    live = report["results"]["live"]
    return Phase(per_s=float(live["incidents_per_s"]), cpu_s=dict(live["cpu_s_by_process"]))


def summary(pairs: list[tuple[Phase, Phase]]) -> dict[str, Any]:
    """Medians of each side, and how many pairs the checkout won."""

    def medians(phases: list[Phase]) -> dict[str, Any]:
        return {
            "per_s": round(statistics.median(p.per_s for p in phases), 1),
            "cpu_s": {
                name: round(statistics.median(p.cpu_s.get(name, 0.0) for p in phases), 3)
                for name in PROCESSES
            },
        }

    return {
        "pairs": len(pairs),
        "checkout_faster": sum(1 for against, ours in pairs if ours.per_s > against.per_s),
        "against": medians([against for against, _ in pairs]),
        "checkout": medians([ours for _, ours in pairs]),
        "runs": [{"against": vars(against), "checkout": vars(ours)} for against, ours in pairs],
    }


def table(figures: dict[str, Any], revision: str) -> str:
    lines = [
        f"| pair | {revision} | checkout | ratio |",
        "|---|---|---|---|",
    ]
    for number, run in enumerate(figures["runs"], 1):
        theirs, ours = run["against"]["per_s"], run["checkout"]["per_s"]
        lines.append(f"| {number} | {theirs:,.0f}/s | {ours:,.0f}/s | {ours / theirs:.2f}x |")
    lines += [
        "",
        f"| median CPU s per phase | {revision} | checkout | change |",
        "|---|---|---|---|",
    ]
    for name in PROCESSES:
        theirs, ours = figures["against"]["cpu_s"][name], figures["checkout"]["cpu_s"][name]
        change = f"{(ours - theirs) / theirs:+.0%}" if theirs else "n/a"
        lines.append(f"| {name} | {theirs:.2f} | {ours:.2f} | {change} |")
    theirs, ours = figures["against"]["per_s"], figures["checkout"]["per_s"]
    lines.append(
        f"\nMedian rate {theirs:,.0f}/s ({revision}) against {ours:,.0f}/s (checkout), "
        f"{ours / theirs - 1:+.0%}; the checkout faster in {figures['checkout_faster']} of "
        f"{figures['pairs']} pairs."
    )
    return "\n".join(lines)


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached git worktree of ``revision``, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pagerbridge-alternate-") as parent:
        path = Path(parent) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(path), revision],
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False
            )


def against_options(options: argparse.Namespace) -> argparse.Namespace:
    """The other side's run options: the checkout's, but for the settings given for it."""
    theirs = argparse.Namespace(**vars(options))
    if options.against_workers is not None:
        theirs.workers = options.against_workers
    if options.against_calls_in_flight is not None:
        theirs.calls_in_flight = options.against_calls_in_flight
    return theirs


def live_phase(tree: Path, options: argparse.Namespace, report: Path) -> Phase | None:
    found, status = run_bench(tree, "live", options, report)
    try:
        return phase_of(found or {})
    except (KeyError, TypeError):
        print(f"[alternate] {tree}: no live phase (exit {status})", file=sys.stderr)
        return None


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the other revision (any git name)")
    parser.add_argument(
        "--against-workers", type=int, default=None, metavar="K", help="its --workers"
    )
    parser.add_argument(
        "--against-calls-in-flight",
        type=int,
        default=None,
        metavar="K",
        help="its --calls-in-flight",
    )
    return parse_run_options(parser, argv, runs=4, json_name="alternate.json")


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    their_options = against_options(options)
    pairs: list[tuple[Phase, Phase]] = []
    with worktree(options.against) as other, tempfile.TemporaryDirectory() as workdir:
        for number in range(1, options.runs + 1):
            print(f"[alternate] pair {number} of {options.runs}…", file=sys.stderr, flush=True)
            theirs = live_phase(other, their_options, Path(workdir) / f"against{number}.json")
            ours = live_phase(REPO, options, Path(workdir) / f"checkout{number}.json")
            if theirs is not None and ours is not None:
                pairs.append((theirs, ours))
    if not pairs:
        print("no pair of live phases", file=sys.stderr)
        return 1
    figures = {"revision": options.against, **summary(pairs)}
    print(table(figures, options.against))
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nJSON: {options.json}")
    return 0 if len(pairs) == options.runs else 1


if __name__ == "__main__":
    sys.exit(main())
