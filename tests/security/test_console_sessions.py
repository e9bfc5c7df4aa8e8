"""The console's sessions, logins and roles against real PostgreSQL and Redis (issue 18 items 2
and 3): a copied cookie dies at logout, at key rotation and after the idle timeout; the CSRF
token is bound to its session; logins are throttled per name, per address and globally; each
role can do what it may and nothing more; every login and action names the person in the audit
trail. Each of these passed with the old signed-cookie session and shared key, and fails now.
"""

from __future__ import annotations

from pydantic import SecretStr
from sqlalchemy import select
from typer.testing import CliRunner

from api.catalog import admin_api_key_setting
from api.console_auth import COOKIE, console_limiter
from domain.operators import Role
from models import ConsoleAudit, DeadLetter
from services import dead_letters, operators
from services.login_limits import LoginLimiter
from services.unit_of_work import unit_of_work
from settings import get_settings
from tests.conftest import redis_client
from tests.console_helpers import PASSWORD, client_for, log_in, make_operator


def open_dead_letter() -> int:
    with unit_of_work() as s:
        return dead_letters.record(
            s, task_name="payments.create", task_id="t-1", args=[], kwargs={}, queue="payments",
            error=RuntimeError("provider down"), attempts=4, order_id=None,
        )  # fmt: skip


def dl_status(dl_id: int) -> str:
    with unit_of_work() as s:
        return s.get(DeadLetter, dl_id).status


def audit_rows() -> list[tuple[str, str, str]]:
    with unit_of_work() as s:
        rows = s.execute(
            select(ConsoleAudit.actor, ConsoleAudit.action, ConsoleAudit.outcome).order_by(
                ConsoleAudit.id
            )
        )
        return [tuple(r) for r in rows]


# --- sessions that end ---------------------------------------------------------------------------


def test_logout_ends_a_copied_cookie_and_its_csrf_token(app):
    make_operator("ana", Role.OPERATOR)
    dl_id = open_dead_letter()
    with client_for(app) as c:
        csrf = log_in(c, "ana")
        stolen = c.cookies.get(COOKIE)
        assert c.post("/console/logout", data={"csrf": csrf}).status_code == 303
    with client_for(app) as thief:
        thief.cookies.set(COOKIE, stolen, path="/console")
        assert thief.get("/console/pipeline").status_code == 303  # to the login page
        r = thief.post(f"/console/actions/dead-letters/{dl_id}/discard", data={"csrf": csrf})
        assert r.status_code == 403
    assert dl_status(dl_id) == "OPEN"
    assert ("operator:ana", "logout", "ok") in audit_rows()


def test_rotating_the_admin_key_ends_operator_sessions_too(app):
    make_operator("ben", Role.VIEWER)
    with client_for(app) as c:
        log_in(c, "ben")
        assert c.get("/console/pipeline").status_code == 200
        app.dependency_overrides[admin_api_key_setting] = lambda: SecretStr("rotated-key-x1")
        assert c.get("/console/pipeline").status_code == 303


def test_idle_timeout_ends_a_session_and_use_keeps_it_alive(app, clock):
    idle = get_settings().console_idle_timeout_s
    make_operator("cai", Role.VIEWER)
    with client_for(app) as c:
        log_in(c, "cai")
        for _ in range(3):  # used within the timeout: still alive well past one timeout
            clock.now += idle - 5
            assert c.get("/console/pipeline").status_code == 200
        clock.now += idle + 1
        assert c.get("/console/pipeline").status_code == 303
        clock.now -= idle  # the session was deleted, not merely judged old
        assert c.get("/console/pipeline").status_code == 303


def test_a_session_ends_at_its_maximum_age_even_when_used(app, clock):
    settings = get_settings()
    make_operator("dee", Role.VIEWER)
    with client_for(app) as c:
        log_in(c, "dee")
        step = settings.console_idle_timeout_s - 1
        while clock.now + step < 1_900_000_000.0 + settings.console_session_max_s:
            clock.now += step
            assert c.get("/console/pipeline").status_code == 200
        clock.now += step
        assert c.get("/console/pipeline").status_code == 303


def test_csrf_token_of_another_session_is_refused(app):
    make_operator("eve", Role.OPERATOR)
    make_operator("fay", Role.OPERATOR)
    dl_id = open_dead_letter()
    with client_for(app) as c1, client_for(app) as c2:
        eve_csrf = log_in(c1, "eve")
        log_in(c2, "fay")
        r = c2.post(f"/console/actions/dead-letters/{dl_id}/discard", data={"csrf": eve_csrf})
        assert r.status_code == 403
    assert dl_status(dl_id) == "OPEN"


def test_the_cookie_holds_only_a_random_token(app):
    make_operator("gus", Role.VIEWER)
    with client_for(app) as c:
        log_in(c, "gus")
        token = c.cookies.get(COOKIE)
    assert "gus" not in token and "." not in token and len(token) >= 40
    stored = [k.decode() for k in redis_client().keys("console:session:*")]
    assert stored and all(token not in k for k in stored)


# --- login throttle ------------------------------------------------------------------------------


