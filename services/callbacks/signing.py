"""The event body and its signature: the same bytes for every attempt and resend of an event,
signed ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>``."""

from __future__ import annotations

import hmac
import json

from pydantic import SecretStr

from models import CallbackDelivery
from services.callbacks.rules import SIGNATURE_TOLERANCE_S


def event_body(delivery: CallbackDelivery) -> bytes:
    """The event as JSON bytes; the same bytes for every attempt and resend of the event."""
    event = {
        "id": str(delivery.event_id),
        "type": delivery.event_type,
        "created_at": delivery.created_at.isoformat(),
        "sequence": delivery.id,
        "data": delivery.payload,
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True, default=str).encode()


def sign(secret: SecretStr, timestamp: int, body: bytes) -> str:
    """The ``X-Orderflow-Signature`` value for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.get_secret_value().encode(), f"{timestamp}.".encode() + body, "sha256")
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(
    secret: SecretStr,
    header: str,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Reference check for receivers: a valid ``v1`` MAC and a timestamp within tolerance."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))
