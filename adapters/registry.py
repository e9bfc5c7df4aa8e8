"""Builds the concrete adapters from settings. Services only ever see the Protocols.

Each provider is built once per process (keys are parsed once) and shares a ``requests``
session, so connections are pooled. A provider that is not configured raises
:class:`ProviderRejected` with code ``not_configured`` — a clear error, never a silent default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import requests

from adapters.errors import ProviderRejected
from adapters.http import provider_session
from adapters.logistics.base import BookingService, TrackingProvider
from adapters.logistics.kuaidi100 import (
    Kuaidi100Config,
    Kuaidi100Provider,
)
from adapters.logistics.warehouse import WarehouseBookingConfig, WarehouseBookingService
from adapters.payments.alipay import AlipayConfig, AlipayProvider
from adapters.payments.alipay_settlement import AlipaySettlementConfig, AlipaySettlementSource
from adapters.payments.base import PaymentProvider
from adapters.payments.settlement import SettlementSource
from adapters.payments.stripe import StripeConfig, StripeProvider
from adapters.payments.stripe_settlement import StripeSettlementConfig, StripeSettlementSource
from adapters.payments.wechatpay import WeChatPayConfig, WeChatPayProvider
from adapters.payments.wechatpay_settlement import (
    WeChatPaySettlementConfig,
    WeChatPaySettlementSource,
)
from settings import Settings, get_settings

T = TypeVar("T")

PAYMENT_PROVIDERS = ("alipay", "wechatpay", "stripe")

_lock = threading.Lock()
_cache: dict[str, PaymentProvider] = {}
_logistics: dict[str, BookingService | TrackingProvider] = {}
_settlement: dict[str, SettlementSource] = {}


def _require(value: T | None, name: str, provider: str) -> T:
    if value is None:
        raise ProviderRejected(provider, f"{name.upper()} is not set", code="not_configured")
    return value


def _read(path: Path | None, name: str, provider: str) -> bytes:
    return _require(path, name, provider).read_bytes()


def _session() -> requests.Session:
    return provider_session()


def _alipay_config(s: Settings) -> AlipayConfig:
    return AlipayConfig(
        gateway_url=s.alipay_gateway_url,
        app_id=_require(s.alipay_app_id, "alipay_app_id", "alipay"),
        app_private_key_pem=_read(s.alipay_app_private_key_file, "alipay_app_private_key_file",
                                  "alipay"),
        alipay_public_key_pem=_read(s.alipay_public_key_file, "alipay_public_key_file", "alipay"),
        connect_timeout=s.provider_connect_timeout_s,
        read_timeout=s.provider_read_timeout_s,
    )  # fmt: skip


def _alipay(s: Settings) -> PaymentProvider:
    return AlipayProvider(_alipay_config(s), _session())


def _platform_keys(spec: str | None, key_mode: str) -> dict[str, bytes]:
    """``serial=path.pem,…``: required in public-key mode; in platform-certificate mode
    optional (pinned certificates trusted until the first download)."""
    keys: dict[str, bytes] = {}
    if spec is None and key_mode == "platform_certificate":
        return keys
    for item in _require(spec, "wechatpay_platform_keys", "wechatpay").split(","):
        serial, _, path = item.strip().partition("=")
        keys[serial] = Path(path).read_bytes()
    return keys


def _wechatpay(s: Settings) -> PaymentProvider:
    return WeChatPayProvider(_wechatpay_config(s), _session())


def _wechatpay_config(s: Settings) -> WeChatPayConfig:
    api_key = _require(s.wechatpay_api_v3_key, "wechatpay_api_v3_key", "wechatpay")
    return WeChatPayConfig(
        base_url=s.wechatpay_base_url,
        mchid=_require(s.wechatpay_mchid, "wechatpay_mchid", "wechatpay"),
        appid=_require(s.wechatpay_appid, "wechatpay_appid", "wechatpay"),
        merchant_serial_no=_require(s.wechatpay_serial_no, "wechatpay_serial_no", "wechatpay"),
        merchant_private_key_pem=_read(s.wechatpay_private_key_file, "wechatpay_private_key_file",
                                       "wechatpay"),
        api_v3_key=api_key.get_secret_value().encode(),
        platform_public_keys=_platform_keys(s.wechatpay_platform_keys, s.wechatpay_key_mode),
        key_mode=s.wechatpay_key_mode,
        certificate_refresh_s=s.wechatpay_certificate_refresh_s,
        certificate_min_refresh_gap_s=s.wechatpay_certificate_min_refresh_gap_s,
        connect_timeout=s.provider_connect_timeout_s,
        read_timeout=s.provider_read_timeout_s,
    )  # fmt: skip


def _stripe(s: Settings) -> PaymentProvider:
    secret = _require(s.stripe_secret_key, "stripe_secret_key", "stripe")
    webhook = _require(s.stripe_webhook_secret, "stripe_webhook_secret", "stripe")
    config = StripeConfig(
        api_base=s.stripe_api_base,
        secret_key=secret.get_secret_value(),
        webhook_secret=webhook.get_secret_value(),
        api_version=s.stripe_api_version,
        connect_timeout=s.provider_connect_timeout_s,
        read_timeout=s.provider_read_timeout_s,
    )
    return StripeProvider(config, _session())


_BUILDERS = {"alipay": _alipay, "wechatpay": _wechatpay, "stripe": _stripe}


def payment_provider(name: str) -> PaymentProvider:
    """The configured adapter for ``name`` (built on first use in this process)."""
    if name not in _BUILDERS:
        raise ProviderRejected(name, "unknown payment provider", code="unknown_provider")
    with _lock:
        if name not in _cache:
            _cache[name] = _BUILDERS[name](get_settings())
        return _cache[name]


def booking_service() -> BookingService:
    """The warehouse/carrier booking service."""
    with _lock:
        if "booking" not in _logistics:
            s = get_settings()
            key = _require(s.warehouse_api_key, "warehouse_api_key", "warehouse")
            config = WarehouseBookingConfig(
                base_url=s.warehouse_booking_url,
                api_key=key.get_secret_value(),
                connect_timeout=s.provider_connect_timeout_s,
                read_timeout=s.provider_read_timeout_s,
            )
            _logistics["booking"] = WarehouseBookingService(config, _session())
        service = _logistics["booking"]
        assert isinstance(service, BookingService)
        return service


def tracking_provider() -> TrackingProvider:
    """The carrier-tracking provider (Kuaidi100)."""
    with _lock:
        if "tracking" not in _logistics:
            s = get_settings()
            key = _require(s.kuaidi100_key, "kuaidi100_key", "kuaidi100")
            salt = _require(s.kuaidi100_callback_salt, "kuaidi100_callback_salt", "kuaidi100")
            config = Kuaidi100Config(
                query_url=s.kuaidi100_query_url,
                subscribe_url=s.kuaidi100_subscribe_url,
                customer=_require(s.kuaidi100_customer, "kuaidi100_customer", "kuaidi100"),
                key=key.get_secret_value(),
                callback_salt=salt.get_secret_value(),
                connect_timeout=s.provider_connect_timeout_s,
                read_timeout=s.provider_read_timeout_s,
            )
            _logistics["tracking"] = Kuaidi100Provider(config, _session())
        provider = _logistics["tracking"]
        assert isinstance(provider, TrackingProvider)
        return provider


def _stripe_settlement(s: Settings) -> SettlementSource:
    secret = _require(s.stripe_secret_key, "stripe_secret_key", "stripe")
    config = StripeSettlementConfig(
        api_base=s.stripe_api_base,
        secret_key=secret.get_secret_value(),
        api_version=s.stripe_api_version,
        ready_margin=timedelta(seconds=s.settlement_ready_margin_s),
        connect_timeout=s.provider_connect_timeout_s,
    )
    return StripeSettlementSource(config, _session())


def _alipay_settlement(s: Settings) -> SettlementSource:
    config = AlipaySettlementConfig(gateway=_alipay_config(s), pid=s.alipay_pid)
    return AlipaySettlementSource(config, _session())


def _wechatpay_settlement(s: Settings) -> SettlementSource:
    config = WeChatPaySettlementConfig(payment=_wechatpay_config(s))
    return WeChatPaySettlementSource(config, WeChatPayProvider(config.payment, _session()))


#: Settlement sources (daily bills) by provider; each builder raises ``not_configured`` like
#: the payment builders when its keys are missing.
_SETTLEMENT_BUILDERS: dict[str, Callable[[Settings], SettlementSource]] = {
    "stripe": _stripe_settlement,
    "alipay": _alipay_settlement,
    "wechatpay": _wechatpay_settlement,
}
#: Providers whose daily bills orderflow can fetch (services.settlement).
SETTLEMENT_PROVIDERS = tuple(_SETTLEMENT_BUILDERS)


def settlement_source(name: str) -> SettlementSource:
    """The configured settlement source (daily bills) for ``name``, built once per process."""
    if name not in _SETTLEMENT_BUILDERS:
        raise ProviderRejected(name, "no settlement source (bills)", code="not_configured")
    with _lock:
        if name not in _settlement:
            _settlement[name] = _SETTLEMENT_BUILDERS[name](get_settings())
        return _settlement[name]


def configured_settlement_providers() -> tuple[str, ...]:
    """The settlement providers whose keys are set: the beat job fetches these and skips the
    others (a shop that takes only Stripe has no Alipay bill to fetch)."""
    configured = []
    for name in SETTLEMENT_PROVIDERS:
        try:
            settlement_source(name)
        except ProviderRejected as exc:
            if exc.code != "not_configured":
                raise
        else:
            configured.append(name)
    return tuple(configured)


def reset() -> None:
    """Forget built adapters (settings changed, e.g. in tests)."""
    with _lock:
        _cache.clear()
        _logistics.clear()
        _settlement.clear()