def test_login_is_throttled_per_name_even_with_the_right_password(app):
    make_operator("hal", Role.ADMIN)
    limit = get_settings().console_login_max_failures
    with client_for(app) as c:
        for _ in range(limit):
            r = c.post("/console/login", data={"name": "hal", "password": "wrong-Password-1"})
            assert r.status_code == 401
        r = c.post("/console/login", data={"name": "hal", "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert COOKIE not in c.cookies
    outcomes = [o for a, act, o in audit_rows() if a == "operator:hal" and act == "login"]
    assert outcomes == ["refused"] * limit + ["throttled"]


def test_the_admin_key_login_is_throttled_per_address(app, admin_key):
    limit = get_settings().console_login_max_failures
    with client_for(app) as c:
        for i in range(limit):
            assert c.post("/console/login", data={"password": f"guess-{i}"}).status_code == 401
        assert c.post("/console/login", data={"password": admin_key}).status_code == 429


def test_global_limit_bounds_guessing_spread_over_names(app):
    limiter = LoginLimiter(redis_client(), max_failures=100, window_s=300,
                           global_max_failures=3, namespace="console")  # fmt: skip
    app.dependency_overrides[console_limiter] = lambda: limiter
    make_operator("ivy", Role.VIEWER)
    with client_for(app) as c:
        for name in ("nobody1", "nobody2", "nobody3"):
            assert c.post("/console/login", data={"name": name, "password": "x"}).status_code == 401
        assert (
            c.post("/console/login", data={"name": "ivy", "password": PASSWORD}).status_code == 429
        )


# --- roles ---------------------------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_act(app):
    make_operator("jo", Role.VIEWER)
    dl_id = open_dead_letter()
    with client_for(app) as c:
        csrf = log_in(c, "jo")
        for path in ("/console/pipeline", "/console/attention", "/console/stock", "/console/audit"):
            assert c.get(path).status_code == 200, path
        r = c.post(f"/console/actions/dead-letters/{dl_id}/replay", data={"csrf": csrf})
        assert r.status_code == 403 and "viewer" in r.text
        assert c.post("/console/actions/reconcile", data={"csrf": csrf}).status_code == 403
        assert c.get("/console/operators").status_code == 403
    assert dl_status(dl_id) == "OPEN"
    assert ("operator:jo", "denied", "denied") in audit_rows()


def test_an_operator_acts_on_dead_letters_but_cannot_manage_accounts(app):
    make_operator("kim", Role.OPERATOR)
    dl_id = open_dead_letter()
    with client_for(app) as c:
        csrf = log_in(c, "kim")
        r = c.post(f"/console/actions/dead-letters/{dl_id}/discard", data={"csrf": csrf})
        assert r.status_code == 303 and "done=" in r.headers["location"]
        data = {"csrf": csrf, "name": "mallory", "password": PASSWORD, "role": "admin"}
        assert c.post("/console/operators", data=data).status_code == 403
        assert c.get("/console/operators").status_code == 403
    assert dl_status(dl_id) == "DISCARDED"
    with unit_of_work() as s:
        assert [o.name for o in operators.list_all(s)] == ["kim"]
    assert ("operator:kim", "dlq_discard", "ok") in audit_rows()


def test_an_admin_creates_and_disables_and_disabling_ends_sessions(app):
    make_operator("lee", Role.ADMIN)
    with client_for(app) as admin, client_for(app) as other:
        csrf = log_in(admin, "lee")
        data = {"csrf": csrf, "name": "max", "password": PASSWORD, "role": "viewer"}
        r = admin.post("/console/operators", data=data)
        assert r.status_code == 303 and "done=" in r.headers["location"]
        log_in(other, "max")
        assert other.get("/console/pipeline").status_code == 200
        r = admin.post("/console/operators/max/disable", data={"csrf": csrf})
        assert r.status_code == 303 and "1%20session" in r.headers["location"]
        assert other.get("/console/pipeline").status_code == 303
        r = other.post("/console/login", data={"name": "max", "password": PASSWORD})
        assert r.status_code == 401
        page = admin.get("/console/audit").text
    rows = audit_rows()
    assert ("operator:lee", "operator_create", "ok") in rows
    assert ("operator:lee", "operator_disable", "ok") in rows
    assert "operator_disable" in page and "operator:lee" in page


def test_the_admin_key_bootstraps_an_admin(app, admin_key):
    with client_for(app) as c:
        r = c.post("/console/login", data={"password": admin_key})
        assert r.status_code == 303
        assert c.get("/console/operators").status_code == 200


# --- the CLI -------------------------------------------------------------------------------------


def test_cli_operators_create_list_disable(db):
    from cli.main import app as cli

    runner = CliRunner()
    r = runner.invoke(cli, ["operators", "create", "Nia", "--role", "operator",
                            "--password-stdin"], input=f"{PASSWORD}\n")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["operators", "create", "nia", "--role", "viewer", "--password-stdin"],
                      input=f"{PASSWORD}\n")  # fmt: skip
    assert r.exit_code == 1 and "exists" in r.output
    r = runner.invoke(cli, ["operators", "create", "oz", "--role", "root", "--password-stdin"],
                      input=f"{PASSWORD}\n")  # fmt: skip
    assert r.exit_code == 1 and "role" in r.output
    r = runner.invoke(cli, ["operators", "create", "pat", "--role", "viewer", "--password-stdin"],
                      input="password12\n")  # fmt: skip
    assert r.exit_code == 1 and "password" in r.output
    r = runner.invoke(cli, ["operators", "list"])
    assert r.exit_code == 0 and "nia" in r.output and "operator" in r.output
    r = runner.invoke(cli, ["operators", "disable", "nia"])
    assert r.exit_code == 0 and "disabled" in r.output
    with unit_of_work() as s:
        assert operators.authenticate(s, "nia", PASSWORD) is None
    assert [(act, o) for a, act, o in audit_rows() if a.startswith("cli:")] == [
        ("operator_create", "ok"), ("operator_disable", "ok"),
    ]  # fmt: skip
