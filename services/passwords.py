"""Email and password rules, and password hashing.

Contracts:

* **Password policy** (:func:`check_password`): 10 to 128 characters, at least two character
  classes (lower case, upper case, digits, anything else), not the email address, and not in
  the bundled list of common passwords (:func:`is_common_password`, compared lower-cased).
* **Unicode**: a password is NFKC-normalized (:func:`normalize_password`) before the policy
  check, hashing and verification, so the same password typed on two keyboards (full-width
  digits, a composed or decomposed accent, a ligature) is one password. Nothing else is altered
  (no stripping, no case folding). NFKC leaves ASCII unchanged, so every hash of an ASCII
  password stays valid; a hash stored before normalization of a non-ASCII password that NFKC
  changes still verifies (the raw password is tried second) and is rehashed from the
  normalized form at that login.
* **Hashes** are argon2id, m = 19 MiB, t = 2, p = 1 (OWASP's baseline for argon2id), stored in
  the PHC string form ``$argon2id$v=19$m=19456,t=2,p=1$...``. A stored hash made with weaker
  parameters or another variant is replaced at the next successful login.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from functools import lru_cache
from importlib import resources

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from domain.errors import ValidationError

# --- email and password -------------------------------------------------------------------------

EMAIL_MAX = 254  # RFC 5321 path limit
PASSWORD_MIN = 10
PASSWORD_MAX = 128
# Deliberately simple: one @, no spaces, a dot in the domain. Deliverability is the job of a
# confirmation mail, not of a regular expression.
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+$")


def normalize_email(raw: str) -> str:
    """Strip and lower-case; raise ``ValidationError("email", ...)`` if it is not an address."""
    email = raw.strip().lower()
    if not email:
        raise ValidationError("email", "is required")
    if len(email) > EMAIL_MAX:
        raise ValidationError("email", f"must be at most {EMAIL_MAX} characters")
    if not _EMAIL.match(email):
        raise ValidationError("email", "is not an email address")
    return email


def _classes(password: str) -> int:
    has = [False, False, False, False]  # lower, upper, digit, other
    for ch in password:
        if ch.islower():
            has[0] = True
        elif ch.isupper():
            has[1] = True
        elif ch.isdigit():
            has[2] = True
        else:
            has[3] = True
    return sum(has)


def normalize_password(password: str) -> str:
    """NFKC: compatibility characters (full-width, ligatures, composed/decomposed accents) map
    to one form. A no-op for ASCII, which is why stored hashes of ASCII passwords stay valid."""
    return unicodedata.normalize("NFKC", password)


_COMMON_HEADER_END = "--- passwords ---"


@lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    # Django's list of 20,000 common passwords (see the file's header for source and licence).
    text = resources.files("services").joinpath("data/common_passwords.txt").read_text("utf-8")
    _, found, body = text.partition(f"\n{_COMMON_HEADER_END}\n")
    if not found:
        raise RuntimeError("common_passwords.txt: header end marker missing")
    return frozenset(
        normalize_password(line.strip()).lower() for line in body.splitlines() if line.strip()
    )


def is_common_password(password: str) -> bool:
    """True if the password, NFKC-normalized, stripped and lower-cased, is in the bundled list
    of common passwords (so "Password123" is as refused as "password123")."""
    return normalize_password(password).strip().lower() in _common_passwords()


def check_password(password: str, email: str) -> None:
    """Raise ``ValidationError("password", reason)`` unless the password meets the policy.
    Pass the normalized password (:func:`normalize_password`): lengths count its characters."""
    if len(password) < PASSWORD_MIN:
        raise ValidationError("password", f"must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise ValidationError("password", f"must be at most {PASSWORD_MAX} characters")
    if _classes(password) < 2:
        raise ValidationError(
            "password", "must mix at least two of: lower case, upper case, digits, symbols"
        )
    if password.strip().lower() == email.strip().lower():
        raise ValidationError("password", "must not be the email address")
    if is_common_password(password):
        raise ValidationError("password", "is too common: it is in a list of leaked passwords")


# --- hashing ------------------------------------------------------------------------------------

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19_456
ARGON2_PARALLELISM = 1

#: The one hasher for new hashes. ``check_needs_rehash`` compares stored hashes against it.
HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    hash_len=32,
    salt_len=16,
    type=Type.ID,
)


@lru_cache(maxsize=1)
def dummy_hash() -> str:
    # Made with the current parameters, so verifying against it costs what a real check costs.
    return HASHER.hash(secrets.token_urlsafe(24))


def warm_up() -> None:
    """Make the dummy hash and load the common-password list now, so the first login or
    registration does not pay for them."""
    dummy_hash()
    _common_passwords()


def hash_password(password: str) -> str:
    """Hash the NFKC-normalized password with the current parameters."""
    return HASHER.hash(normalize_password(password))


def verify_hash(stored: str, password: str) -> bool:
    """True if ``password`` matches ``stored``; a malformed stored hash never matches."""
    try:
        return HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
