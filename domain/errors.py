"""The one error tree of orderflow.

::

    OrderflowError
    ├── ValidationError          bad input at an edge; never retried
    ├── ConflictError            same idempotency key, different body
    ├── NotFound                 an id that does not exist
    ├── InvalidTransition        a status change the transition table forbids
    ├── ReservationRefused       the order cannot be reserved (carries the reject reason)
    ├── Overloaded               intake is too far behind: send again after ``retry_after_s``
    └── ProviderError            anything a provider adapter raises (adapters/errors.py)
        ├── ProviderUnavailable  network, timeout, 5xx, throttling: retryable
        ├── ProviderRejected     a business refusal: not retryable
        └── SignatureInvalid     a forged or corrupted message: a security event

Retryable errors carry ``retryable = True``; the task layer reads only that attribute to decide
between retry and dead letter, so the classification is made once, where the error is raised.

The errors about one input (``ValidationError``, ``ConflictError``, ``NotFound``) carry the
``field`` it is about and the ``reason``, named by the raiser: the API's error shape reads them
(``api/errors.py`` maps this tree to HTTP once) and never parses them out of the message.
``ConflictError`` and ``NotFound`` take the message first, as any exception, then ``field=`` and
optionally ``reason=`` (the message when omitted); a 404 without a field names ``id``.
"""

from __future__ import annotations


class OrderflowError(Exception):
    """Root of every error orderflow raises on purpose."""

    retryable: bool = False


class ValidationError(OrderflowError):
    """Input that fails validation; ``field`` names the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class _AboutAField(OrderflowError):
    """An error about one input: ``field`` names it, ``reason`` says what is wrong with it (the
    message when omitted)."""

    def __init__(
        self, message: str, *, field: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.reason = message if reason is None else reason


class ConflictError(_AboutAField):
    """The request contradicts what is stored: an idempotency key reused with a different body, a
    taken SKU or waybill, an order past the stage the request needs (``field``: ``external_id``,
    ``sku``, ``status``...)."""


class NotFound(_AboutAField):
    """The referenced entity does not exist (``field``: the input whose value matched nothing,
    ``order_id``, ``sku``...)."""


class InvalidTransition(OrderflowError):
    """A status change the transition table does not allow."""

    def __init__(self, current: str, target: str) -> None:
        super().__init__(f"transition {current} -> {target} is not allowed")
        self.current = current
        self.target = target


class ReservationRefused(OrderflowError):
    """The order cannot be reserved, so it is rejected; ``reason`` is the rejection's code:
    ``out_of_stock``, ``unknown_sku``, ``inactive_product`` or ``currency_mismatch``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Overloaded(OrderflowError):
    """Intake refuses new work for now (back-pressure); nothing was stored. The client sends
    the same order again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ProviderError(OrderflowError):
    """Base for errors raised by provider adapters."""

    def __init__(self, provider: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{provider}: {message}" + (f" [{code}]" if code else ""))
        self.provider = provider
        self.code = code


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or answered with a transient failure. Retry."""

    retryable = True


class ProviderRejected(ProviderError):
    """The provider refused the request for a business reason. Do not retry blindly."""


class SignatureInvalid(ProviderError):
    """A message whose signature, certificate or timestamp does not verify."""
