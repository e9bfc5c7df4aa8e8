"""The README stays true: its configuration table documents every setting with the default
that settings.py really has, and the two commands it promises exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from settings import PROJECT_ROOT, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# Read by settings.py itself (which env files to read), not a Settings field.
NOT_FIELDS = {"ORDERFLOW_ENV_FILE"}


def config_table() -> dict[str, str]:
    """``VARIABLE -> documented default`` from the table of the "Configuration" section.

    A row may list several variables (`` `A` / `B` ``) with their defaults in the same order
    (``1 / 2``). A default is ``unset`` (anything after it is commentary), a number, ``true`` /
    ``false``, or a literal in backticks.
    """
    section = README.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([A-Z0-9_]+)`", cells[0])
        defaults = [d.strip() for d in cells[1].split(" / ")]
        assert len(names) == len(defaults), f"row {names}: {len(defaults)} defaults"
        for name, default in zip(names, defaults, strict=True):
            assert name not in documented, f"{name} documented twice"
            documented[name] = default
    return documented


def literal(default: str) -> str:
    """The literal a table cell states: the text in backticks, else its first word."""
    quoted = re.match(r"`([^`]*)`", default)
    return quoted.group(1) if quoted else default.split()[0]


def matches(documented: str, actual: Any) -> bool:
    value = literal(documented)
    if isinstance(actual, SecretStr):
        actual = actual.get_secret_value()
    if actual is None:
        return value == "unset"
    if isinstance(actual, bool):
        return value == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(value) == float(actual)
        except ValueError:
            return False
    if isinstance(actual, Path):  # relative to the checkout, as the table says
        return PROJECT_ROOT / value == actual
    return value == str(actual)


def test_every_setting_is_in_the_configuration_table():
    documented = config_table()
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(fields - documented.keys()) == [], "settings missing from the README table"
    assert sorted(documented.keys() - fields - NOT_FIELDS) == [], "README documents no setting"
    assert documented.keys() >= NOT_FIELDS


def test_documented_defaults_are_the_real_defaults():
    documented = config_table()
    wrong = {
        name: (documented[name.upper()], field.default)
        for name, field in Settings.model_fields.items()
        if name.upper() in documented and not matches(documented[name.upper()], field.default)
    }
    assert wrong == {}


def test_the_two_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert f"\n{target}:" in makefile
