"""Every provider simulator together, with keys generated for the run.

Used by ``orderflow demo`` and the end-to-end tests: :meth:`ProviderStack.start` generates the
merchant keys (test-only, written 0600 into ``key_dir``, never committed), starts the Alipay,
WeChat Pay, Stripe, Kuaidi100 and warehouse-booking simulators on 127.0.0.1, and exposes
:attr:`env` — the settings orderflow's processes need to talk to them. ``time_scale`` compresses
tracking time for both sides: a parcel's 34-hour trace takes 34 h / time_scale.
:meth:`charges` and :meth:`refunds` read the simulators' own ledgers, which are the judge of
"charged exactly once".

Like every simulator, this imports nothing from ``adapters/``, ``services/`` or ``domain/``.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from simulators.alipay import AlipaySimulator
from simulators.kuaidi100 import Kuaidi100Simulator
from simulators.stripe import StripeSimulator
from simulators.warehouse import WarehouseSimulator
from simulators.wechatpay import WeChatPaySimulator

PROVIDERS = ("alipay", "wechatpay", "stripe")


def _keypair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@dataclass
class ProviderStack:
    alipay: AlipaySimulator
    wechatpay: WeChatPaySimulator
    stripe: StripeSimulator
    kuaidi100: Kuaidi100Simulator
    warehouse: WarehouseSimulator
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        public_base_url: str,
        key_dir: Path,
        *,
        time_scale: float = 3600.0,
        base_port: int = 0,
        wechatpay_key_mode: str = "public_key",
    ) -> ProviderStack:
        """Start every simulator; ``base_port`` > 0 gives fixed ports base+1 … base+5.

        ``wechatpay_key_mode`` ``platform_certificate`` makes WeChat Pay a merchant of the
        certificate era: no key is handed over, orderflow downloads the certificates."""
        key_dir.mkdir(parents=True, exist_ok=True)
        base = public_base_url.rstrip("/")
        ali_private, ali_public = _keypair()
        port = lambda n: base_port + n if base_port else 0  # noqa: E731 - tiny local rule
        alipay = AlipaySimulator("2021000000000001", ali_public, port=port(1)).start()
        wx_private, wx_public = _keypair()
        api_v3_key = secrets.token_hex(16).encode()  # 32 ASCII bytes, as WeChat issues them
        wx_serial = secrets.token_hex(20).upper()
        wechat = WeChatPaySimulator(
            mchid="1900000001", appid="wx0000000000000001", merchant_serial_no=wx_serial,
            merchant_public_key_pem=wx_public, api_v3_key=api_v3_key, port=port(2),
            key_mode=wechatpay_key_mode,
        ).start()  # fmt: skip
        stripe_secret = "sk_test_" + secrets.token_hex(16)
        webhook_secret = "whsec_" + secrets.token_hex(16)
        stripe = StripeSimulator(
            stripe_secret, webhook_secret, f"{base}/webhooks/stripe", port=port(3)
        ).start()
        platform = _write(key_dir / "wechatpay-platform.pem", wechat.platform_public_key_pem)
        k100_key = secrets.token_hex(12)
        min_interval = 1800.0 / time_scale  # Kuaidi100's 30-minute rule, compressed
        kuaidi100 = Kuaidi100Simulator(
            "K100CUSTOMER", k100_key, time_scale=time_scale, min_query_interval_s=min_interval,
            port=port(4),
        ).start()  # fmt: skip
        warehouse_key = secrets.token_hex(12)
        warehouse = WarehouseSimulator(warehouse_key, tracker=kuaidi100, port=port(5)).start()
        env = {
            "PUBLIC_BASE_URL": base,
            "ALIPAY_GATEWAY_URL": alipay.gateway_url,
            "ALIPAY_APP_ID": alipay.app_id,
            "ALIPAY_APP_PRIVATE_KEY_FILE": str(_write(key_dir / "alipay-app.pem", ali_private)),
            "ALIPAY_PUBLIC_KEY_FILE": str(
                _write(key_dir / "alipay-public.pem", alipay.alipay_public_key_pem)
            ),
            "WECHATPAY_BASE_URL": wechat.url,
            "WECHATPAY_MCHID": wechat.mchid,
            "WECHATPAY_APPID": wechat.appid,
            "WECHATPAY_SERIAL_NO": wx_serial,
            "WECHATPAY_PRIVATE_KEY_FILE": str(
                _write(key_dir / "wechatpay-merchant.pem", wx_private)
            ),
            "WECHATPAY_API_V3_KEY": api_v3_key.decode(),
            "WECHATPAY_KEY_MODE": wechatpay_key_mode,
            "STRIPE_API_BASE": stripe.url,
            "STRIPE_SECRET_KEY": stripe_secret,
            "STRIPE_WEBHOOK_SECRET": webhook_secret,
            "KUAIDI100_QUERY_URL": f"{kuaidi100.url}/poll/query.do",
            "KUAIDI100_SUBSCRIBE_URL": f"{kuaidi100.url}/poll",
            "KUAIDI100_CUSTOMER": kuaidi100.customer,
            "KUAIDI100_KEY": k100_key,
            "KUAIDI100_CALLBACK_SALT": secrets.token_hex(8),
            "WAREHOUSE_BOOKING_URL": warehouse.url,
            "WAREHOUSE_API_KEY": warehouse_key,
            "TRACKING_TIME_SCALE": str(time_scale),
            "TRACKING_MIN_INTERVAL_S": str(min_interval),
        }
        if wechatpay_key_mode == "public_key":  # certificates are downloaded, not handed over
            env["WECHATPAY_PLATFORM_KEYS"] = f"{wechat.platform_serial}={platform}"
        return cls(alipay, wechat, stripe, kuaidi100, warehouse, env)

    def stop(self) -> None:
        for sim in (self.alipay, self.wechatpay, self.stripe, self.warehouse, self.kuaidi100):
            sim.stop()

    def simulator(self, provider: str) -> Any:
        return {"alipay": self.alipay, "wechatpay": self.wechatpay, "stripe": self.stripe}[provider]

    def pay(self, provider: str, out_trade_no: str) -> None:
        """The buyer pays (Stripe finds the PaymentIntent by its out_trade_no metadata)."""
        self.simulator(provider).pay(out_trade_no)

    def auto_pay(self, after_ms: int) -> None:
        """Every payment provider's buyer pays ``after_ms`` after the payment is created."""
        self.alipay.configure(auto_pay_after_ms=after_ms)
        self.wechatpay.set_options(auto_pay_after_ms=after_ms)
        self.stripe.auto_pay_after_ms = after_ms

    def set_faults(self, **faults: Any) -> None:
        self.alipay.set_faults(**faults)
        self.wechatpay.set_faults(**faults)
        self.stripe.set_faults(**faults)

    def charges(self) -> Counter[tuple[str, str]]:
        """How many times each (provider, out_trade_no) was charged, per the simulators."""
        return count_charges(self.alipay.ledger(), self.wechatpay.ledger(), self.stripe.ledger())

    def refunds(self) -> dict[tuple[str, str], int]:
        """Total refunded per (provider, out_trade_no), in minor units."""
        totals: Counter[tuple[str, str]] = Counter()
        for r in self.alipay.ledger()["refunds"]:
            totals["alipay", r["out_trade_no"]] += int(Decimal(r["amount"]) * 100)
        for r in self.wechatpay.ledger()["refunds"]:
            if r["status"] in ("SUCCESS", "PROCESSING"):
                totals["wechatpay", r["out_trade_no"]] += int(r["amount"])
        ledger = self.stripe.ledger()
        trade_of = {
            pi["id"]: pi["metadata"].get("out_trade_no") for pi in ledger["payment_intents"]
        }
        for r in ledger["refunds"]:
            if r["status"] in ("succeeded", "pending"):
                totals["stripe", trade_of[r["payment_intent"]]] += int(r["amount"])
        return dict(totals)


