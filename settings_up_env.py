"""``STATE_DIR/up.env``: the settings a running ``orderflow up`` generated, for :mod:`settings`.

``orderflow up`` makes settings of its own for the run (the simulators' URLs and key files, the
embedded servers' ``DATABASE_URL`` / ``REDIS_URL``, generated Flower credentials) and hands them
to its children in their environment. A command typed in another shell has none of them, so
``up`` also writes them to ``<STATE_DIR>/up.env`` (0600) and every :class:`settings.Settings`
reads that file through :class:`UpEnvValues`.

Contract:

- The file is read only while the ``orderflow up`` that wrote it is alive: it names its writer
  (``ORDERFLOW_UP_PID``, ``ORDERFLOW_UP_STARTED`` = the process's start time, so a pid reused by
  another process does not count). A file left by a killed ``up`` is ignored, and replaced by
  the next ``up``.
- Precedence: real environment variables (and ``<NAME>_FILE``) win over it; it wins over
  ``.env`` and ``ORDERFLOW_ENV_FILE``, as the values ``up`` exported to its children did.
- ``STATE_DIR`` decides where it is looked for (init argument, environment, then ``.env``): a
  second shell finds the ``up`` started with the same ``STATE_DIR``.
- ``up`` removes the file on every exit path it survives (Ctrl-C, SIGTERM, a failed start, an
  exception); :func:`write_up_env` writes it atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

UP_ENV_NAME = "up.env"
PID_KEY = "ORDERFLOW_UP_PID"
STARTED_KEY = "ORDERFLOW_UP_STARTED"


@dataclass(frozen=True)
class UpEnv:
    """The settings of a live ``orderflow up`` (``values``: variable name -> value)."""

    path: Path
    pid: int
    values: dict[str, str]


def up_env_path(state_dir: Path) -> Path:
    return Path(state_dir) / UP_ENV_NAME


def process_started(pid: int) -> float | None:
    """The start time of process ``pid`` (seconds since the epoch), None when it is gone."""
    import psutil  # lazily: only a state directory holding an up.env pays for it

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def write_up_env(path: Path, values: Mapping[str, str]) -> None:
    """Write ``values`` and this process as their writer to ``path`` (0600, atomically).

    Values are single-quoted (only ``\\`` and ``'`` escaped), which python-dotenv reads back
    verbatim, whatever they contain (spaces, ``#``, ``$``)."""
    pid = os.getpid()
    lines = [
        "# Written by `orderflow up`; removed when it stops. Read by `orderflow` commands",
        "# while that process runs (settings_up_env.py).",
        f"{PID_KEY}={pid}",
        f"{STARTED_KEY}={process_started(pid)!r}",
    ]
    for key, value in sorted(values.items()):
        quoted = value.replace("\\", "\\\\").replace("'", "\\'")
        lines.append(f"{key}='{quoted}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    tmp.replace(path)


def read_up_env(path: Path) -> UpEnv | None:
    """The file's settings when its writer is still running; None when there is no file, it
    names no writer, or its writer is gone (a killed ``up``)."""
    try:
        raw = dotenv_values(path) if path.is_file() else {}
    except OSError:
        return None
    try:
        pid = int(raw.pop(PID_KEY) or "")
        started = float(raw.pop(STARTED_KEY) or "")
    except (KeyError, ValueError):
        return None
    alive = process_started(pid)
    if alive is None or abs(alive - started) > 0.01:  # psutil rounds to 10 ms on Linux
        return None
    return UpEnv(path, pid, {k: v for k, v in raw.items() if v is not None})


class UpEnvValues(PydanticBaseSettingsSource):
    """The settings of the live ``orderflow up`` of this ``STATE_DIR`` (see module docstring)."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        *env_sources: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self.state_dir = Path(settings_cls.model_fields["state_dir"].default)
        # Highest precedence last: .env, then the environment, then init arguments (tests).
        for source in env_sources:
            found = getattr(source, "env_vars", {})
            found = {name.lower(): value for name, value in found.items()}
            if found.get("state_dir"):
                self.state_dir = Path(found["state_dir"])
        init_dir = getattr(init_settings, "init_kwargs", {}).get("state_dir")
        if init_dir:
            self.state_dir = Path(init_dir)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        up = read_up_env(up_env_path(self.state_dir))
        if up is None:
            return {}
        fields = set(self.settings_cls.model_fields)
        return {k.lower(): v for k, v in up.values.items() if k.lower() in fields}
