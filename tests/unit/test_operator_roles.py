"""The console's role matrix and operator names (pure: domain/operators.py)."""

from __future__ import annotations

import pytest

from domain.errors import ValidationError
from domain.operators import Permission, Role, allowed, normalize_name

MATRIX = {
    Role.VIEWER: {Permission.READ},
    Role.OPERATOR: {Permission.READ, Permission.ACT_ON_ORDERS},
    Role.ADMIN: {Permission.READ, Permission.ACT_ON_ORDERS, Permission.MANAGE},
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_each_role_holds_exactly_its_permissions(role, permission):
    assert allowed(role, permission) is (permission in MATRIX[role])


@pytest.mark.parametrize("raw", ["viewer", "OPERATOR", " Admin "])
def test_role_names_parse_in_any_case(raw):
    assert Role.parse(raw).label == raw.strip().lower()


@pytest.mark.parametrize("raw", ["", "root", "superuser", "1"])
def test_unknown_roles_name_the_field(raw):
    with pytest.raises(ValidationError) as err:
        Role.parse(raw)
    assert err.value.field == "role" and "viewer, operator, admin" in err.value.reason


@pytest.mark.parametrize(
    ("raw", "name"), [("Ana", "ana"), (" li.wei_2 ", "li.wei_2"), ("jo", "jo")]
)
def test_names_are_normalized(raw, name):
    assert normalize_name(raw) == name


@pytest.mark.parametrize("raw", ["", "a", "1ana", "ana smith", "ana@x", "é" * 3, "a" * 65, "-x"])
def test_bad_names_are_refused(raw):
    with pytest.raises(ValidationError) as err:
        normalize_name(raw)
    assert err.value.field == "name"
