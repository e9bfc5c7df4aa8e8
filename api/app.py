"""The HTTP app: intake and orders (:mod:`api.orders`), users, catalog and callback
administration, provider webhooks, the ops console, health and ``/metrics``.

Errors are mapped to the one error shape once, by the handlers :mod:`api.errors` installs; the
published OpenAPI schema declares that shape (:class:`api.errors.ErrorBody`) for the 4xx/5xx of
every route, in place of FastAPI's ``{detail}`` 422, and declares the ``POST /v1/orders`` body,
which the route reads raw.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from api.callbacks import router as callbacks_router
from api.catalog import router as catalog_router
from api.console import router as console_router
from api.console_actions import router as console_actions_router
from api.console_admin import router as console_admin_router
from api.console_auth import router as console_auth_router
from api.console_pages import router as console_pages_router
from api.console_settlement import router as console_settlement_router
from api.disconnects import QuietDisconnects
from api.errors import COMMON_ERRORS, install_error_handlers
from api.limits import BodySizeLimit, RejectNulCharacters
from api.metrics_access import install_metrics, metrics_lifespan
from api.orders import order_message_schemas
from api.orders import router as orders_router
from api.payments import router as payments_router
from api.returns import router as returns_router
from api.shipping import router as shipping_router
from api.users import router as users_router
from settings import get_settings


def create_app() -> FastAPI:
    app = FastAPI(
        title="orderflow", version="0.1.0", responses=COMMON_ERRORS, lifespan=metrics_lifespan
    )
    app.add_middleware(RejectNulCharacters)  # inner: reads bodies BodySizeLimit has capped
    app.add_middleware(BodySizeLimit, max_bytes=get_settings().max_body_bytes)
    # Outermost: it must see the server's own messages, and catch what any layer raises.
    app.add_middleware(QuietDisconnects)
    install_error_handlers(app)

    # The intake route first: FastAPI tries routes in order, and matching each one costs CPU
    # on the hottest path (no other router has a /v1/orders path, so none is shadowed).
    app.include_router(orders_router)
    app.include_router(returns_router)
    # Static webhook paths (/webhooks/kuaidi100) before the /webhooks/{provider} pattern.
    app.include_router(shipping_router)
    app.include_router(payments_router)
    app.include_router(users_router)
    app.include_router(catalog_router)
    app.include_router(callbacks_router)
    app.include_router(console_auth_router)
    app.include_router(console_router)
    app.include_router(console_pages_router)
    app.include_router(console_admin_router)
    app.include_router(console_actions_router)
    app.include_router(console_settlement_router)

    install_metrics(app, get_settings())  # METRICS_TOKEN, METRICS_PORT: api.metrics_access

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.openapi = _with_schemas(app.openapi, order_message_schemas())  # type: ignore[method-assign]
    return app


def _with_schemas(
    build: Callable[[], dict[str, Any]], schemas: dict[str, Any]
) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with ``schemas`` added to ``components.schemas``: the models a route
    declares by hand (``openapi_extra``) that FastAPI does not collect itself. ``build`` caches
    the schema it returns, so they are added once."""

    def openapi() -> dict[str, Any]:
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in schemas.items():
            components.setdefault(name, definition)
        return schema

    return openapi


app = create_app()
