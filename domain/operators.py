"""Console operators: roles and what each may do. Pure: no I/O.

Contracts:

* Roles are ordered ``viewer < operator < admin``; a role may do everything the roles below it
  may do.
* **viewer** reads every console page (pipeline, orders, attention, stock, audit).
* **operator** also acts on orders and dead letters (replay, discard, payments reconcile).
* **admin** also manages keys, callbacks and operator accounts.
* Every :class:`Permission` names the least role that holds it (:data:`REQUIRED_ROLE`);
  :func:`allowed` is the only check the console makes.
* An operator's name is 2-64 characters of ``a-z 0-9 . _ -``, starting with a letter; it is
  the person the audit trail names, so it is stored lower-cased and never reused for someone
  else while the account exists (disabled accounts keep their name).
"""

from __future__ import annotations

import re
from enum import Enum, IntEnum

from domain.errors import ValidationError

_NAME = re.compile(r"[a-z][a-z0-9._-]{1,63}")


class Role(IntEnum):
    """Ordered: a higher role includes every permission of a lower one."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, raw: str) -> Role:
        """``viewer`` / ``operator`` / ``admin`` in any case, else ``ValidationError("role")``."""
        try:
            return cls[raw.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise ValidationError("role", f"must be one of {names}") from None


class Permission(Enum):
    READ = "read"
    ACT_ON_ORDERS = "act_on_orders"  # dead letter replay/discard, payments reconcile
    MANAGE = "manage"  # keys, callbacks, operator accounts


REQUIRED_ROLE: dict[Permission, Role] = {
    Permission.READ: Role.VIEWER,
    Permission.ACT_ON_ORDERS: Role.OPERATOR,
    Permission.MANAGE: Role.ADMIN,
}


def allowed(role: Role, permission: Permission) -> bool:
    """True when ``role`` holds ``permission``."""
    return role >= REQUIRED_ROLE[permission]


def normalize_name(raw: str) -> str:
    """Strip and lower-case; ``ValidationError("name", ...)`` unless it is a valid name."""
    name = raw.strip().lower()
    if not _NAME.fullmatch(name):
        raise ValidationError("name", "2-64 characters of a-z 0-9 . _ -, starting with a letter")
    return name
