"""The console's admin pages for intake API keys and callback endpoints, against real PostgreSQL
and Redis: an admin lists keys and revokes one, and resumes a paused callback endpoint, each an
audit row naming the person; viewers and operators get 403 on the pages and on the buttons and
change nothing (the refused POST is audited as ``denied``); no page shows a secret, a hash or a
ciphertext. Before these pages existed every request here answered 404.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from domain.operators import Role
from models import ApiKey, CallbackDelivery, CallbackEndpoint, ConsoleAudit
from services import api_keys, callbacks
from services.api_keys import IssuedKey
from services.secrets_at_rest import cipher_from_setting
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.console_helpers import client_for, log_in, make_operator

HOOK_URL = "http://127.0.0.1:9/hook"


def audit_rows() -> list[tuple[str, str, str, str | None]]:
    with unit_of_work() as s:
        rows = s.execute(
            select(
                ConsoleAudit.actor, ConsoleAudit.action, ConsoleAudit.outcome, ConsoleAudit.target
            ).order_by(ConsoleAudit.id)
        )
        return [tuple(r) for r in rows]


def issue_key(source: str = "shop-a") -> IssuedKey:
    """A key with a signing secret (so the page has two secrets it must not show)."""
    cipher = cipher_from_setting(get_settings().key_encryption_key)
    with unit_of_work() as s:
        return api_keys.create_key(s, source=source, now=datetime.now(UTC), cipher=cipher)


def key_state(key_id: str) -> str:
    with unit_of_work() as s:
        keys = {k.key_id: k for k in api_keys.list_keys(s)}
    return keys[key_id].state(datetime.now(UTC))


def stored_key(key_id: str) -> tuple[str, str]:
    """(secret hash, signing-secret ciphertext) as stored."""
    with unit_of_work() as s:
        row = s.get_one(ApiKey, key_id)
        return row.secret_hash, row.signing_secret or ""


def paused_endpoint(source: str, secret: str) -> None:
    """A registered endpoint that has paused itself after failures (as record_attempt does)."""
    cipher = cipher_from_setting(get_settings().key_encryption_key)
    with unit_of_work() as s:
        endpoint = callbacks.register_endpoint(
            s, source, HOOK_URL, SecretStr(secret), cipher=cipher
        )
        endpoint.paused_at, endpoint.consecutive_failures = datetime.now(UTC), 7


def endpoint_row(source: str) -> tuple[datetime | None, int, str]:
    """(paused_at, consecutive failures, stored secret) of the source's endpoint."""
    with unit_of_work() as s:
        e = s.scalars(select(CallbackEndpoint).where(CallbackEndpoint.source == source)).one()
        return e.paused_at, e.consecutive_failures, e.secret


# --- API keys ------------------------------------------------------------------------------------


def test_an_admin_sees_keys_without_secrets_and_revokes_one(app):
    make_operator("ada", Role.ADMIN)
    key, other = issue_key("shop-a"), issue_key("shop-b")
    secret_hash, sealed = stored_key(key.key_id)
    with client_for(app) as c:
        csrf = log_in(c, "ada")
        r = c.get("/console/keys")
        assert r.status_code == 200
        page = r.text
        assert key.key_id in page and other.key_id in page and "shop-b" in page
        assert f'id="revoke-{key.key_id}"' in page and "orderflow apikeys create" in page
        secret_part = key.api_key.rsplit("_", 1)[1]
        assert key.signing_secret
        for leak in (key.api_key, secret_part, key.signing_secret, secret_hash, sealed):
            assert leak not in page
        assert 'href="/console/keys"' in page and 'href="/console/callbacks"' in page
        r = c.post(f"/console/keys/{key.key_id}/revoke", data={"csrf": csrf})
        assert r.status_code == 303 and "done=" in r.headers["location"]
        after = c.get(r.headers["location"]).text
        assert f'id="revoke-{key.key_id}"' not in after and f'id="revoke-{other.key_id}"' in after
        r = c.post("/console/keys/0000000000000000/revoke", data={"csrf": csrf})
        assert r.status_code == 303 and "error=" in r.headers["location"]
    assert key_state(key.key_id) == "revoked"
    assert key_state(other.key_id) == "active"
    assert ("operator:ada", "apikey_revoke", "ok", key.key_id) in audit_rows()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR], ids=lambda r: r.label)
