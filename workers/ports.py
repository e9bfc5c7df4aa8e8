"""The real ports and stage settings that tasks, the CLI and the console hand to services."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from adapters.callbacks import HttpSender
from adapters.outbound import OutboundPolicy
from adapters.ratelimit import TokenBucket
from domain.allocation import Policy, Strategy, parse_warehouses
from domain.tracking import Cadence
from services.callbacks.rules import RetryPolicy
from services.payments import PaymentConfig
from services.ports import Ports, utcnow
from services.provider_calls import gate_for
from services.returns import ReturnPolicy
from services.shipping import ShippingConfig
from services.tracking.poll import TrackingConfig
from settings import get_settings
from workers.connections import redis_client


def ports() -> Ports:
    """The gate with breakers shared through Redis, the wall clock, a unit of work per step."""
    return Ports(gate=gate_for(redis_client()), clock=utcnow)


def allocation_policy() -> Policy:
    """``ALLOCATION_STRATEGY`` and ``WAREHOUSES`` as the reservation's allocation policy."""
    s = get_settings()
    return _policy(s.allocation_strategy, s.warehouses or "")


@lru_cache(maxsize=8)
def _policy(strategy: str, warehouses: str) -> Policy:
    # Parsed once per distinct value, not once per reservation (settings validated it at start).
    return Policy(Strategy(strategy), parse_warehouses(warehouses))


def payment_config() -> PaymentConfig:
    s = get_settings()
    return PaymentConfig(
        notify_base_url=s.public_base_url,
        create_redrive_s=s.create_redrive_s,
        first_query_s=s.payment_query_first_s,
        create_min_left_s=s.payment_create_min_left_s,
    )


def shipping_config() -> ShippingConfig:
    s = get_settings()
    return ShippingConfig(
        redrive_s=s.shipping_redrive_s,
        first_poll_s=s.tracking_first_poll_s,
        push_url=f"{s.public_base_url.rstrip('/')}/webhooks/kuaidi100",
        policy=allocation_policy(),
    )


def return_policy() -> ReturnPolicy:
    """``AFTERSALE_WINDOW_S``, ``RETURN_SHIP_BACK_S`` and ``RETURN_AUTO_APPROVE_MAX``."""
    s = get_settings()
    return ReturnPolicy(window_s=s.aftersale_window_s, ship_back_s=s.return_ship_back_s,
                        auto_approve_max=s.return_auto_approve_max)  # fmt: skip


#: A shipment that got a push this recently is polled only as a fallback (in real hours).
PUSH_WINDOW_H = 8


def tracking_config() -> TrackingConfig:
    """The cadence compressed by ``TRACKING_TIME_SCALE`` (its minimum interval as configured),
    the account's quota, and a lease longer than a poll task can live (its hard time limit)."""
    s = get_settings()
    cadence = replace(
        Cadence().scaled(s.tracking_time_scale), min_interval=s.tracking_min_interval_s
    )
    return TrackingConfig(
        cadence=cadence, rate_per_s=s.tracking_rate_per_s, burst=s.tracking_burst,
        tick_s=s.tracking_interval_s, batch=s.tracking_batch, chunk=s.tracking_poll_chunk,
        lease_s=s.task_time_limit_s * 2.0,
        push_window_s=PUSH_WINDOW_H * 3600 / s.tracking_time_scale,
        retry_after_circuit_s=s.circuit_cooldown_s,
    )  # fmt: skip


@lru_cache(maxsize=1)
def tracking_quota() -> TokenBucket:
    """The quota is per Kuaidi100 account (``customer``): deployments sharing one account share
    one bucket, whatever else differs between them."""
    s = get_settings()
    account = s.kuaidi100_customer or "default"
    return TokenBucket(
        redis_client(), "kuaidi100", s.tracking_rate_per_s, s.tracking_burst, account=account
    )


def callback_policy() -> RetryPolicy:
    s = get_settings()
    return RetryPolicy(
        backoff_first_s=s.callback_backoff_first_s,
        backoff_cap_s=s.callback_backoff_cap_s,
        pause_after=s.callback_pause_after,
        max_attempts=s.callback_max_attempts,
    )


@lru_cache(maxsize=1)
def callback_sender() -> HttpSender:
    """One sender per process, so its session's keep-alive connections outlive a task (the
    threads of a callbacks worker share it: requests' pools are thread-safe). Inside
    addresses only as ``OUTBOUND_ALLOWED_NETWORKS`` allows."""
    s = get_settings()
    return HttpSender(
        timeout=(s.callback_connect_timeout_s, s.callback_read_timeout_s),
        policy=OutboundPolicy.from_setting(s.outbound_allowed_networks),
    )
