"""
Certificates made at test time for client-certificate tests (a CA, a server
certificate, client certificates valid, expired or from another CA), and a
real blocking TLS client (Python's C{ssl}, i.e. OpenSSL) to run in a thread.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Authority:
    """
    A throwaway CA: its name, key and certificate.
    """

    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_authority(common_name: str) -> Authority:
    """
    A self-signed CA valid from an hour ago for a day.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(hours=1))
        .not_valid_after(_now() + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return Authority(name, key, certificate)


def write_leaf(
    authority: Authority,
    directory: str,
    stem: str,
    subject: x509.Name,
    server: bool = False,
    expired: bool = False,
) -> tuple[str, str]:
    """
    A certificate for C{subject} signed by C{authority} (for a server on
    127.0.0.1, or a client), written as C{stem.pem} and C{stem.key} in
    C{directory}; their paths.

    @param expired: valid for an hour that ended a day ago.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        before = _now() - datetime.timedelta(days=2)
        after = _now() - datetime.timedelta(days=1)
    else:
        before = _now() - datetime.timedelta(hours=1)
        after = _now() + datetime.timedelta(days=1)
    usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(before)
        .not_valid_after(after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                authority.key.public_key()
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    certificate = builder.sign(authority.key, hashes.SHA256())
    cert_path = os.path.join(directory, f"{stem}.pem")
    key_path = os.path.join(directory, f"{stem}.key")
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def common_name(name: str) -> x509.Name:
    """
    A subject of just C{CN=name}.
    """
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


@dataclass(frozen=True)
class Certificates:
    """
    The files of one test's PKI, by role.

    @ivar ca: the PEM of the CA a listener trusts (C{tls_client_ca}).
    @ivar server_cert: the listener's certificate, signed by that CA.
    @ivar client: a valid client certificate (C{CN=plc-7,O=Plant}).
    @ivar expired: a client certificate of the same CA that has expired.
    @ivar other: a client certificate from another CA (C{CN=plc-7}).
    """

    ca: str
    server_cert: str
    server_key: str
    client: tuple[str, str]
    expired: tuple[str, str]
    other: tuple[str, str]


def write_certificates(directory: str) -> Certificates:
    """
    Make a CA, a server certificate for 127.0.0.1 and client certificates
    (valid, expired, from another CA) as PEM files in C{directory}.
    """
    authority = make_authority("plantd test plant CA")
    stranger = make_authority("someone else's CA")
    ca = os.path.join(directory, "plant-ca.pem")
    with open(ca, "wb") as f:
        f.write(authority.certificate.public_bytes(serialization.Encoding.PEM))
    server_cert, server_key = write_leaf(
        authority, directory, "server", common_name("localhost"), server=True
    )
    plant = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Plant"),
            x509.NameAttribute(NameOID.COMMON_NAME, "plc-7"),
        ]
    )
    return Certificates(
        ca=ca,
        server_cert=server_cert,
        server_key=server_key,
        client=write_leaf(authority, directory, "plc-7", plant),
        expired=write_leaf(
            authority, directory, "old", common_name("plc-old"), expired=True
        ),
        other=write_leaf(stranger, directory, "stranger", common_name("plc-7")),
    )


@dataclass(frozen=True)
class Exchange:
    """
    What L{tls_line_client} got: the bytes read before the end, and how it
    ended (C{""} for a clean close, else the error).
    """

    data: bytes
    error: str


def tls_line_client(
    port: int,
    payload: bytes,
    certificate: tuple[str, str] | None = None,
    maximum_version: ssl.TLSVersion | None = None,
    expect: bytes = b"\n",
    timeout: float = 10.0,
) -> Exchange:
    """
    A real TLS client: connect to 127.0.0.1:C{port} (without checking the
    server's certificate), with C{certificate} (cert and key files) if
    given, send C{payload} and read until C{expect}, the end, or an error.
    Blocking: run it in a thread (C{deferToThread}).

    @param maximum_version: cap the client's TLS version; below 1.2 the
        client also lowers its own minimum and security level, so that it
        really offers the old version.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if certificate is not None:
        context.load_cert_chain(*certificate)
    if maximum_version is not None:
        if maximum_version < ssl.TLSVersion.TLSv1_2:
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.maximum_version = maximum_version
    data = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(payload)
                while expect not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
    except (OSError, ssl.SSLError) as e:
        return Exchange(data, f"{type(e).__name__}: {e}")
    return Exchange(data, "")
