"""The settings' structured strings (domain/config_values.py), parsed without the environment:
the database driver made explicit, API_KEYS read as keys and digests, the values checked at
start."""

from __future__ import annotations

import hashlib

import pytest

from domain.config_values import api_key_digests, api_key_map, check, with_psycopg2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg2://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),  # a driver named: kept
        ("", ""),
        (None, None),
    ],
)
def test_the_database_driver_is_made_explicit(url, expected):
    assert with_psycopg2(url) == expected


def test_api_keys_as_plaintext_map_and_digests():
    digest = "b" * 64
    value = f"k1, shop:k2, shop-b:sha256:{digest}"
    assert api_key_map(value) == {"k1": "*", "k2": "shop"}
    assert api_key_digests(value) == [
        (hashlib.sha256(b"k1").hexdigest(), "*"),
        (hashlib.sha256(b"k2").hexdigest(), "shop"),
        (digest, "shop-b"),
    ]


@pytest.mark.parametrize(
    ("name", "bad", "says"),
    [
        ("api_keys", "shop:sha256:ABC", "64 lower-case hex digits"),
        ("warehouses", "east:first", "WAREHOUSES entry"),
        ("outbound_allowed_networks", "10.0.0.0/33", "not a CIDR network"),
    ],
)
def test_a_bad_value_stops_the_start_and_unset_is_fine(name, bad, says):
    with pytest.raises(ValueError, match=says):
        check(name, bad)
    check(name, None)
    check(name, "")
