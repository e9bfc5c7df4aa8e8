"""Every Celery task's name, in one place.

Services name the follow-ups they return with these (``Followup(SHIPPING_BOOK, order_id)``), the
task modules register under them, ``celeryconfig`` schedules the beat jobs with them, and the
publisher sends them. A task's queue follows from the part before the dot (``celeryconfig``'s
routes), so a name is also an address: renaming one moves work between queues.
"""

from __future__ import annotations

ORDERS_INTAKE = "orders.intake"
ORDERS_PROCESS = "orders.process"
ORDERS_RESERVE_BATCH = "orders.reserve_batch"  # a list of order ids: one transaction

PAYMENTS_CREATE = "payments.create"
PAYMENTS_QUERY = "payments.query"
PAYMENTS_EXPIRE = "payments.expire"
PAYMENTS_CLOSE = "payments.close"
PAYMENTS_REFUND = "payments.refund"
PAYMENTS_LOOKUP_REFUNDS = "payments.lookup_refunds"  # "<payment id>:<refund no or empty>"

SHIPPING_BOOK = "shipping.book"
SHIPPING_SUBSCRIBE = "shipping.subscribe"

TRACKING_POLL = "tracking.poll"

CALLBACKS_DELIVER = "callbacks.deliver"

MAINTENANCE_SWEEP = "maintenance.sweep"
MAINTENANCE_POLL_PAYMENTS = "maintenance.poll_payments"
MAINTENANCE_RECONCILE = "maintenance.reconcile"
MAINTENANCE_SCHEDULE_TRACKING = "maintenance.schedule_tracking"
MAINTENANCE_TRACKING_STALENESS = "maintenance.tracking_staleness"
MAINTENANCE_DISPATCH_CALLBACKS = "maintenance.dispatch_callbacks"
MAINTENANCE_SETTLEMENT = "maintenance.settlement"  # the last days' bills: fetch and match
MAINTENANCE_SETTLEMENT_DAY = "maintenance.settlement_day"  # one provider and date, on demand
