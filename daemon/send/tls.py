"""
TLS for send actions (``tls = yes``): the certificates loaded once at
start-up, and a one-line reason for a TLS failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL, crypto
from service_identity.exceptions import VerificationError
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python.failure import Failure

from daemon.config import ConfigError, SendConfig

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)
#: Client TLS options kept per host name (each holds an OpenSSL context).
MAX_TLS_OPTIONS = 256


@dataclass(frozen=True)
class TLSSettings:
    """
    What a ``tls = yes`` action verifies the device with, loaded once.

    @ivar trust_root: the CAs from C{tls_ca}, or the platform's.
    @ivar client_certificate: C{tls_cert} + C{tls_key}, if given.
    @ivar hostname: C{tls_hostname}: the name the certificate must carry,
        instead of the destination's host.
    """

    trust_root: Any
    client_certificate: PrivateCertificate | None = None
    hostname: str | None = None


def load_tls(config: SendConfig, path: str = "<config>") -> TLSSettings:
    """
    Load the certificates of a ``tls = yes`` action.

    @raise ConfigError: naming the key whose file is not usable.
    """
    section = f"send:{config.name}"
    tls = config.tls
    trust_root: Any
    if tls.ca is not None:
        try:
            with open(tls.ca, "rb") as f:
                blocks = _PEM_CERTIFICATE.findall(f.read())
            if not blocks:
                raise ValueError("no PEM certificate in it")
            trust_root = trustRootFromCertificates(
                [Certificate.loadPEM(block) for block in blocks]
            )
        except (OSError, ValueError, SSL.Error, crypto.Error) as e:
            raise ConfigError(
                path, section, "tls_ca", f"cannot load {tls.ca!r}: {e}"
            ) from None
    else:
        trust_root = platformTrust()
    client = None
    if tls.cert is not None and tls.key is not None:
        try:
            with open(tls.cert, "rb") as f:
                cert = f.read()
            with open(tls.key, "rb") as f:
                key = f.read()
            client = PrivateCertificate.loadPEM(cert + b"\n" + key)
        except (OSError, ValueError, SSL.Error, crypto.Error) as e:
            raise ConfigError(
                path,
                section,
                "tls_cert",
                f"cannot load {tls.cert!r} with {tls.key!r}: {e}",
            ) from None
    return TLSSettings(trust_root, client, tls.hostname)


def describe_tls_failure(failure: Failure) -> str | None:
    """
    A one-line reason for a TLS failure, or None when C{failure} is not one.
    """
    error = failure.value
    if isinstance(error, VerificationError):
        names = []
        for mismatch in error.errors:
            identity = getattr(mismatch, "mismatched_id", None)
            name = getattr(identity, "hostname", None) or getattr(identity, "ip", None)
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            if name is not None:
                names.append(repr(str(name)))
        what = ", ".join(names) or "the requested name"
        return f"TLS: certificate does not match hostname {what}"
    if isinstance(error, SSL.Error):
        reasons: list[str] = []
        details = error.args[0] if error.args else None
        if isinstance(details, list):
            for item in details:
                if isinstance(item, tuple) and item and item[-1]:
                    reasons.append(str(item[-1]))
        return "TLS: " + ("; ".join(reasons) or str(error) or "handshake failed")
    return None
