"""The README stays true: every setting is in its configuration table, and the two commands
it promises exist."""

from __future__ import annotations

from pathlib import Path

from settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}" not in README
               and f"{name.upper()}`" not in README]  # fmt: skip
    assert missing == []


def test_the_two_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in README
        assert f"\n{target}:" in makefile
