"""Users against real PostgreSQL and Redis: registration, argon2id hashes and their upgrade,
login that does not reveal which emails exist, the login rate limit, tokens, my orders."""

from __future__ import annotations

import hashlib
import socket
import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from argon2 import PasswordHasher, Type, extract_parameters
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.users import login_limiter, registration_limiter
from api.users import router as users_router
from models import User, UserSession
from producers.intake import accept_message
from services import login_limits, passwords, users
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import order_message, redis_client

PASSWORD = "Correct-horse-42"


def make_app():
    from api.app import create_app

    app = create_app()
    if not any(getattr(r, "path", None) == "/v1/sessions" for r in app.routes):
        app.include_router(users_router)
    return app


@pytest.fixture
def app(db, monkeypatch):
    # A day-long window: the limiter uses Redis server time, and a wall-clock step on the test
    # machine (seen on VMs) must not age failures out in the middle of a test.
    monkeypatch.setenv("LOGIN_WINDOW_S", "86400")
    get_settings.cache_clear()
    return make_app()


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def register(client, email="alice@example.com", password=PASSWORD, **extra):
    return client.post("/v1/users", json={"email": email, "password": password, **extra})


def login(client, email="alice@example.com", password=PASSWORD):
    return client.post("/v1/sessions", json={"email": email, "password": password})


def stored_hash(email="alice@example.com") -> str:
    with unit_of_work() as s:
        return s.scalars(select(User.password_hash).where(User.email == email)).one()


def user_count() -> int:
    with unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(User))


# --- registration ------------------------------------------------------------------------------


def test_register_normalizes_email_and_stores_argon2id(client):
    r = register(client, email="  Alice@Example.COM ", display_name="Alice")
    assert r.status_code == 201, r.text
    assert r.json()["email"] == "alice@example.com"
    stored = stored_hash()
    assert stored.startswith("$argon2id$")
    params = extract_parameters(stored)
    assert params.type is Type.ID
    assert params.memory_cost >= 19456 and params.time_cost >= 2 and params.parallelism == 1
    assert PASSWORD not in stored


def test_duplicate_email_is_409_whatever_the_case(client):
    assert register(client).status_code == 201
    r = register(client, email="ALICE@example.com ")
    assert r.status_code == 409
    assert r.json()["details"] == [{"field": "email", "reason": "already registered"}]
    assert user_count() == 1


@pytest.mark.parametrize(
    ("email", "password", "field", "reason"),
    [
        ("bob@example.com", "Short-1", "password", "at least 10"),
        ("bob@example.com", "Aa1-" * 33, "password", "at most 128"),
        ("bob@example.com", "abcdefghijklmnop", "password", "two of"),
        ("bob@example.com", "1234567890123", "password", "two of"),
        ("bob10chars@example.com", "BOB10chars@example.com", "password", "email"),
        ("not-an-email", PASSWORD, "email", "not an email"),
        ("", PASSWORD, "email", "required"),
    ],
    ids=["short", "long", "one-class", "digits-only", "equals-email", "bad-email", "no-email"],
)
def test_policy_errors_name_the_field_and_store_nothing(client, email, password, field, reason):
    r = register(client, email=email, password=password)
    assert r.status_code == 422, r.text
    detail = r.json()["details"][0]
    assert detail["field"] == field and reason in detail["reason"]
    assert user_count() == 0


@pytest.mark.parametrize(
    "password",
    ["Password123", "1q2w3e4r5t", "LIVERPOOL1", " iloveyou12 ", "\uff50assword\uff11\uff12"],
    ids=["capitalized", "as-listed", "upper-case", "padded", "full-width"],
)
def test_common_passwords_are_refused_whatever_the_case_or_width(client, password):
    # Each meets length and class rules; only the bundled list (Django's 20k) refuses it.
    r = register(client, password=password)
    assert r.status_code == 422, r.text
    assert r.json()["details"] == [
        {"field": "password", "reason": "is too common: it is in a list of leaked passwords"}
    ]
    assert user_count() == 0


def test_common_password_list_is_the_bundled_one():
    assert len(passwords._common_passwords()) > 19_000
    assert passwords.is_common_password("Qwerty12345")
    assert not passwords.is_common_password(PASSWORD)


