"""``<NAME>_FILE``: any setting's value read from a file (Docker secrets), for :mod:`settings`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError


class FileValues(PydanticBaseSettingsSource):
    """``<NAME>_FILE`` variables: the value of setting ``NAME`` read from that file (Docker
    secrets). The rules are in :class:`Settings`' docstring; :func:`file_values` applies them."""

    def __init__(self, settings_cls: type[BaseSettings], *env_sources: object) -> None:
        super().__init__(settings_cls)
        # The variables those sources read (os.environ, the .env files), names case-folded;
        # a later source wins, as the environment wins over .env files.
        self.variables: dict[str, str | None] = {}
        for source in env_sources:
            vars_ = getattr(source, "env_vars", {})
            self.variables.update({name.lower(): value for name, value in vars_.items()})

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        return file_values(set(self.settings_cls.model_fields), self.variables)


def file_values(fields: set[str], variables: Mapping[str, str | None]) -> dict[str, str]:
    """``{field: content of the file}`` for each field whose ``<FIELD>_FILE`` is set (and is not
    itself a field) in ``variables`` (names in lower case). Raises :class:`SettingsError` naming
    the variables, never a file's content."""
    values: dict[str, str] = {}
    for name in sorted(fields):
        path = variables.get(f"{name}_file")
        if not path or f"{name}_file" in fields:
            continue
        var = f"{name.upper()}_FILE"
        if variables.get(name) is not None:
            raise SettingsError(f"{name.upper()} and {var} are both set: set one of them")
        values[name] = _read_setting_file(var, Path(path))
    return values


def _read_setting_file(var: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{var}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # its message would quote bytes of the secret
        raise SettingsError(f"{var}: {path} is not UTF-8 text") from None
    # `echo secret > file` and editors end the file with a newline that is no part of the value.
    return text.rstrip("\r\n")
