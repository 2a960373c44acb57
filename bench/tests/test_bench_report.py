"""bench/run.py's report says which interpreter ran the run, and how it was built: the same code
runs at different speeds on different builds of the same Python version."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import pytest

from bench.tests.scripts import load_bench_script


@pytest.fixture(scope="module")
def bench_run() -> ModuleType:
    return load_bench_script("run")


def report(machine: dict[str, Any]) -> dict[str, Any]:
    """A report with no phase run: the settings and machine rows alone."""
    return {
        "results": {},
        "settings": {
            "pagerduty_rate_per_minute": 900,
            "pagerduty_latency_ms": 0,
            "database": "postgres",
            "workers": 4,
        },
        "machine": machine,
    }


def test_the_interpreter_of_this_process_is_described() -> None:
    build = load_bench_script("stack").python_build()
    assert build["executable"] == sys.executable
    assert build["implementation"].endswith(".".join(map(str, sys.version_info[:3])))
    assert {build["configured_pgo"], build["configured_lto"], build["libpython_shared"]} <= {
        True,
        False,
    }


def test_the_table_names_the_interpreter_and_its_build(bench_run: ModuleType) -> None:
    built = {
        "executable": "/opt/venv/bin/python",
        "implementation": "CPython 3.11.7",
        "configured_pgo": True,
        "configured_lto": False,
        "libpython_shared": True,
    }
    table = bench_run.markdown_tables(report({"python_build": built}))
    row = next(line for line in table.splitlines() if line.startswith("| Machine: Python |"))
    assert "CPython 3.11.7" in row and "/opt/venv/bin/python" in row
    assert "PGO yes, LTO no; libpython shared" in row


def test_a_report_from_before_the_build_was_recorded_still_renders(bench_run: ModuleType) -> None:
    table = bench_run.markdown_tables(report({}))
    assert "Machine: Python" not in table