FULL_WIDTH = "\uff23orrect-horse-\uff14\uff12"  # "Correct-horse-42" with full-width C, 4, 2


def test_password_is_nfkc_normalized_before_hashing(client):
    assert register(client, password=FULL_WIDTH).status_code == 201
    assert passwords.HASHER.verify(stored_hash(), PASSWORD)  # the hash is of the normalized form
    assert login(client, password=PASSWORD).status_code == 201
    assert login(client, password=FULL_WIDTH).status_code == 201
    decomposed = "Cafe\u0301-horse-42"  # e + combining acute == é (NFKC composes it)
    assert register(client, email="bob@example.com", password=decomposed).status_code == 201
    assert login(client, email="bob@example.com", password="Caf\u00e9-horse-42").status_code == 201


def test_hash_of_a_raw_unnormalized_password_still_verifies_and_is_rehashed(client):
    # Stored before normalization existed: the hash of the raw full-width password.
    legacy = passwords.HASHER.hash(FULL_WIDTH)
    with unit_of_work() as s:
        s.add(User(email="old@example.com", password_hash=legacy))
    assert login(client, email="old@example.com", password=PASSWORD).status_code == 401
    assert login(client, email="old@example.com", password=FULL_WIDTH).status_code == 201
    upgraded = stored_hash("old@example.com")
    assert upgraded != legacy and passwords.HASHER.verify(upgraded, PASSWORD)
    assert login(client, email="old@example.com", password=PASSWORD).status_code == 201


def test_ascii_passwords_are_unchanged_by_normalization():
    # Why every stored hash of an ASCII password stays valid.
    ascii_printable = "".join(chr(c) for c in range(32, 127))
    assert passwords.normalize_password(ascii_printable) == ascii_printable
    assert passwords.HASHER.verify(passwords.hash_password(PASSWORD), PASSWORD)


def test_missing_field_is_422_naming_it(client):
    r = client.post("/v1/users", json={"email": "a@example.com"})
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "password"


# --- sessions and my orders --------------------------------------------------------------------


