"""The bench scripts, loaded by path for their tests: ``bench/`` is a directory of scripts, not a
package."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1]


def load_bench_script(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (its neighbours importable, as when it runs)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def captured_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The commands the bench scripts run from now on (``subprocess.run``), recorded instead of
    run; each "succeeds"."""
    commands: list[list[str]] = []

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", run)
    return commands
