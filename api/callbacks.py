"""Status-callback endpoints, behind the admin API key (``X-Admin-Key``, see :mod:`api.catalog`).

* ``PUT /v1/admin/callbacks/{source}`` ``{"url", "secret"?}`` registers or replaces the source's
  endpoint -> 200. Without ``secret`` one is generated and returned in this response only; a
  given secret is never echoed back. Secrets are stored encrypted: without ``KEY_ENCRYPTION_KEY``
  the request is refused (422 naming it).
* ``GET /v1/admin/callbacks`` lists endpoints with their health (never secrets).
* ``POST /v1/admin/callbacks/{source}/resume`` un-pauses an endpoint -> ``{"released": n}``.
* ``POST /v1/admin/callbacks/resend`` ``{"event_id"}`` or ``{"order_id"}`` queues events again
  with their original event ids -> ``{"queued": n}``.

Errors: 401 without a valid key, 404 for an unknown source or event, 422 naming the field.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy.orm import Session

from api.catalog import Admin
from api.errors import error_responses, run_in_unit_of_work
from services import callbacks
from services.secrets_at_rest import cipher_from_setting
from settings import get_settings

router = APIRouter(prefix="/v1/admin/callbacks", responses=error_responses(401, 404))
T = TypeVar("T")


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=callbacks.MAX_URL_LEN)
    secret: SecretStr | None = Field(None, description="16-200 chars; omitted = generated")


class ResendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str | None = Field(None, max_length=64)
    order_id: str | None = Field(None, max_length=36)


@router.get("")
def list_endpoints(_actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: {"endpoints": [asdict(e) for e in callbacks.list_endpoints(s)]}
    )


@router.put("/{source}")
def register(source: str, body: EndpointIn, _actor: Admin) -> Any:
    generated = body.secret is None
    secret = body.secret or SecretStr(secrets.token_urlsafe(32))

    def put(session: Session) -> dict[str, Any]:
        cipher = cipher_from_setting(get_settings().key_encryption_key)  # unset: a 422 naming it
        endpoint = callbacks.register_endpoint(session, source, body.url, secret, cipher=cipher)
        view: dict[str, Any] = {"id": endpoint.id, "source": endpoint.source, "url": endpoint.url,
                                "paused": endpoint.paused_at is not None}  # fmt: skip
        if generated:
            view["secret"] = secret.get_secret_value()  # this response only; store it now
        return view

    return run_in_unit_of_work(put)


@router.post("/{source}/resume")
def resume(source: str, _actor: Admin) -> Any:
    return run_in_unit_of_work(
        lambda s: {"released": callbacks.resume(s, source, now=datetime.now(UTC))}
    )


@router.post("/resend")
def resend(body: ResendIn, _actor: Admin) -> Any:
    now = datetime.now(UTC)
    return run_in_unit_of_work(
        lambda s: {
            "queued": callbacks.resend(s, now=now, event_id=body.event_id, order_id=body.order_id)
        }
    )