def count_charges(
    alipay: dict[str, Any], wechatpay: dict[str, Any], stripe: dict[str, Any]
) -> Counter[tuple[str, str]]:
    """How many times each (provider, out_trade_no) was charged, from the three simulators'
    ledgers (``ledger()`` in process, or ``GET /_sim/ledger`` from another host)."""
    counts: Counter[tuple[str, str]] = Counter()
    for c in alipay["charges"]:
        counts["alipay", c["out_trade_no"]] += 1
    for c in wechatpay["charges"]:
        counts["wechatpay", c["out_trade_no"]] += 1
    trade_of = {pi["id"]: pi["metadata"].get("out_trade_no") for pi in stripe["payment_intents"]}
    for c in stripe["charges"]:
        counts["stripe", trade_of[c["payment_intent"]]] += 1
    return counts


def write_env_file(env: dict[str, str], path: Path, *, advertise_host: str | None) -> None:
    """Write the settings as KEY=VALUE lines (0600), URLs pointing at ``advertise_host``."""
    lines = []
    for key, value in sorted(env.items()):
        if advertise_host and key != "PUBLIC_BASE_URL":
            value = value.replace("127.0.0.1", advertise_host)
        lines.append(f"{key}={value}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)  # readers never see half a file


def main(argv: list[str] | None = None) -> None:
    """Run every simulator until SIGTERM/Ctrl-C (docker-compose's ``dev`` profile uses this).

    The generated keys and URLs go to ``--env-out``; orderflow's processes read that file when
    ``ORDERFLOW_ENV_FILE`` points at it.
    """
    import argparse
    import signal
    import threading

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--public-base-url", required=True, help="orderflow API, for webhooks")
    parser.add_argument("--env-out", type=Path, required=True)
    parser.add_argument("--key-dir", type=Path, default=None, help="default: next to --env-out")
    parser.add_argument("--advertise-host", default=None, help="hostname clients use")
    parser.add_argument("--base-port", type=int, default=9100)
    parser.add_argument("--time-scale", type=float, default=3600.0)
    parser.add_argument(
        "--wechatpay-key-mode", choices=("public_key", "platform_certificate"), default="public_key"
    )
    parser.add_argument(
        "--auto-pay-ms", type=int, default=None, help="every buyer pays this long after creation"
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    key_dir = args.key_dir or args.env_out.parent / "keys"
    stack = ProviderStack.start(
        args.public_base_url,
        key_dir,
        time_scale=args.time_scale,
        base_port=args.base_port,
        wechatpay_key_mode=args.wechatpay_key_mode,
    )
    if args.auto_pay_ms is not None:
        stack.auto_pay(args.auto_pay_ms)
    write_env_file(stack.env, args.env_out, advertise_host=args.advertise_host)
    print(f"simulators on ports {args.base_port + 1}-{args.base_port + 5}; "
          f"settings in {args.env_out}", flush=True)  # fmt: skip
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
