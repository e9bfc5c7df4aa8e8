"""In-memory fakes of the adapter Protocols, for unit tests (DESIGN.md §6).

* :class:`FakePaymentProvider` — :class:`adapters.payments.base.PaymentProvider`
* :class:`FakeBookingService` — :class:`adapters.logistics.base.BookingService`
* :class:`FakeTrackingProvider` — :class:`adapters.logistics.base.TrackingProvider`
* :class:`FakeGate` — :class:`services.provider_calls.ProviderGate` (a circuit that can be opened)
* :class:`FakeSender` — :class:`adapters.callbacks.CallbackSender` (scripted answers)

They keep the contract the real adapters keep against the simulators (tests/unit/test_fakes.py
checks it): idempotent by the same keys, statuses only move forward, notifications and pushes
verified before anything is read, and the same error tree (``ProviderUnavailable`` retryable,
``ProviderRejected`` with a ``code``, ``SignatureInvalid``). Where the real providers disagree
the fake picks one documented behaviour (noted on the method). Every fake can be told to fail its
next calls (:meth:`Faulty.fail_next`, :meth:`Faulty.reject_next`); the ledgers (``trades``,
``refunds``, ``bookings``, ``queries`` …) are public so tests assert outcomes, not calls.
"""

from __future__ import annotations

from tests.fakes.base import FakeGate, FakeSender, Faulty, ManualClock
from tests.fakes.logistics import FakeBookingService, FakeTrackingProvider
from tests.fakes.payments import FakePaymentProvider, FakeTrade

__all__ = [
    "FakeBookingService",
    "FakeGate",
    "FakePaymentProvider",
    "FakeSender",
    "FakeTrackingProvider",
    "FakeTrade",
    "Faulty",
    "ManualClock",
]
