"""Operating status callbacks: the ``cli.callbacks`` command (register, list, deliveries,
resend, resume) and the admin API, on real PostgreSQL with a local HTTP receiver."""

from __future__ import annotations

from pydantic import SecretStr

from tests.integration.callbacks_support import (
    SECRET,
    cli,
    deliveries,
    new_order,
    run_deliveries,
    verified,
)


def test_cli_register_list_resend_resume(catalog, receiver):
    run = cli("register", "web", receiver.url + "/web")
    assert run.returncode == 0, run.stderr
    secret = run.stdout.split("secret (shown once): ", 1)[1].split()[0]
    assert len(secret) >= 32
    listed = cli("list")
    assert listed.returncode == 0 and "/web" in listed.stdout
    assert secret not in listed.stdout  # never shown again

    bad = cli("register", "web", "ftp://example.com")
    assert bad.returncode == 1 and "url:" in bad.stderr and "Traceback" not in bad.stderr
    short = cli("register", "web", receiver.url, "--secret-stdin", stdin="short\n")
    assert short.returncode == 1 and "secret:" in short.stderr

    catalog({"A": 1})
    oid = new_order()
    run_deliveries()
    (row,) = deliveries()
    assert row.status == "DELIVERED"
    shown = cli("deliveries", "--order", oid)
    assert shown.returncode == 0 and str(row.event_id) in shown.stdout
    assert "DELIVERED" in shown.stdout
    resent = cli("resend", str(row.event_id))
    assert resent.returncode == 0 and "queued 1" in resent.stdout
    assert deliveries()[0].status == "PENDING"
    assert cli("resend", "--order", oid).returncode == 0

    unknown = cli("resend", "00000000-0000-0000-0000-000000000000")
    assert unknown.returncode == 1 and "no callback deliveries" in unknown.stderr
    assert cli("resend", "not-a-uuid").returncode == 1
    assert cli("resend").returncode == 1
    assert "status:" in cli("deliveries", "--status", "NOPE").stderr
    assert cli("resume", "nobody").returncode == 1
    resumed = cli("resume", "web")
    assert resumed.returncode == 0 and "resumed web" in resumed.stdout


# -- admin API ----------------------------------------------------------------------------------


def test_admin_api_register_list_resend(catalog, receiver):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.callbacks import router
    from api.catalog import admin_api_key_setting
    from api.errors import install_error_handlers

    app = FastAPI()
    app.include_router(router)  # mounted alone: create_app() wiring is not this test's concern
    install_error_handlers(app)  # ... but errors become answers in the app's handlers
    app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr("admin-key")
    key = {"X-Admin-Key": "admin-key"}
    with TestClient(app) as c:
        assert c.get("/v1/admin/callbacks").status_code == 401
        put = c.put("/v1/admin/callbacks/web", json={"url": receiver.url + "/web"}, headers=key)
        assert put.status_code == 200 and len(put.json()["secret"]) >= 32
        given = c.put(
            "/v1/admin/callbacks/web",
            json={"url": receiver.url + "/web", "secret": SECRET},
            headers=key,
        )
        assert given.status_code == 200 and "secret" not in given.json()
        bad = c.put("/v1/admin/callbacks/web", json={"url": "ftp://x"}, headers=key)
        assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "url"
        listed = c.get("/v1/admin/callbacks", headers=key).json()["endpoints"]
        assert [e["source"] for e in listed] == ["web"] and "secret" not in listed[0]
        catalog({"A": 1})
        new_order()
        run_deliveries()
        assert verified(receiver.at("/web")[0])  # signed with the secret given over the API
        (row,) = deliveries()
        resent = c.post("/v1/admin/callbacks/resend", json={"event_id": str(row.event_id)},
                        headers=key)  # fmt: skip
        assert resent.json() == {"queued": 1}
        both = c.post("/v1/admin/callbacks/resend", json={}, headers=key)
        assert both.status_code == 422 and both.json()["details"][0]["field"] == "event_id"
        assert c.post("/v1/admin/callbacks/nobody/resume", headers=key).status_code == 404
        assert c.post("/v1/admin/callbacks/web/resume", headers=key).json() == {"released": 0}
