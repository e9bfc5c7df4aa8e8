"""Adapter errors: the provider branch of the one error tree in :mod:`domain.errors`."""

from domain.errors import ProviderError, ProviderRejected, ProviderUnavailable, SignatureInvalid

__all__ = ["ProviderError", "ProviderRejected", "ProviderUnavailable", "SignatureInvalid"]
