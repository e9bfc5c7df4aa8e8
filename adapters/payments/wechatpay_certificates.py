"""WeChat Pay platform certificates: the merchant side of ``GET /v3/certificates``.

Merchants that predate "WeChat Pay public key" mode (about September 2024) verify WeChat's
responses and notifications with *platform certificates*. WeChat publishes them, each one
AES-256-GCM encrypted with the merchant's APIv3 key (``associated_data="certificate"``), at
``GET /v3/certificates``, and rotates them: a new certificate is published while the old one
is still valid, WeChat starts signing with the new one some time later, and the old one
expires. :class:`CertificateStore` keeps the certificates that are valid now and picks the
key named by a ``Wechatpay-Serial``.

Rules (each also commented where it is applied):

1. **Trust comes from the APIv3 key.** A downloaded certificate is used only if it decrypts
   (the GCM tag proves it was encrypted by someone holding our APIv3 key) and its X.509
   serial is the ``serial_no`` it is listed under. The answer itself must verify with the key
   its ``Wechatpay-Serial`` names, looked up among the certificates already trusted first and
   then among the ones it carries. The second case is the documented bootstrap (WeChat's
   CertificateDownloader README, "如何第一次下载证书": skip verification to download, then
   verify the answer with the certificate it brought): on the first download nothing is
   trusted yet, and after a rotation WeChat may sign the answer with the new certificate.
   Both are safe because the GCM tag has already authenticated the certificate. The issuer
   chain (Tenpay.com Root CA) is not checked.
2. **Only certificates valid now are kept** (X.509 ``notBefore <= now < notAfter``); a
   download replaces the whole set, so a certificate WeChat no longer lists is dropped.
3. **An unknown serial triggers one download, at most once per ``min_refresh_gap_s``**
   (:meth:`CertificateStore.key_for`): a forged serial cannot make us hammer WeChat, and a
   serial still unknown after the download is refused by the caller.
4. **Periodic refresh** every ``refresh_interval_s`` (:meth:`CertificateStore.refresh_due`):
   a failure keeps the certificates we have (they are still valid) and is retried after
   ``min_refresh_gap_s``; only when nothing is trusted does the failure reach the caller.
5. **The serial sent on requests** is the valid certificate that expires last, as WeChat's
   own SDKs choose "the newest available certificate" for encrypting sensitive fields.

Thread-safe: lookups read an immutable snapshot; downloads are serialised by a lock, so
threads that meet the same new serial wait for one download instead of each starting one.
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from adapters.errors import ProviderError, ProviderUnavailable, SignatureInvalid

__all__ = [
    "CertificateStore",
    "PlatformCertificate",
    "certificate_from_pem",
    "decrypt_certificates",
]

_PROVIDER = "wechatpay"
_AEAD = "AEAD_AES_256_GCM"
_CERTIFICATE_AAD = "certificate"


@dataclass(frozen=True, slots=True)
class PlatformCertificate:
    """One WeChat Pay key: its serial, RSA public key and validity (Unix seconds; ``None``
    for a configured bare public key, which carries no dates)."""

    serial: str
    key: rsa.RSAPublicKey
    not_before: float | None = None
    not_after: float | None = None

    def valid_at(self, now: float) -> bool:
        if self.not_before is not None and now < self.not_before:
            return False
        return self.not_after is None or now < self.not_after


def certificate_from_pem(serial: str, pem: bytes) -> PlatformCertificate:
    """A configured key: a PEM certificate (dates kept) or a bare PEM public key."""
    if b"BEGIN CERTIFICATE" in pem:
        return _from_x509(serial, x509.load_pem_x509_certificate(pem))
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("platform keys must be RSA")
    return PlatformCertificate(serial, key)


def decrypt_certificates(data: Mapping[str, Any], api_v3_key: bytes) -> list[PlatformCertificate]:
    """The certificates of a ``GET /v3/certificates`` answer, decrypted and checked (rule 1).

    Raises SignatureInvalid when an entry does not decrypt or its certificate's serial is not
    the one it is listed under (a tampered list), ProviderUnavailable when the answer has not
    the documented shape."""
    entries = data.get("data")
    if not isinstance(entries, list) or not entries:
        raise ProviderUnavailable(_PROVIDER, "malformed response: certificate list is empty")
    return [_decrypt_entry(entry, AESGCM(api_v3_key)) for entry in entries]


def _decrypt_entry(entry: object, aes: AESGCM) -> PlatformCertificate:
    if not isinstance(entry, dict):
        raise ProviderUnavailable(_PROVIDER, "malformed response: certificate entry")
    serial = entry.get("serial_no")
    enc = entry.get("encrypt_certificate")
    if not isinstance(serial, str) or not isinstance(enc, dict) or enc.get("algorithm") != _AEAD:
        raise ProviderUnavailable(_PROVIDER, "malformed response: certificate entry fields")
    nonce, aad, ciphertext = (enc.get(k) for k in ("nonce", "associated_data", "ciphertext"))
    if not (isinstance(nonce, str) and isinstance(ciphertext, str) and isinstance(aad, str)):
        raise ProviderUnavailable(_PROVIDER, "malformed response: encrypt_certificate fields")
    try:
        pem = aes.decrypt(nonce.encode(), base64.b64decode(ciphertext), aad.encode())
        cert = x509.load_pem_x509_certificate(pem)
    except (InvalidTag, binascii.Error, ValueError) as exc:
        raise SignatureInvalid(_PROVIDER, f"certificate {serial} does not decrypt") from exc
    listed = serial.upper().lstrip("0")
    if aad != _CERTIFICATE_AAD or f"{cert.serial_number:X}" != listed:
        raise SignatureInvalid(_PROVIDER, f"certificate listed as {serial} is another one")
    return _from_x509(serial, cert)


def _from_x509(serial: str, cert: x509.Certificate) -> PlatformCertificate:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("platform certificates must be RSA")
    return PlatformCertificate(
        serial,
        key,
        cert.not_valid_before_utc.timestamp(),
        cert.not_valid_after_utc.timestamp(),
    )


class CertificateStore:
    """The platform certificates valid now, refreshed by ``download`` (see the module rules).

    ``download`` fetches, verifies and decrypts ``GET /v3/certificates`` and returns every
    listed certificate (it may call :meth:`trusted` to verify the answer); ``clock`` returns
    Unix seconds."""

    def __init__(
        self,
        download: Callable[[], Sequence[PlatformCertificate]],
        *,
        clock: Callable[[], float],
        initial: Sequence[PlatformCertificate] = (),
        refresh_interval_s: float = 3600.0,
        min_refresh_gap_s: float = 60.0,
    ) -> None:
        self._download = download
        self._clock = clock
        self._refresh_interval_s = refresh_interval_s
        self._min_refresh_gap_s = min_refresh_gap_s
        self._certs: Mapping[str, PlatformCertificate] = {c.serial: c for c in initial}
        self._lock = threading.Lock()
        self._last_attempt: float | None = None
        self._last_success: float | None = None

    def trusted(self, serial: str) -> rsa.RSAPublicKey | None:
        """The key of a certificate we hold and that is valid now; never downloads."""
        cert = self._certs.get(serial)
        return cert.key if cert is not None and cert.valid_at(self._clock()) else None

    def key_for(self, serial: str) -> rsa.RSAPublicKey | None:
        """The key named by ``serial``; an unknown serial downloads the list once per
        ``min_refresh_gap_s`` (rule 3). ``None``: still unknown, the caller refuses it. A
        download that fails raises its error (a WeChat outage is not a forgery)."""
        key = self.trusted(serial)
        if key is not None:
            return key
        with self._lock:
            key = self.trusted(serial)  # another thread may have downloaded it meanwhile
            if key is None and self._may_attempt():
                self._refresh_locked()
                key = self.trusted(serial)
        return key

    def refresh_due(self) -> None:
        """Download when the last success is older than ``refresh_interval_s`` (rule 4).

        Raises only when no certificate is valid afterwards (the download's own error, else
        ProviderUnavailable): then no answer could be verified, so the request is not sent."""
        if self._stale():
            with self._lock:
                if self._stale() and self._may_attempt():
                    try:
                        self._refresh_locked()
                    except ProviderError:
                        if not self._valid():
                            raise
                        # Rule 4: what we hold is still valid; try again after the gap.
        if not self._valid():
            raise ProviderUnavailable(_PROVIDER, "no valid platform certificate (yet)")

    def refresh(self) -> None:
        """Download now (operators and tests); raises what the download raises."""
        with self._lock:
            self._refresh_locked()

    def request_serial(self) -> str | None:
        """The serial to send as ``Wechatpay-Serial`` (rule 5), ``None`` if none is valid."""
        valid = self._valid()
        if not valid:
            return None
        newest = max(valid, key=lambda c: float("-inf") if c.not_after is None else c.not_after)
        return newest.serial

    def serials(self) -> list[str]:
        """Serials of the certificates valid now."""
        return sorted(c.serial for c in self._valid())

    # -- internals -----------------------------------------------------------------------------
    def _valid(self) -> list[PlatformCertificate]:
        now = self._clock()
        return [c for c in self._certs.values() if c.valid_at(now)]

    def _stale(self) -> bool:
        last = self._last_success
        return last is None or self._clock() - last >= self._refresh_interval_s

    def _may_attempt(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self._min_refresh_gap_s

    def _refresh_locked(self) -> None:
        self._last_attempt = self._clock()
        downloaded = self._download()
        now = self._clock()
        # Rule 2: the downloaded list replaces what we had; keep what is valid now.
        self._certs = {c.serial: c for c in downloaded if c.valid_at(now)}
        self._last_success = now
