"""bench/run.py counts context switches per alert in the live phases, by process: where a
machine's CPU goes when it is not in anyone's code (on a VM, a wake-up of another CPU costs
tens of microseconds)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType

import pytest

from bench.tests.scripts import load_bench_script

STATUS = """Name:\tpython
State:\tS (sleeping)
Threads:\t3
voluntary_ctxt_switches:\t1234
nonvoluntary_ctxt_switches:\t56
"""


@pytest.fixture(scope="module")
def bench_stack() -> ModuleType:
    return load_bench_script("stack")


@pytest.fixture(scope="module")
def bench_run() -> ModuleType:
    return load_bench_script("run")


def test_a_threads_status_gives_its_two_counts(bench_stack: ModuleType) -> None:
    assert bench_stack.switches_in_status(STATUS) == bench_stack.Switches(1234, 56)
    assert bench_stack.switches_in_status("Name:\tgone\n") == bench_stack.Switches(0, 0)


def test_every_thread_of_a_process_is_counted(bench_stack: ModuleType) -> None:
    """/proc/<pid>/status counts the main thread alone; a thread that waits is counted too."""
    main_thread_only = bench_stack.switches_in_status(
        Path(f"/proc/{os.getpid()}/status").read_text()
    )
    waited, counted_now = threading.Event(), threading.Event()

    def wait_many_times() -> None:
        for _ in range(200):
            threading.Event().wait(0.0005)  # each a voluntary switch of this thread
        waited.set()
        counted_now.wait()  # alive while counted: an exited thread's switches are gone

    thread = threading.Thread(target=wait_many_times)
    thread.start()
    waited.wait()
    counted = bench_stack.context_switches(os.getpid())
    counted_now.set()
    thread.join()
    assert counted.voluntary >= main_thread_only.voluntary + 200
    assert bench_stack.context_switches(2**22 + 1) == bench_stack.Switches()  # no such process


def test_the_machines_count_only_grows(bench_stack: ModuleType) -> None:
    first = bench_stack.machine_context_switches()
    threading.Event().wait(0.01)
    assert bench_stack.machine_context_switches() > first > 0


def snapshot(bench_run: ModuleType, **switches: tuple[int, int]) -> object:
    machine = switches.pop("machine")
    counts = {name.replace("_", " "): bench_run.Switches(*pair) for name, pair in switches.items()}
    counts[bench_run.MACHINE] = bench_run.Switches(*machine)
    return bench_run.CpuSnapshot({}, 0.0, counts)


def test_switches_per_alert_are_the_differences_over_the_alerts(bench_run: ModuleType) -> None:
    before = snapshot(bench_run, api=(100, 10), simulator=(50, 0), machine=(10_000, 0))
    after = snapshot(
        bench_run, api=(700, 1_210), simulator=(350, 300), beat=(5, 5), machine=(34_000, 0)
    )
    assert bench_run.switches_per_alert(before, after, 3_000) == {
        "api": {"voluntary": 0.2, "involuntary": 0.4},
        "simulator": {"voluntary": 0.1, "involuntary": 0.1},
        # beat was not running at the first snapshot: no figure rather than one from boot.
        bench_run.MACHINE: {"all": 8.0},
    }


def test_the_report_shows_both_live_phases_side_by_side(bench_run: ModuleType) -> None:
    ours = {
        "api": {"voluntary": 0.61, "involuntary": 1.04},
        bench_run.MACHINE: {"all": 7.95},
    }
    theirs = {
        "alertmanager": {"voluntary": 0.24, "involuntary": 1.32},
        bench_run.MACHINE: {"all": 3.12},
    }
    results = {
        "live": {"context_switches_per_alert": ours},
        "alertmanager": {"live": {"context_switches_per_alert": theirs}},
    }
    table = "\n".join(bench_run._switches_table(results))
    assert "| api | 0.61 / 1.04 |  |" in table
    assert "| alertmanager |  | 0.24 / 1.32 |" in table
    assert f"| {bench_run.MACHINE} | 7.95 (all) | 3.12 (all) |" in table
    # A report from before the count, or a run without Alertmanager, has no such table.
    assert bench_run._switches_table({"live": {"alerts": 3000}}) == []