def test_login_my_orders_and_logout(client, catalog):
    catalog({"A": 5})
    uid = register(client).json()["id"]
    other = register(client, email="eve@example.com").json()["id"]
    mine = [accept_message({**order_message("A"), "user_id": uid}, channel="test").order_id
            for _ in range(2)]  # fmt: skip
    accept_message({**order_message("A"), "user_id": other}, channel="test")

    r = login(client, email=" ALICE@example.com")
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert r.json()["token_type"] == "bearer"
    expires = datetime.fromisoformat(r.json()["expires_at"])
    assert expires > datetime.now(UTC) + timedelta(minutes=10)
    with unit_of_work() as s:  # only the hash is stored
        hashes = list(s.scalars(select(UserSession.token_hash)))
    assert hashes == [hashlib.sha256(token.encode()).hexdigest()]

    auth = {"Authorization": f"Bearer {token}"}
    orders = client.get("/v1/users/me/orders", headers=auth)
    assert orders.status_code == 200
    assert sorted(o["id"] for o in orders.json()["orders"]) == sorted(mine)
    assert orders.json()["orders"][0]["lines"] == [{"sku": "A", "quantity": 1, "unit_amount": None}]

    assert client.delete("/v1/sessions/current", headers=auth).status_code == 204
    after = client.get("/v1/users/me/orders", headers=auth)
    assert after.status_code == 401 and after.headers["WWW-Authenticate"] == "Bearer"
    assert client.delete("/v1/sessions/current", headers=auth).status_code == 401
    with unit_of_work() as s:  # revoked, not forgotten
        assert s.scalar(select(UserSession.revoked_at)) is not None


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nope", "Basic abc", "token"])
def test_bad_or_missing_token_is_401(client, header):
    headers = {"Authorization": header} if header else {}
    r = client.get("/v1/users/me/orders", headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_expired_token_is_refused(client):
    register(client)
    with unit_of_work() as s:
        issued = users.login(
            s, login_limits.LoginLimiter(redis_client()), "alice@example.com", PASSWORD,
            client_address="127.0.0.1", now=datetime.now(UTC) - timedelta(hours=2), ttl_s=3600,
        )  # fmt: skip
    r = client.get("/v1/users/me/orders", headers={"Authorization": f"Bearer {issued.token}"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "legacy",
    [
        PasswordHasher(time_cost=1, memory_cost=8192, parallelism=2, type=Type.ID),
        PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.I),
    ],
    ids=["weak-argon2id", "argon2i"],
)
def test_legacy_hash_is_upgraded_at_login(client, legacy):
    with unit_of_work() as s:
        s.add(User(email="old@example.com", password_hash=legacy.hash(PASSWORD)))
    assert not stored_hash("old@example.com").startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert login(client, email="old@example.com").status_code == 201
    upgraded = stored_hash("old@example.com")
    params = extract_parameters(upgraded)
    assert (params.type, params.memory_cost, params.time_cost, params.parallelism) == (
        Type.ID, 19456, 2, 1,
    )  # fmt: skip
    assert login(client, email="old@example.com").status_code == 201  # the new hash verifies
    assert stored_hash("old@example.com") == upgraded  # and is not rehashed again


# --- no account enumeration --------------------------------------------------------------------


ROUNDS = 30


def test_unknown_email_and_wrong_password_are_indistinguishable(app):
    app.dependency_overrides[login_limiter] = lambda: login_limits.LoginLimiter(
        redis_client(), max_failures=1000
    )
    with TestClient(app) as client:
        assert register(client).status_code == 201
        wrong = lambda: login(client, password="Wrong-password-1")  # noqa: E731
        unknown = lambda: login(client, email="nobody@example.com")  # noqa: E731
        wrong(), unknown()  # warm both paths
        times: dict[str, list[float]] = {"wrong": [], "unknown": []}
        answers = set()
        for i in range(ROUNDS):
            pair = (("wrong", wrong), ("unknown", unknown))
            for name, attempt in pair if i % 2 else pair[::-1]:  # alternate who goes first
                started = time.perf_counter()
                r = attempt()
                times[name].append(time.perf_counter() - started)
                answers.add((r.status_code, r.content, r.headers.get("WWW-Authenticate")))
    assert len(answers) == 1, answers
    assert next(iter(answers))[0] == 401
    wrong_s, unknown_s = statistics.median(times["wrong"]), statistics.median(times["unknown"])
    # Both do one argon2 verification (~tens of ms); skipping it would differ by all of that.
    # Medians of 30 interleaved pairs hold within 20% on a loaded 2-core machine.
    assert abs(wrong_s - unknown_s) < 0.2 * max(wrong_s, unknown_s), (wrong_s, unknown_s)


# --- rate limit --------------------------------------------------------------------------------


def test_eleventh_failed_login_in_a_minute_is_429(client):
    register(client)
    for attempt in range(10):
        assert login(client, password="Wrong-password-1").status_code == 401, attempt
    r = login(client)  # even the right password: the 11th attempt is refused unchecked
    assert r.status_code == 429
    # Retry-After runs to the end of the window (a day here: see the `app` fixture).
    assert r.json()["error"] == "rate_limited" and 1 <= int(r.headers["Retry-After"]) <= 86400
    with unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(UserSession)) == 0


def test_limit_is_per_account_across_addresses(app, db):
    with TestClient(app) as first:
        register(first)
    for i in range(10):
        c = TestClient(app, client=(f"198.51.100.{i}", 4000))
        assert login(c, password="Wrong-password-1").status_code == 401
    fresh = TestClient(app, client=("198.51.100.99", 4000))
    assert login(fresh).status_code == 429
    assert login(fresh, email="someone-else@example.com").status_code == 401  # address is fine


def test_limit_is_per_address_across_accounts(app, db):
    attacker = TestClient(app, client=("203.0.113.7", 5000))
    for i in range(10):
        assert login(attacker, email=f"user{i}@example.com").status_code == 401
    assert login(attacker, email="user10@example.com").status_code == 429
    other = TestClient(app, client=("203.0.113.8", 5000))
    assert login(other, email="user10@example.com").status_code == 401


def test_successful_logins_are_not_counted(client):
    register(client)
    for _ in range(12):
        assert login(client).status_code == 201


