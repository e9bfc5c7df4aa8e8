"""The one typed settings object. Nothing else in orderflow reads ``os.environ``.

Every field is read from an environment variable of the same name in upper case (or a ``.env``
file). With ``DATABASE_URL`` / ``REDIS_URL`` unset, :mod:`workers.embedded` starts an embedded
PostgreSQL and Redis under ``.orderflow/`` and exports their URLs into the environment, so every
child process (workers, beat, API) of that run reuses the same servers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from domain import config_values
from settings_files import FileValues

# PROJECT_ROOT is re-exported: many modules import it from here.
from settings_servers import PROJECT_ROOT as PROJECT_ROOT
from settings_servers import ServerSettings
from settings_up_env import UpEnvValues

#: A second settings file, e.g. the one the dev-profile simulators write with their generated
#: keys. Missing files are ignored; real environment variables always win.
EXTRA_ENV_FILE = os.environ.get("ORDERFLOW_ENV_FILE")


class Settings(ServerSettings):
    """Every field comes from the variable of its name in upper case, in the environment or a
    ``.env`` file (the environment wins).

    ``<NAME>_FILE`` instead gives any setting's value in a file (Docker secrets mount them at
    ``/run/secrets/<name>``): the file's UTF-8 text with trailing CR/LF removed, e.g.
    ``ADMIN_API_KEY_FILE=/run/secrets/admin_api_key`` or ``DATABASE_URL_FILE`` (a URL that
    carries the password). ``NAME`` and ``NAME_FILE`` both set (in the environment or an env
    file) is an error naming both; an unreadable file is an error naming the variable and the
    path, never the content; an empty ``NAME_FILE`` counts as unset. Settings whose own name
    ends in ``_file`` (``ALIPAY_APP_PRIVATE_KEY_FILE``: a path) keep that meaning.

    While an ``orderflow up`` runs on this ``STATE_DIR``, the settings it generated
    (``<STATE_DIR>/up.env``) come after the environment and before ``.env``: a command in
    another shell reaches the simulators and servers that ``up`` started (settings_up_env.py).
    """

    model_config = SettingsConfigDict(
        env_file=(".env", EXTRA_ENV_FILE) if EXTRA_ENV_FILE else ".env",
        extra="ignore",
        frozen=True,
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        # Conflicts are errors, so the files' place in the order only matters against init
        # arguments (tests), which win.
        files = FileValues(settings_cls, dotenv_settings, env_settings)
        # What a running `orderflow up` generated (STATE_DIR/up.env): below the environment,
        # above .env, as up's own children see it (settings_up_env.py).
        up = UpEnvValues(settings_cls, init_settings, dotenv_settings, env_settings)
        return init_settings, files, env_settings, up, dotenv_settings, file_secret_settings

    # --- API ----------------------------------------------------------------------------------
    api_keys: SecretStr = Field(
        SecretStr("dev-key-change-me"),
        description="Comma-separated intake API keys (source:key or key); test/dev default only",
    )
    # Intake authentication beyond API_KEYS (see services/api_keys.py and api/auth.py).
    require_signed_requests: bool = Field(
        False, description="Every intake request must carry X-Timestamp/X-Nonce/X-Signature"
    )
    signature_window_s: int = Field(
        300, ge=1, le=3600, description="Largest accepted X-Timestamp skew, both directions"
    )
    key_encryption_key: SecretStr | None = Field(
        None,
        description="Fernet key(s), comma-separated, newest first: encrypt stored secrets",
    )
    api_key_cache_ttl_s: float = Field(
        5.0, ge=0, le=60, description="In-process cache of API-key lookups; revocation lag"
    )
    max_body_bytes: int = Field(1_048_576, description="Largest accepted request body")
    flower_basic_auth: SecretStr | None = Field(
        None, description="user:password for Flower; `orderflow up` generates one when unset"
    )
    admin_api_key: SecretStr | None = Field(
        None, description="X-Admin-Key for /v1/admin/*; unset = the admin API refuses everyone"
    )
    session_ttl_s: int = Field(86400, ge=60, description="Login token lifetime")
    login_max_failures: int = Field(
        10, ge=1, description="Failed logins per account and per address before 429"
    )
    login_window_s: int = Field(60, ge=1, description="Sliding window of the login rate limit")
    # The ops console's sessions and logins (see services/console_sessions.py, api/console_auth.py).
    console_idle_timeout_s: int = Field(
        1800, ge=60, description="A console session unused this long ends"
    )
    console_session_max_s: int = Field(
        8 * 3600, ge=300, description="A console session ends this long after login, used or not"
    )
    console_login_max_failures: int = Field(
        5, ge=1, description="Failed console logins per name and per address in the window"
    )
    console_login_global_max_failures: int = Field(
        50, ge=1, description="Failed console logins in the window, all names and addresses"
    )
    console_login_window_s: int = Field(
        300, ge=1, description="Sliding window of the console login limits"
    )
    register_max_per_address: int = Field(
        20, ge=1, description="Valid POST /v1/users (201 or 409) per client address before 429"
    )
    register_window_s: int = Field(
        3600, ge=1, description="Sliding window of the registration rate limit"
    )

    # --- pipeline timing (seconds) ------------------------------------------------------------
    payment_window_s: int = Field(900, ge=1, description="Reservation lifetime / payment deadline")
    intake_max_wait_s: float = Field(
        300.0,
        ge=0,
        description="Back-pressure: refuse new orders (429) while the oldest "
        "accepted order has waited this long to be reserved (0: no bound)",
    )
    intake_max_backlog: int = Field(
        0,
        ge=0,
        description="Back-pressure: refuse new orders (429) while this many accepted "
        "orders wait to be reserved (0: no bound)",
    )
    intake_retry_after_s: float = Field(
        5.0, gt=0, description="The Retry-After a back-pressure refusal answers with"
    )
    intake_batch_max: int = Field(
        64,
        ge=1,
        description="Most orders one HTTP intake group commit stores (one "
        "transaction, one publish); 1 turns group commit off",
    )
    intake_redrive_s: int = Field(
        30, ge=1, description="A RECEIVED order untouched this long is re-driven by the sweeper"
    )
    sweep_interval_s: float = Field(5.0, gt=0, description="Beat period of the stage sweeper")
    free_port_range: str = Field(
        "20000-32000", pattern=r"^\d{4,5}-\d{4,5}$",
        description="Where `orderflow up`, the demo and the tests pick ports for the servers "
        "they start (below Linux's ephemeral range, which port 0 and clients use)",
    )  # fmt: skip
    sweep_batch: int = Field(500, ge=1, description="Rows claimed per sweeper run")
    auto_receive_s: int = Field(
        7 * 86_400, ge=0,
        description="A DELIVERED order counts as received this long after delivery if the "
        "buyer has not confirmed it",
    )  # fmt: skip
    aftersale_window_s: int = Field(
        7 * 86_400, ge=0,
        description="After receipt, how long returns may be requested; the order is "
        "COMPLETED when it passes",
    )  # fmt: skip
    return_ship_back_s: int = Field(
        7 * 86_400, ge=0,
        description="An approved return whose parcel is not shipped back this long after "
        "approval is closed",
    )  # fmt: skip
    return_auto_approve_max: int | None = Field(
        None, ge=0,
        description="Returns asking for at most this many minor units on returnable products "
        "are approved without an operator; unset: an operator decides every one",
    )  # fmt: skip
    reserve_batch_max: int = Field(
        50,
        ge=1,
        description="Most order ids one orders.reserve_batch message carries (one "
        "transaction, a savepoint per order)",
    )
    task_max_retries: int = Field(5, ge=0)
    task_events_lease_s: float = Field(
        30.0,
        gt=0,
        description="Workers send task events this long after a monitor (Flower) "
        "last asked for them; off otherwise (workers/task_events.py)",
    )
    task_soft_time_limit_s: int = 30
    task_time_limit_s: int = 60
    visibility_timeout_s: int = Field(
        300, description="Redis redelivery timeout; must exceed every task's hard time limit"
    )
    default_warehouse: str = Field(
        "main", description="Warehouse of stock commands that name none (and of the demo)"
    )
    # Which warehouses a reservation takes stock from (domain/allocation.py states the rules).
    allocation_strategy: str = Field(
        "fewest_parcels",
        pattern="^(fewest_parcels|priority|nearest)$",
        description="fewest_parcels: fewest warehouses (a single one that fills the order "
        "wins); priority: WAREHOUSES priority order, line by line; nearest: warehouses in the "
        "shipping region first, then fewest parcels",
    )
    warehouses: str | None = Field(
        None,
        description="name:priority[:region][,…]: each warehouse's priority (smaller first) and "
        "region; one not listed ranks last and has no region",
    )

    create_redrive_s: int = Field(
        20, ge=1, description="A RESERVED order without a payment this long is re-driven"
    )

    # --- payments -----------------------------------------------------------------------------
    public_base_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL providers send notifications to"
    )
    payment_poll_interval_s: float = Field(5.0, gt=0, description="Beat period of status polls")
    payment_query_first_s: float = Field(
        10.0, gt=0, description="First status query after create; doubles up to the max"
    )
    payment_query_max_s: float = Field(300.0, gt=0, description="Longest gap between queries")
    payment_create_inline: bool = Field(
        True,
        description="The reserving task creates each payment itself after its commit; false: "
        "it publishes payments.create for the payments workers (credentials kept there only)",
    )
    payment_create_min_left_s: float = Field(
        1.0,
        ge=0,
        description="A payment create with less left before the deadline expires the "
        "order instead of calling the provider (late work never pages anyone)",
    )
    reconcile_interval_s: float = Field(86400.0, gt=0, description="Beat period of reconcile")
    reconcile_sample: int = Field(50, ge=0, description="Final payments re-checked per reconcile")
    settlement_interval_s: float = Field(
        3600.0, gt=0, description="Beat period of the settlement fetch-and-match job"
    )
    settlement_lookback_days: int = Field(
        3, ge=1, le=60, description="Days before today the settlement job fetches when missing"
    )
    settlement_ready_margin_s: float = Field(
        3600.0, ge=0, description="How long after a UTC day ends its Stripe bill counts complete"
    )
    circuit_min_calls: int = Field(
        20, ge=1, description="Calls in the window before the failure ratio may open a circuit"
    )
    circuit_failure_ratio: float = Field(
        0.5, gt=0, le=1, description="Share of failed calls in the window that opens the circuit"
    )
    circuit_window_s: float = Field(30.0, gt=0, description="Window the failure ratio is over")
    circuit_cooldown_s: float = Field(30.0, gt=0, description="How long an open circuit waits")
    provider_connect_timeout_s: float = 3.05
    provider_read_timeout_s: float = 10.0

    alipay_gateway_url: str = "https://openapi.alipay.com/gateway.do"
    alipay_app_id: str | None = None
    alipay_app_private_key_file: Path | None = Field(None, description="PEM, app private key")
    alipay_public_key_file: Path | None = Field(None, description="PEM, Alipay public key")
    alipay_pid: str | None = Field(
        None,
        pattern=r"^2088\d{12}$",
        description="Merchant partner id (2088…): Alipay bills must belong to it; unset, a "
        "bill need only name one account consistently",
    )

    wechatpay_base_url: str = "https://api.mch.weixin.qq.com"
    wechatpay_mchid: str | None = None
    wechatpay_appid: str | None = None
    wechatpay_serial_no: str | None = Field(None, description="Merchant API certificate serial")
    wechatpay_private_key_file: Path | None = Field(None, description="PEM, merchant API key")
    wechatpay_api_v3_key: SecretStr | None = Field(None, description="32-byte APIv3 key")
    wechatpay_platform_keys: str | None = Field(
        None,
        description="serial=path.pem[,serial=path.pem]: WeChat Pay public keys (PUB_KEY_ID_…) or "
        "platform certificates; required in public_key mode, optional pinned certificates in "
        "platform_certificate mode",
    )
    wechatpay_key_mode: str = Field(
        "public_key",
        pattern="^(public_key|platform_certificate)$",
        description="public_key: WeChat Pay public key mode (merchants since ~Sept 2024); "
        "platform_certificate: download and rotate certificates from GET /v3/certificates",
    )
    wechatpay_certificate_refresh_s: float = Field(
        3600.0, gt=0, description="Platform certificates are downloaded again this often"
    )
    wechatpay_certificate_min_refresh_gap_s: float = Field(
        60.0, ge=0, description="Shortest gap between two certificate downloads (unknown serials)"
    )

    # --- shipping and tracking ----------------------------------------------------------------
    shipping_mode: str = Field(
        "book",
        pattern="^(book|manual)$",
        description="book: book through the warehouse API; manual: wait for a registered waybill",
    )
    shipping_redrive_s: int = Field(
        60, ge=1, description="A PAID order not booked this long is re-driven"
    )
    warehouse_booking_url: str = "http://127.0.0.1:9200"
    warehouse_api_key: SecretStr | None = None
    kuaidi100_query_url: str = "https://poll.kuaidi100.com/poll/query.do"
    kuaidi100_subscribe_url: str = "https://poll.kuaidi100.com/poll"
    kuaidi100_customer: str | None = None
    kuaidi100_key: SecretStr | None = None
    kuaidi100_callback_salt: SecretStr | None = Field(None, description="Signs Kuaidi100 pushes")
    tracking_interval_s: float = Field(
        10.0, gt=0, description="Beat period of the tracking scheduler"
    )
    tracking_batch: int = Field(
        200, ge=1, description="Shipments per claim; a tick repeats claims up to its quota share"
    )
    tracking_poll_chunk: int = Field(20, ge=1, description="Shipments polled per task")
    tracking_time_scale: float = Field(
        1.0, gt=0, description="Divides every tracking cadence (demo/tests compress time)"
    )
    tracking_min_interval_s: float = Field(
        1800.0, gt=0, description="Never query one waybill more often (Kuaidi100 locks it)"
    )
    tracking_rate_per_s: float = Field(5.0, gt=0, description="Kuaidi100 queries/s per account")
    tracking_burst: int = Field(10, ge=1, description="Token bucket burst for Kuaidi100 queries")
    tracking_stale_after_s: float = Field(
        3 * 86400.0, gt=0, description="No tracking update this long raises an alert"
    )

    # --- status callbacks to upstream ------------------------------------------------------------
    callback_dispatch_interval_s: float = Field(
        2.0, gt=0, description="Beat period of the callback dispatcher"
    )
    callback_batch: int = Field(500, ge=1, description="Callback deliveries claimed per tick")
    callback_chunk: int = Field(
        20, ge=1, description="Deliveries per callbacks.deliver task and per endpoint per tick"
    )
    callback_lease_s: float = Field(
        120.0, gt=0, description="Claim lease; must exceed the deliver task's hard time limit"
    )
    callback_task_budget_s: float = Field(
        20.0, gt=0, description="A deliver task hands the rest of its chunk back after this"
    )
    callback_connect_timeout_s: float = 2.0
    callback_read_timeout_s: float = 5.0
    callback_backoff_first_s: float = Field(
        10.0, gt=0, description="First retry of a failed callback; doubles per attempt"
    )
    callback_backoff_cap_s: float = Field(900.0, gt=0, description="Longest gap between attempts")
    callback_pause_after: int = Field(
        10, ge=1, description="Consecutive failures that pause an endpoint"
    )
    callback_max_attempts: int = Field(
        20, ge=1, description="Attempts before a callback is FAILED (resend revives it)"
    )
    outbound_allowed_networks: str | None = Field(
        None,
        description="Comma-separated CIDRs that URLs set by an admin or upstream (callback "
        "endpoints) may reach although inside (loopback, private, link-local, metadata...), "
        "e.g. 127.0.0.0/8,::1/128 for local receivers; unset = none (adapters/outbound.py)",
    )

    stripe_api_base: str = "https://api.stripe.com"
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_version: str = Field(
        "2026-04-22.dahlia",
        pattern=r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$",
        description="Stripe-Version sent on every Stripe API request: pins the shapes Stripe "
        "answers in (webhook events come in the endpoint's version, set in the dashboard)",
    )

    @field_validator("database_url")
    @classmethod
    def _driver(cls, value: str | None) -> str | None:
        return config_values.with_psycopg2(value)

    @field_validator("prometheus_multiproc_dir", mode="before")
    @classmethod
    def _empty_dir_is_unset(cls, value: object) -> object:
        # An empty variable must not turn multiprocess mode on in the current directory.
        return None if value == "" else value

    @property
    def tracking_first_poll_s(self) -> float:
        """When a new parcel is first polled: two hours of parcel time (carriers have little to
        say sooner), never sooner than the per-waybill minimum interval."""
        return max(self.tracking_min_interval_s, 2 * 3600 / self.tracking_time_scale)

    @property
    def effective_broker_url(self) -> str:
        url = self.broker_url or self.redis_url
        if not url:
            raise RuntimeError("no broker configured: start the embedded services first")
        return url

    @field_validator("api_keys", "warehouses", "outbound_allowed_networks")
    @classmethod
    def _checked_at_start(cls, value: Any, info: ValidationInfo) -> Any:
        # Parsed once here, so a typo stops the process at start (domain/config_values.py).
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        config_values.check(str(info.field_name), text)
        return value

    @model_validator(mode="after")
    def _network_timeout_within_time_limit(self) -> Settings:
        # A task waiting on a silent database must fail with a retryable error before its soft
        # time limit's signal interrupts it (such a signal once corrupted billiard's result pipe
        # and killed a prefork worker: docs/reliability.md, "What the cluster found").
        if self.db_network_timeout_s >= self.task_soft_time_limit_s:
            raise ValueError(
                f"DB_NETWORK_TIMEOUT_S ({self.db_network_timeout_s:g}) must be below "
                f"TASK_SOFT_TIME_LIMIT_S ({self.task_soft_time_limit_s})"
            )
        return self

    def api_key_map(self) -> dict[str, str]:
        """API_KEYS as :func:`domain.config_values.api_key_map` reads it (plaintext entries)."""
        return config_values.api_key_map(self.api_keys.get_secret_value())

    def api_key_digests(self) -> list[tuple[str, str]]:
        """API_KEYS as :func:`domain.config_values.api_key_digests` reads it (every entry)."""
        return config_values.api_key_digests(self.api_keys.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once. Tests call ``get_settings.cache_clear()``."""
    return Settings()
