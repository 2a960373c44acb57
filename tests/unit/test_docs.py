"""The README is the user's manual: every setting and command it promises must exist, and
every one that exists must be in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli import cli
from worker.settings import ENV_PREFIX, Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented(name: str) -> None:
    assert f"`{ENV_PREFIX}{name.upper()}`" in README


def test_every_command_is_documented() -> None:
    names = [
        command.name or command.callback.__name__
        for command in cli.registered_commands
        if command.callback is not None
    ]
    assert names
    for name in names:
        assert f"`pagerbridge {name}" in README, name


def test_readme_has_the_two_setup_commands() -> None:
    assert "pip install -e . && pagerbridge migrate && pagerbridge run --simulate" in README
    assert 'pip install -e ".[test]" && pytest' in README
