"""Redaction of provider requests and responses before they reach the timeline or logs.

Money, ids and statuses stay readable (that is what an operator needs); secrets and personal data
never leave this function: any key that names a secret (``secret``, ``key``, ``token``, ``sign``,
``password``) or personal data (``phone``, ``address``, ``name``, ``email``, ``recipient``) is
replaced by ``"***"``, and long strings (QR payloads, client secrets we did not recognise) are
cut.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

SECRET_WORDS = ("secret", "key", "token", "sign", "password", "authorization")
PERSONAL_WORDS = ("phone", "address", "name", "email", "recipient")
MAX_STRING = 80


def _hidden(key: str) -> bool:
    lowered = key.lower()
    if lowered.endswith("_ref") or lowered.endswith("_no") or lowered == "description":
        return False  # references and merchant numbers are what an operator searches for
    return any(word in lowered for word in (*SECRET_WORDS, *PERSONAL_WORDS))


def redact(value: Any, *, depth: int = 0) -> Any:
    """A JSON-able, redacted copy of a DTO, mapping, sequence or scalar."""
    if depth > 4:
        return "…"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {
            str(k): "***" if _hidden(str(k)) else redact(v, depth=depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [redact(v, depth=depth + 1) for v in list(value)[:20]]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_STRING]
