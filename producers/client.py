"""OrderProducer: for upstream systems that can reach the broker but not the HTTP API.

The message is validated here first (so a bad order fails in the producer, with field errors),
then published as an ``orders.intake`` task. The worker performs the same idempotent insert as
``POST /v1/orders``, so sending the same ``(source, external_id)`` twice makes one order.

Durability: the message is safe once the broker accepted it. With Redis that means AOF
(``appendfsync everysec``: up to a second can be lost if Redis itself crashes); with RabbitMQ
(quorum queues, publisher confirms) nothing acknowledged is lost. Upstreams that need a
database-backed acknowledgement use the HTTP API, which answers only after the commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Celery

from producers.schema import OrderMessage, parse_message
from services.task_names import ORDERS_INTAKE
from settings import get_settings
from workers.broker import producer_options


class OrderProducer:
    """Publish validated order messages onto the ``orders`` queue."""

    def __init__(self, broker_url: str | None = None) -> None:
        url = broker_url or get_settings().effective_broker_url
        self._app = Celery("orderflow-producer", broker=url)
        self._app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_ignore_result=True,
            broker_connection_retry_on_startup=True,
            task_publish_retry=True,
            # The queues as the workers declare them (quorum queues and publisher confirms on
            # RabbitMQ, which refuses a redeclaration with other arguments).
            **producer_options(url),
        )

    def send(self, message: OrderMessage | Mapping[str, Any]) -> OrderMessage:
        """Validate and publish one order; returns the validated message."""
        msg = message if isinstance(message, OrderMessage) else parse_message(dict(message))
        self._app.send_task(ORDERS_INTAKE, args=[msg.model_dump(mode="json")], queue="orders")
        return msg

    def close(self) -> None:
        self._app.close()

    def __enter__(self) -> OrderProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