def _age_attempts(client: redis.Redis, keys: list[str], by_ms: int) -> None:
    """As if ``by_ms`` had passed on the Redis server: every logged attempt in ``keys`` (a
    sorted set scored by the server's clock in ms, see services.login_limits) moves back."""
    for key in keys:
        for member, score in client.zrange(key, 0, -1, withscores=True):
            client.zadd(key, {member: score - by_ms})


def test_window_slides_and_limits_are_parameters(db):
    limiter = login_limits.LoginLimiter(redis_client(), max_failures=2, window_s=1)
    for _ in range(2):
        limiter.acquire("x@example.com", "192.0.2.1")  # two failures (slots kept)
    with pytest.raises(login_limits.LoginThrottled) as info:
        limiter.acquire("x@example.com", "192.0.2.1")
    assert info.value.retry_after_s == 1
    keys = limiter.keys("x@example.com", "192.0.2.1")
    _age_attempts(limiter.client, keys, by_ms=1_100)  # 1.1 s later by the server's clock
    limiter.acquire("x@example.com", "192.0.2.1")  # the old failures aged out


def test_ipv6_addresses_share_their_64(db):
    limiter = login_limits.LoginLimiter(redis_client(), max_failures=3)
    for i in range(3):
        limiter.acquire(f"u{i}@example.com", f"2001:db8:1:2::{i + 1}")
    with pytest.raises(login_limits.LoginThrottled):
        limiter.acquire("u9@example.com", "2001:db8:1:2:ffff::9")
    limiter.acquire("u9@example.com", "2001:db8:1:3::1")  # another /64


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


def test_login_and_registration_answer_503_when_redis_is_down(app):
    register_ok = TestClient(app)
    assert register(register_ok).status_code == 201
    dead = redis.Redis(port=_closed_port(), socket_connect_timeout=2)
    app.dependency_overrides[login_limiter] = lambda: login_limits.LoginLimiter(dead)
    app.dependency_overrides[registration_limiter] = lambda: login_limits.RegistrationLimiter(dead)
    with TestClient(app) as client:
        r = login(client)  # the right password: without the limiter, no login at all
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
        r = register(client, email="bob@example.com")
        assert r.status_code == 503 and r.json()["error"] == "unavailable"
    assert user_count() == 1
    with unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(UserSession)) == 0


# --- registration rate limit -------------------------------------------------------------------


def test_registrations_per_address_are_limited_and_409s_count(client, app):
    """Default limits (20 an hour per address): a 409 takes a slot like a 201, so probing which
    emails have accounts is bounded; refused input (422) takes none."""
    limit = get_settings().register_max_per_address
    assert (limit, get_settings().register_window_s) == (20, 3600)
    for _ in range(limit + 5):  # a person fixing a weak password is never locked out
        assert register(client, password="password12").status_code == 422
    assert register(client).status_code == 201
    for _ in range(limit - 1):  # probing a known address
        assert register(client, email="ALICE@example.com").status_code == 409
    r = register(client, email="bob@example.com")
    assert r.status_code == 429, r.text
    assert r.json()["error"] == "rate_limited"
    assert r.json()["details"][0]["field"] == "client_address"
    assert 3500 <= int(r.headers["Retry-After"]) <= 3600
    assert register(client, email="ALICE@example.com").status_code == 429  # no answer leaks
    assert user_count() == 1
    elsewhere = TestClient(app, client=("198.51.100.20", 4000))
    assert register(elsewhere, email="bob@example.com").status_code == 201


def test_registration_limit_shares_an_ipv6_64(db):
    limiter = login_limits.RegistrationLimiter(redis_client(), max_attempts=2)
    limiter.acquire("2001:db8:1:2::1")
    limiter.acquire("2001:db8:1:2::2")
    with pytest.raises(login_limits.RegistrationThrottled):
        limiter.acquire("2001:db8:1:2:ffff::9")
    limiter.acquire("2001:db8:1:3::1")


def test_eleventh_failed_login_is_429_under_the_default_window(db, monkeypatch):
    monkeypatch.delenv("LOGIN_WINDOW_S", raising=False)
    get_settings.cache_clear()
    assert get_settings().login_window_s == 60
    with TestClient(make_app()) as client:
        register(client)
        for attempt in range(10):
            assert login(client, password="Wrong-password-1").status_code == 401, attempt
        r = login(client)
        assert r.status_code == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 60
