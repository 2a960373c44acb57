"""The README is the user's manual: every setting and command it promises must exist, and
every one that exists must be in it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from worker.cli import cli
from worker.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
PYPROJECT = ROOT / "pyproject.toml"


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


#: A machine with nothing but Python >= 3.11: one command runs the bridge and its simulator (with a
#: Redis of its own, worker/ops/tryout.py), the other runs the tests.
TRY_IT = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[tryout]" '
    "&& pagerbridge migrate && pagerbridge run --simulate"
)
TEST_IT = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && pytest'


def test_readme_set_up_starts_with_the_two_commands() -> None:
    """The first two command blocks of "Set up" are the bare machine's; production follows."""
    set_up = README.split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", set_up, flags=re.DOTALL)
    assert [block.strip() for block in blocks[:2]] == [TRY_IT, TEST_IT]


def test_the_extras_the_set_up_installs_exist() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for command in (TRY_IT, TEST_IT):
        for extra in re.findall(r'pip install -e "\.\[(\w+)\]"', command):
            assert extra in extras, extra
