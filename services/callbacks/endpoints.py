"""Endpoints: one receiver URL and secret per source; registering, listing and resuming a paused
one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from adapters.outbound import DestinationRefused, check_destination
from domain.errors import NotFound, ValidationError
from models import CallbackDelivery, CallbackEndpoint
from services.api_keys import SecretCipher
from services.callbacks.rules import MAX_URL_LEN, MIN_SECRET_LEN, PAUSED, PENDING
from services.secrets_at_rest import FERNET, seal_callback_secret


@dataclass(frozen=True, slots=True)
class EndpointView:
    """An endpoint as operators see it: never the secret."""

    id: int
    source: str
    url: str
    active: bool
    paused_at: datetime | None
    consecutive_failures: int
    pending: int


def check_source(source: str) -> str:
    source = source.strip()
    if not source or len(source) > 64:
        raise ValidationError("source", "1 to 64 characters")
    return source


def check_url(url: str) -> str:
    """http(s) with a host; no credentials (they would end up in logs) and no fragment; and a
    host that cannot reach inside (``adapters.outbound.check_destination``: no loopback,
    private, link-local, metadata... address, in any spelling or behind any name it resolves
    to, unless ``OUTBOUND_ALLOWED_NETWORKS`` allows it; a name that does not resolve is refused).

    Resolving is a blocking DNS lookup: call it before taking any lock. Deliveries check the
    connected address again (the name may resolve elsewhere by then)."""
    url = url.strip()
    if len(url) > MAX_URL_LEN:
        raise ValidationError("url", f"at most {MAX_URL_LEN} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ValidationError("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError("url", "must start with http:// or https://")
    if not parts.hostname:
        raise ValidationError("url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("url", "must not contain credentials; the HMAC secret signs it")
    if parts.fragment:
        raise ValidationError("url", "must not contain a #fragment")
    try:
        check_destination(url)
    except DestinationRefused as exc:
        raise ValidationError("url", str(exc)) from None
    return url


def check_secret(secret: SecretStr) -> SecretStr:
    value = secret.get_secret_value()
    if len(value) < MIN_SECRET_LEN or len(value) > 200:
        raise ValidationError("secret", f"{MIN_SECRET_LEN} to 200 characters")
    if not value.isprintable() or value != value.strip():
        raise ValidationError("secret", "printable characters without surrounding spaces")
    return secret


def register_endpoint(
    session: Session,
    source: str,
    url: str,
    secret: SecretStr,
    *,
    cipher: SecretCipher | None = None,
) -> CallbackEndpoint:
    """Create the source's endpoint, or replace its URL and secret (and re-activate it).

    The secret is stored encrypted with ``cipher`` (``KEY_ENCRYPTION_KEY``), never in clear:
    without one, ``ValidationError("KEY_ENCRYPTION_KEY", ...)`` (after the inputs are checked,
    so a bad input is named first). Re-registering keeps a paused endpoint paused: resuming is a
    separate, explicit step.
    """
    source, url, secret = check_source(source), check_url(url), check_secret(secret)
    stored = seal_callback_secret(secret, cipher)
    endpoint = session.scalar(
        select(CallbackEndpoint).where(CallbackEndpoint.source == source).with_for_update()
    )
    if endpoint is None:
        endpoint = CallbackEndpoint(source=source, url=url, secret=stored, secret_format=FERNET)
        session.add(endpoint)
    else:
        endpoint.url, endpoint.secret, endpoint.secret_format = url, stored, FERNET
        endpoint.active = True
    session.flush()
    return endpoint


def list_endpoints(session: Session) -> list[EndpointView]:
    pending = (
        select(CallbackDelivery.endpoint_id, func.count().label("n"))
        .where(CallbackDelivery.status.in_([PENDING, PAUSED]))
        .group_by(CallbackDelivery.endpoint_id)
        .subquery()
    )
    rows = session.execute(
        select(CallbackEndpoint, func.coalesce(pending.c.n, 0))
        .outerjoin(pending, pending.c.endpoint_id == CallbackEndpoint.id)
        .order_by(CallbackEndpoint.source)
    ).all()
    return [
        EndpointView(e.id, e.source, e.url, e.active, e.paused_at, e.consecutive_failures, n)
        for e, n in rows
    ]


def _endpoint_by_source(session: Session, source: str) -> CallbackEndpoint:
    endpoint = session.scalar(
        select(CallbackEndpoint).where(CallbackEndpoint.source == source).with_for_update()
    )
    if endpoint is None:
        raise NotFound(f"no callback endpoint for {source!r}", field="source")
    return endpoint


def hold(session: Session, endpoint: CallbackEndpoint, *, now: datetime) -> int:
    """Mark the endpoint paused and its PENDING deliveries PAUSED; returns how many were held.
    Used by the delivery's pause threshold and by :func:`pause`."""
    endpoint.paused_at = now
    session.flush()  # the caller's own changes first, so the UPDATE below sees them
    result = session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.endpoint_id == endpoint.id, CallbackDelivery.status == PENDING)
        .values(status=PAUSED),
        execution_options={"synchronize_session": "fetch"},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def pause(session: Session, source: str, *, now: datetime) -> int:
    """Pause the source's endpoint by hand (the receiver is down for maintenance): nothing is
    attempted until :func:`resume`. Returns how many deliveries were held; pausing a paused
    endpoint changes nothing and returns 0."""
    endpoint = _endpoint_by_source(session, check_source(source))
    return 0 if endpoint.paused_at is not None else hold(session, endpoint, now=now)


def resume(session: Session, source: str, *, now: datetime) -> int:
    """Un-pause the source's endpoint; its PAUSED deliveries are due now. Returns their count."""
    endpoint = _endpoint_by_source(session, check_source(source))
    endpoint.paused_at = None
    endpoint.retry_after = None
    endpoint.consecutive_failures = 0
    result = session.execute(
        update(CallbackDelivery)
        .where(CallbackDelivery.endpoint_id == endpoint.id, CallbackDelivery.status == PAUSED)
        .values(status=PENDING, next_attempt_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
