"""The WeChat Pay platform-certificate store's rules with a manual clock and a scripted download:
validity, the newest serial, one download per interval for an unknown serial, a failed
periodic refresh that keeps the certificates still valid; and the decryption of a downloaded
list (a certificate listed under another serial, or not encrypted with our APIv3 key).
Over HTTP against the simulator: ``tests/integration/adapters/wechatpay/
test_wechatpay_certificates.py``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from adapters.errors import ProviderUnavailable, SignatureInvalid
from adapters.payments.wechatpay_certificates import (
    CertificateStore,
    PlatformCertificate,
    decrypt_certificates,
)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


def cert(serial: str, not_before: float, not_after: float) -> PlatformCertificate:
    return PlatformCertificate(serial, KEY, not_before, not_after)


class Downloads:
    """What ``GET /v3/certificates`` answers next (a list, or an error to raise)."""

    def __init__(self) -> None:
        self.answer: Sequence[PlatformCertificate] | Exception = []
        self.count = 0

    def __call__(self) -> Sequence[PlatformCertificate]:
        self.count += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def downloads() -> Downloads:
    return Downloads()


def store(downloads: Downloads, clock: Clock) -> CertificateStore:
    return CertificateStore(downloads, clock=clock, refresh_interval_s=3600, min_refresh_gap_s=60)


def test_keeps_only_certificates_valid_now_and_names_the_newest(
    downloads: Downloads, clock: Clock
) -> None:
    now = clock.now
    downloads.answer = [
        cert("OLD", now - 900, now + 100),
        cert("NEW", now - 10, now + 9000),
        cert("EXPIRED", now - 900, now - 1),
        cert("NOT_YET", now + 50, now + 9999),
    ]
    certs = store(downloads, clock)

    certs.refresh_due()

    assert certs.serials() == ["NEW", "OLD"]
    assert certs.request_serial() == "NEW"
    clock.now += 100  # OLD expires on its own, without a download
    assert certs.trusted("OLD") is None and certs.serials() == ["NEW"]


def test_unknown_serial_downloads_at_most_once_per_gap(downloads: Downloads, clock: Clock) -> None:
    downloads.answer = [cert("A", clock.now - 1, clock.now + 9999)]
    certs = store(downloads, clock)
    certs.refresh_due()

    for _ in range(3):
        clock.now += 10
        assert certs.key_for("FORGED") is None
    assert downloads.count == 1  # the bootstrap was less than a gap ago: no download at all

    clock.now += 60
    assert certs.key_for("FORGED") is None
    assert certs.key_for("FORGED") is None
    assert downloads.count == 2

    downloads.answer = [*downloads.answer, cert("B", clock.now - 1, clock.now + 99999)]
    clock.now += 60
    assert certs.key_for("B") is KEY and downloads.count == 3


def test_failed_periodic_refresh_keeps_valid_certificates_and_waits_a_gap(
    downloads: Downloads, clock: Clock
) -> None:
    downloads.answer = [cert("A", clock.now - 1, clock.now + 99999)]
    certs = store(downloads, clock)
    certs.refresh_due()
    downloads.answer = ProviderUnavailable("wechatpay", "HTTP 503")

    clock.now += 3600
    certs.refresh_due()  # does not raise: A is still valid
    certs.refresh_due()
    assert downloads.count == 2 and certs.request_serial() == "A"
    clock.now += 60
    certs.refresh_due()
    assert downloads.count == 3


def test_nothing_trusted_and_download_failing_raises(downloads: Downloads, clock: Clock) -> None:
    downloads.answer = ProviderUnavailable("wechatpay", "HTTP 500", code="SYSTEM_ERROR")
    certs = store(downloads, clock)

    with pytest.raises(ProviderUnavailable, match="HTTP 500"):
        certs.refresh_due()
    with pytest.raises(ProviderUnavailable, match="no valid platform certificate"):
        certs.refresh_due()  # within the gap: not asked again, still nothing to verify with
    assert downloads.count == 1


# -- decrypting the downloaded list ----------------------------------------------------------------
def encrypted_entry(listed_serial: str, number: int, api_v3_key: bytes) -> dict[str, Any]:
    """An entry of ``GET /v3/certificates`` carrying a certificate with serial ``number``."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com sign")])
    now = datetime.now(UTC)
    pem = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(number)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(private, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    nonce = "0123456789ab"
    ciphertext = AESGCM(api_v3_key).encrypt(nonce.encode(), pem, b"certificate")
    return {
        "serial_no": listed_serial,
        "encrypt_certificate": {
            "algorithm": "AEAD_AES_256_GCM",
            "nonce": nonce,
            "associated_data": "certificate",
            "ciphertext": base64.b64encode(ciphertext).decode(),
        },
    }


def test_decrypts_a_listed_certificate_and_refuses_one_listed_under_another_serial() -> None:
    api_v3_key = b"k" * 32
    number = 0x5157F09EFDC096DE15EBE81A47057A7232F1B8E1

    (good,) = decrypt_certificates({"data": [encrypted_entry(f"{number:X}", number, api_v3_key)]},
                                   api_v3_key)  # fmt: skip
    assert good.serial == f"{number:X}" and good.not_after is not None

    swapped = encrypted_entry("6F4515299B63E8B3DDFEEF69DA0F5F988B89D9C1", number, api_v3_key)
    with pytest.raises(SignatureInvalid, match="another one"):
        decrypt_certificates({"data": [swapped]}, api_v3_key)
    listed_right = swapped | {"serial_no": f"{number:X}"}
    with pytest.raises(SignatureInvalid, match="does not decrypt"):
        decrypt_certificates({"data": [listed_right]}, b"x" * 32)  # not our APIv3 key