def test_viewers_and_operators_cannot_see_or_revoke_keys(app, role):
    make_operator("bo", role)
    key = issue_key()
    with client_for(app) as c:
        csrf = log_in(c, "bo")
        assert 'href="/console/keys"' not in c.get("/console/pipeline").text
        r = c.get("/console/keys")
        assert r.status_code == 403 and role.label in r.text and key.key_id not in r.text
        r = c.post(f"/console/keys/{key.key_id}/revoke", data={"csrf": csrf})
        assert r.status_code == 403
    assert key_state(key.key_id) == "active"
    rows = audit_rows()
    assert ("operator:bo", "denied", "denied", f"/console/keys/{key.key_id}/revoke") in rows
    assert not [r for r in rows if r[1] == "apikey_revoke"]


def test_revoking_needs_the_sessions_csrf_token(app):
    make_operator("cy", Role.ADMIN)
    key = issue_key()
    with client_for(app) as c:
        log_in(c, "cy")
        r = c.post(f"/console/keys/{key.key_id}/revoke", data={"csrf": "forged"})
        assert r.status_code == 403
    assert key_state(key.key_id) == "active"


# --- callback endpoints --------------------------------------------------------------------------


def test_an_admin_sees_endpoints_without_secrets_and_resumes_a_paused_one(app):
    make_operator("di", Role.ADMIN)
    secret = f"hook-{secrets.token_urlsafe(24)}"
    paused_endpoint("shop-a", secret)
    sealed = endpoint_row("shop-a")[2]
    with client_for(app) as c:
        csrf = log_in(c, "di")
        r = c.get("/console/callbacks")
        assert r.status_code == 200
        page = r.text
        assert "shop-a" in page and HOOK_URL in page and "paused" in page
        assert 'id="resume-shop-a"' in page and "orderflow callbacks register" in page
        assert secret not in page and sealed not in page
        r = c.post("/console/callbacks/shop-a/resume", data={"csrf": csrf})
        assert r.status_code == 303 and "done=" in r.headers["location"]
        after = c.get(r.headers["location"]).text
        assert 'id="resume-shop-a"' not in after and secret not in after
        r = c.post("/console/callbacks/nobody/resume", data={"csrf": csrf})
        assert r.status_code == 303 and "error=" in r.headers["location"]
    assert endpoint_row("shop-a")[:2] == (None, 0)
    assert ("operator:di", "callback_resume", "ok", "shop-a") in audit_rows()


def test_an_admin_pauses_an_endpoint_and_its_pending_deliveries_are_held(app):
    make_operator("fa", Role.ADMIN)
    cipher = cipher_from_setting(get_settings().key_encryption_key)
    with unit_of_work() as s:
        endpoint = callbacks.register_endpoint(
            s, "shop-b", HOOK_URL, SecretStr(f"hook-{secrets.token_urlsafe(24)}"), cipher=cipher
        )
        s.flush()
        s.add(CallbackDelivery(
            event_id=uuid.uuid4(), endpoint_id=endpoint.id, order_id="o-1",
            event_type="order.status", payload={}, status="PENDING",
        ))  # fmt: skip
    with client_for(app) as c:
        csrf = log_in(c, "fa")
        assert 'id="pause-shop-b"' in c.get("/console/callbacks").text
        r = c.post("/console/callbacks/shop-b/pause", data={"csrf": csrf})
        assert r.status_code == 303 and "1%20pending%20deliveries%20held" in r.headers["location"]
        again = c.post("/console/callbacks/shop-b/pause", data={"csrf": csrf})
        assert "0%20pending" in again.headers["location"]  # already paused: nothing changes
        assert 'id="resume-shop-b"' in c.get("/console/callbacks").text
    assert endpoint_row("shop-b")[0] is not None
    with unit_of_work() as s:
        assert [d.status for d in s.scalars(select(CallbackDelivery))] == ["PAUSED"]
    assert ("operator:fa", "callback_pause", "ok", "shop-b") in audit_rows()


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR], ids=lambda r: r.label)
def test_viewers_and_operators_cannot_see_or_resume_endpoints(app, role):
    make_operator("ed", role)
    paused_endpoint("shop-a", f"hook-{secrets.token_urlsafe(24)}")
    with client_for(app) as c:
        csrf = log_in(c, "ed")
        assert 'href="/console/callbacks"' not in c.get("/console/pipeline").text
        r = c.get("/console/callbacks")
        assert r.status_code == 403 and HOOK_URL not in r.text
        r = c.post("/console/callbacks/shop-a/resume", data={"csrf": csrf})
        assert r.status_code == 403
    paused_at, failures, _ = endpoint_row("shop-a")
    assert paused_at is not None and failures == 7
    rows = audit_rows()
    assert ("operator:ed", "denied", "denied", "/console/callbacks/shop-a/resume") in rows
    assert not [r for r in rows if r[1] == "callback_resume"]
