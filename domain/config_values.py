"""The string values of :mod:`settings` that carry structure, parsed and checked: pure (no I/O,
no environment), so ``settings.py`` stays a list of fields and every spelling is tested here.

:func:`check` raises :class:`ValueError` for a value that must stop the process at start
(pydantic reports it under the variable's name); the settings keep the string as given.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from domain.allocation import parse_warehouses
from domain.netaddr import parse_networks

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def parse_api_keys(value: str) -> list[tuple[str, str, bool]]:
    """``(source, key or hex digest, is_digest)`` per comma-separated API_KEYS entry: ``key``,
    ``source:key``, ``sha256:<hex>`` or ``source:sha256:<hex>`` (source ``*`` = any source).

    Plaintext entries are for development and tests; a ``sha256:`` entry is the SHA-256 of the
    key as the client sends it (``orderflow apikeys hash`` prints it), so a deployment need not
    put a key in clear in its environment. The ``sha256:`` prefix is therefore reserved.
    """
    items: list[tuple[str, str, bool]] = []
    for raw in value.split(","):
        item = raw.strip()
        if not item:
            continue
        source, sep, key = item.partition(":")
        if not sep or source == "sha256":  # "key" or "sha256:<hex>": any source
            source, key = "*", item
        hashed = key.startswith("sha256:")
        if not key:
            continue
        items.append((source, key.removeprefix("sha256:") if hashed else key, hashed))
    return items


def api_key_map(value: str) -> dict[str, str]:
    """Plaintext API key -> the source it is bound to (``*`` = any source) for API_KEYS
    ``value``. Hashed entries (``sha256:<hex>``) are not here: see :func:`api_key_digests`."""
    return {key: source for source, key, hashed in parse_api_keys(value) if not hashed}


def api_key_digests(value: str) -> list[tuple[str, str]]:
    """``(hex SHA-256 of the key, source)`` for every API_KEYS entry of ``value``, plaintext or
    hashed (:func:`parse_api_keys` has the entries' forms)."""
    return [
        (key if hashed else hashlib.sha256(key.encode()).hexdigest(), source)
        for source, key, hashed in parse_api_keys(value)
    ]


def with_psycopg2(url: str | None) -> str | None:
    """A ``postgresql://`` or ``postgres://`` URL as ``postgresql+psycopg2://``; any other
    value (another driver named, unset) unchanged."""
    # SQLAlchemy picks psycopg2 for plain postgresql://, but be explicit: pgserver hands out
    # postgresql:// URIs over a unix socket and other drivers may be installed.
    for scheme in ("postgresql://", "postgres://"):
        if url and url.startswith(scheme):
            return "postgresql+psycopg2://" + url.removeprefix(scheme)
    return url


# -- checked at start -----------------------------------------------------------------------------


def _check_api_keys(value: str) -> None:
    for _source, key, hashed in parse_api_keys(value):
        if hashed and not _SHA256_HEX.fullmatch(key):
            raise ValueError("a sha256: entry of API_KEYS needs 64 lower-case hex digits")


#: What :func:`check` parses each setting with (by field name); each raises ValueError.
_PARSERS: dict[str, Callable[[str], object]] = {
    "api_keys": _check_api_keys,
    "warehouses": parse_warehouses,
    "outbound_allowed_networks": parse_networks,
}


def check(name: str, value: str | None) -> None:
    """Raise ValueError when ``value`` of the setting ``name`` (``api_keys``, ``warehouses`` or
    ``outbound_allowed_networks``) does not parse; unset is fine. KeyError for another name."""
    # A typo must stop the process at start, not silently lock a client out (a hashed API key),
    # rank a warehouse last or widen or narrow the outbound allow-list.
    _PARSERS[name](value or "")
