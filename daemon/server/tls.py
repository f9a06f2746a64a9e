"""
TLS on a server trigger's ``ssl:`` listener: the TLS 1.2 minimum, client
certificates (C{tls_client_ca}), the one-line reason a handshake was
refused, and the accepted certificate's subject (C{[peer_cert]}).

The ``ssl:`` endpoint string builds the server's certificate options; the
listener then configures their OpenSSL context once, before the first
connection (L{daemon.core.listening.ListeningService.configure_tls}: the
TLS 1.2 minimum on every ``ssl:`` listener, and
L{ClientCertificates.configure} where C{tls_client_ca} is set).  A refused
client never reaches a trigger's actions: OpenSSL fails the handshake, and
the connection reports it with L{handshake_refusal}.
"""

from __future__ import annotations

import weakref
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.python.failure import Failure

#: X.509 verification errors a client certificate is commonly refused for,
#: by OpenSSL's C{X509_V_ERR_*} number, in OpenSSL's own words.
VERIFY_ERRORS: dict[int, str] = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate (not from tls_client_ca)",
    19: "self-signed certificate in certificate chain (not from tls_client_ca)",
    20: "unable to get local issuer certificate (not from tls_client_ca)",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose (not for client authentication)",
}

#: OpenSSL handshake errors, by their reason text, in words an operator
#: can act on.
HANDSHAKE_ERRORS: dict[str, str] = {
    "peer did not return a certificate": "no client certificate",
    "certificate required": "no client certificate",
    "unsupported protocol": "TLS version older than 1.2",
    "no protocols available": "TLS version older than 1.2",
    "wrong version number": "not TLS, or a TLS version older than 1.2",
    "http request": "an HTTP request, not TLS",
    "no shared cipher": "no cipher in common",
}


def load_client_ca(path: str) -> list[x509.Certificate]:
    """
    The CA certificates in the PEM file C{path}.

    @raise ValueError: when it holds none, or cannot be read.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path!r}: {e.strerror}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(f"no PEM certificate in {path!r}")
    return certificates


class ClientCertificates:
    """
    Client certificates required by an ``ssl:`` listener: only clients
    whose certificate a CA of C{tls_client_ca} signed, and that is valid
    now, finish the handshake.

    The first verification error of each connection is kept (weakly, by
    its OpenSSL connection) so that the refusal names it: OpenSSL's own
    handshake error only says "certificate verify failed".

    @ivar path: the PEM file of trusted CAs.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.authorities = load_client_ca(path)
        self._errors: weakref.WeakKeyDictionary[SSL.Connection, str] = (
            weakref.WeakKeyDictionary()
        )

    def configure(self, context: SSL.Context) -> None:
        """
        Require and verify client certificates on C{context}, and name the
        trusted CAs in the certificate request.
        """
        store = context.get_cert_store()
        assert store is not None
        for authority in self.authorities:
            store.add_cert(crypto.X509.from_cryptography(authority))
        context.set_client_ca_list(
            [crypto.X509.from_cryptography(a).get_subject() for a in self.authorities]
        )
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify
        )

    def _verify(
        self,
        connection: SSL.Connection,
        certificate: crypto.X509,
        error: int,
        depth: int,
        ok: int,
    ) -> bool:
        if not ok and connection not in self._errors:
            self._errors[connection] = VERIFY_ERRORS.get(
                error, f"X.509 verification error {error}"
            )
        return bool(ok)

    def verify_error(self, connection: Any) -> str | None:
        """
        Why the client certificate of C{connection} (an OpenSSL connection,
        the TLS transport's C{getHandle()}) failed verification, if it did.
        """
        try:
            return self._errors.get(connection)
        except TypeError:  # not weakly referenceable: not an OpenSSL connection
            return None


def handshake_refusal(reason: Failure, verify_error: str | None = None) -> str | None:
    """
    The one-line reason a TLS handshake failed, or C{None} when C{reason}
    is not a TLS error (the client just went away).

    @param verify_error: what L{ClientCertificates.verify_error} found.
    """
    if not reason.check(SSL.Error) or reason.value is None:
        return None
    texts = _error_texts(reason.value)
    if verify_error is not None:
        return f"client certificate refused: {verify_error}"
    for text in texts:
        known = HANDSHAKE_ERRORS.get(text)
        if known is not None:
            return known
    if "certificate verify failed" in texts:
        return "client certificate refused"
    detail = "; ".join(texts) if texts else str(reason.value) or "unknown error"
    return f"TLS handshake failed: {detail}"


def _error_texts(error: BaseException) -> list[str]:
    """
    The reason strings of a pyOpenSSL error (its args are a list of
    C{(library, function, reason)} tuples).
    """
    texts = []
    for arg in error.args:
        if isinstance(arg, list):
            for item in arg:
                if isinstance(item, tuple) and item:
                    texts.append(str(item[-1]))
    return texts


def peer_subject(transport: Any) -> str:
    """
    The subject of the client certificate C{transport} (a TLS transport
    after its handshake) accepted, as RFC 4514 text (C{CN=plc-7,O=Plant}):
    C{""} without one.
    """
    get = getattr(transport, "getPeerCertificate", None)
    certificate = get() if get is not None else None
    if certificate is None:
        return ""
    subject: str = certificate.to_cryptography().subject.rfc4514_string()
    return subject
