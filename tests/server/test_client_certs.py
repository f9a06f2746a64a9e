"""
Client certificates on a server trigger's ``ssl:`` listener
(C{tls_client_ca}), C{[peer_cert]}, C{tls_refused} and the TLS 1.2 minimum,
with real TLS clients (Python's C{ssl}) over loopback and a PKI made at test
time.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from daemon.config import ConfigError, config_from_string
from daemon.core.actions import ActionChain
from daemon.core.events import SERVER_EVENT_VARIABLES
from daemon.core.listening import MINIMUM_TLS
from daemon.core.tlshalfclose import HalfCloseTLSReactor
from daemon.server.tls import ClientCertificates, handshake_refusal
from daemon.server.trigger import ListenerService, ServerTrigger
from daemon.status.stats import ServerStats, metric_kinds
from tests.fakes import FakeAction
from tests.server.certs import (
    Certificates,
    Exchange,
    tls_line_client,
    write_certificates,
)


class ClientCertificateTests(TestCase):
    """
    A listener with C{tls_client_ca} finishes the handshake only with
    clients whose certificate that CA signed and that is valid now.
    """

    timeout = 30

    def setUp(self) -> None:
        self.certs: Certificates = write_certificates(self.mktemp_dir())
        self.action = FakeAction("record")

    def mktemp_dir(self) -> str:
        import os

        path = self.mktemp()
        os.makedirs(path)
        return path

    def listen(
        self,
        extra: str = "",
        client_ca: bool = True,
    ) -> ServerTrigger:
        """
        A trigger on C{ssl:0} on loopback that answers C{hello [peer_cert]}
        and runs C{self.action}; C{self.port} is where it listens.
        """
        certs = self.certs
        description = (
            f"ssl:0:interface=127.0.0.1:privateKey={certs.server_key}"
            f":certKey={certs.server_cert}"
        )
        text = (
            f"[server:plc]\nlisten = {description}\n"
            "reply = hello [peer_cert] #[seq]\\r\\n\nidle_timeout = 0\n"
        )
        if client_ca:
            text += f"tls_client_ca = {certs.ca}\n"
        config = config_from_string(text + extra)
        trigger = ServerTrigger(
            config.servers[0], ActionChain([self.action]), {}, reactor, ServerStats()
        )
        service = ListenerService(reactor, description, trigger)
        service.startService()
        self.addCleanup(service.stopService)
        assert service.port is not None
        self.port: int = service.port.getHost().port  # type: ignore[attr-defined]
        return trigger

    async def exchange(self, **kwargs: object) -> Exchange:
        return await deferToThread(
            tls_line_client,
            self.port,
            b"M1\n",
            **kwargs,  # type: ignore[arg-type]
        )

    async def settle(self, trigger: ServerTrigger) -> None:
        """
        Let the server see the connection go (bounded).
        """
        for _ in range(200):
            if not trigger.connections:
                return
            await deferLater(reactor, 0.01)
        self.fail("the connection did not close")

    async def refused(self, **kwargs: object) -> tuple[ServerTrigger, list[str]]:
        """
        Connect with C{kwargs} twice; check both were refused without a
        reply or an event; the trigger and the log lines.
        """
        trigger = self.listen()
        with capturedLogs() as events:
            for _ in range(2):
                result = await self.exchange(**kwargs)
                self.assertEqual(result.data, b"")
                self.assertNotEqual(result.error, "")
                await self.settle(trigger)
        self.assertEqual(self.action.events, [])
        self.assertEqual(trigger.stats.tls_refused, 2)
        self.assertEqual(trigger.stats.frames, 0)
        lines = [formatEvent(e) for e in events]
        return trigger, [line for line in lines if " refused " in line]

    async def test_accepted_with_peer_cert(self) -> None:
        """
        A client with a certificate from C{tls_client_ca} is answered, and
        its subject is C{[peer_cert]} in the reply and in the event.
        """
        trigger = self.listen()
        with capturedLogs() as events:
            result = await self.exchange(certificate=self.certs.client)
        self.assertEqual(result, Exchange(b"hello CN=plc-7,O=Plant #1\r\n", ""))
        self.assertEqual(
            self.action.events[0].variables["peer_cert"], "CN=plc-7,O=Plant"
        )
        self.assertEqual(trigger.stats.tls_refused, 0)
        lines = [formatEvent(e) for e in events]
        self.assertIn("client certificate CN=plc-7,O=Plant", "\n".join(lines))

    async def test_no_certificate(self) -> None:
        """
        A client without a certificate is refused during the handshake,
        counted and logged once with the reason.
        """
        _, lines = await self.refused()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(": no client certificate (logged once per peer", lines[0])
        self.assertIn("see the 'tls_refused' counter", lines[0])

    async def test_other_ca(self) -> None:
        """
        A certificate from another CA is refused, and the log says why.
        """
        _, lines = await self.refused(certificate=self.certs.other)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(
            ": client certificate refused: unable to get local issuer "
            "certificate (not from tls_client_ca)",
            lines[0],
        )

    async def test_expired(self) -> None:
        """
        An expired certificate of the right CA is refused as expired.
        """
        _, lines = await self.refused(certificate=self.certs.expired)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(": client certificate refused: certificate has expired", lines[0])

    async def test_tls_1_1_refused(self) -> None:
        """
        A client capped at TLS 1.1 (offering it for real: its own minimum
        and security level lowered) is refused as too old.
        """
        trigger = self.listen()
        with capturedLogs() as events:
            result = await self.exchange(
                certificate=self.certs.client, maximum_version=ssl.TLSVersion.TLSv1_1
            )
            await self.settle(trigger)
        self.assertEqual(result.data, b"")
        self.assertIn("SSL", result.error)
        self.assertEqual(self.action.events, [])
        self.assertEqual(trigger.stats.tls_refused, 1)
        lines = [formatEvent(e) for e in events if " refused " in formatEvent(e)]
        self.assertIn(": TLS version older than 1.2", lines[0])

    async def test_tls_1_1_refused_without_client_ca(self) -> None:
        """
        The TLS 1.2 minimum holds on every ``ssl:`` listener, with or
        without client certificates; TLS 1.2 itself is accepted.
        """
        trigger = self.listen(client_ca=False)
        old = await self.exchange(maximum_version=ssl.TLSVersion.TLSv1_1)
        self.assertEqual(old.data, b"")
        await self.settle(trigger)
        self.assertEqual(trigger.stats.tls_refused, 1)
        current = await self.exchange(maximum_version=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(current, Exchange(b"hello  #1\r\n", ""))

    async def test_minimum_set_by_plantd(self) -> None:
        """
        The TLS 1.2 minimum is plantd's own, not only Twisted's default
        options' (which an ``ssl:`` description's C{CertificateOptions}
        happen to have today): on options that allow TLS 1.0 and security
        level 0, a TLS 1.1 client is answered (so this machine can speak
        TLS 1.1 at all), and after L{ListeningService.configure_tls} it is
        refused.
        """
        trigger = self.listen(client_ca=False)
        old = await self.listen_old(trigger, _allow_old_tls)
        if old.data != b"hello  #1\r\n":
            raise SkipTest(f"this OpenSSL cannot speak TLS 1.1 at all: {old.error}")

        def plantd(context: SSL.Context) -> None:
            _allow_old_tls(context)
            ListenerService(reactor, "tcp:0", trigger).configure_tls(context)

        old = await self.listen_old(trigger, plantd)
        self.assertEqual(old.data, b"")
        self.assertIn("SSL", old.error)
        await self.settle(trigger)
        self.assertEqual(trigger.stats.tls_refused, 1)

    async def listen_old(
        self, trigger: ServerTrigger, configure: Callable[[SSL.Context], None]
    ) -> Exchange:
        """
        Listen for C{trigger} with options that allow TLS 1.0, configured
        by C{configure}, and exchange a message as a TLS 1.1 client.
        """
        with open(self.certs.server_key, "rb") as f:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, f.read())
        with open(self.certs.server_cert, "rb") as f:
            cert = crypto.load_certificate(crypto.FILETYPE_PEM, f.read())
        options = CertificateOptions(
            privateKey=key,
            certificate=cert,
            insecurelyLowerMinimumTo=TLSVersion.TLSv1_0,
        )
        port = HalfCloseTLSReactor(reactor, configure).listenSSL(
            0, trigger, options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        return await deferToThread(
            tls_line_client,
            port.getHost().port,  # type: ignore[attr-defined]
            b"M1\n",
            maximum_version=ssl.TLSVersion.TLSv1_1,
        )

    async def test_without_client_ca_peer_cert_empty(self) -> None:
        """
        Without C{tls_client_ca} no certificate is asked for and
        C{[peer_cert]} is empty.
        """
        self.listen(client_ca=False)
        result = await self.exchange(certificate=self.certs.client)
        self.assertEqual(result, Exchange(b"hello  #1\r\n", ""))
        self.assertEqual(self.action.events[0].variables["peer_cert"], "")

    async def test_client_that_just_closes_is_not_refused(self) -> None:
        """
        A client that connects and closes before any TLS byte is not a
        TLS refusal.
        """
        import socket

        trigger = self.listen()
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        await deferLater(reactor, 0.05)
        await self.settle(trigger)
        self.assertEqual(trigger.stats.tls_refused, 0)


def _allow_old_tls(context: SSL.Context) -> None:
    context.set_min_proto_version(SSL.TLS1_VERSION)
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")


class ConfigTests(SynchronousTestCase):
    """
    C{tls_client_ca} in the INI.
    """

    def setUp(self) -> None:
        import os

        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.certs = write_certificates(self.directory)
        self.ssl = (
            f"ssl:8443:privateKey={self.certs.server_key}"
            f":certKey={self.certs.server_cert}"
        )

    def read(self, listen: str, value: str) -> object:
        import os

        from daemon.config import read_config

        path = os.path.join(self.directory, "plantd.ini")
        with open(path, "w") as f:
            f.write(f"[server:plc]\nlisten = {listen}\ntls_client_ca = {value}\n")
        return read_config(path)

    def test_relative_to_ini(self) -> None:
        """
        A relative path is read from the INI file's directory, whatever
        the working directory.
        """
        config = self.read(self.ssl, "plant-ca.pem")
        self.assertEqual(
            config.servers[0].tls_client_ca,  # type: ignore[attr-defined]
            self.certs.ca,
        )

    def test_only_on_ssl(self) -> None:
        """
        On a plain TCP listener the key is an error naming it.
        """
        with self.assertRaises(ConfigError) as caught:
            self.read("tcp:9000", "plant-ca.pem")
        self.assertIn("[server:plc] tls_client_ca", str(caught.exception))
        self.assertIn("only used with an ssl: listen endpoint", str(caught.exception))

    def test_missing_or_not_pem(self) -> None:
        """
        A missing file, or one without a PEM certificate, stops start-up
        with one line naming the key.
        """
        with self.assertRaises(ConfigError) as caught:
            self.read(self.ssl, "nowhere.pem")
        self.assertIn("tls_client_ca", str(caught.exception))
        self.assertIn("cannot read", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            self.read(self.ssl, "plc-7.key")
        self.assertIn("no PEM certificate", str(caught.exception))
        self.assertEqual(len(str(caught.exception).splitlines()), 1)

    def test_string_config_unchanged(self) -> None:
        """
        Without the key nothing is asked of the client.
        """
        config = config_from_string(f"[server:plc]\nlisten = {self.ssl}\n")
        self.assertIsNone(config.servers[0].tls_client_ca)


class DeclarationTests(SynchronousTestCase):
    """
    The counter, the variable and the TLS minimum are declared.
    """

    def test_counter_kind(self) -> None:
        """
        C{tls_refused} is a counter of every server trigger.
        """
        self.assertEqual(metric_kinds(ServerStats)["tls_refused"].name, "COUNTER")
        self.assertEqual(ServerStats().snapshot()["tls_refused"], 0)

    def test_peer_cert_in_catalogue(self) -> None:
        """
        Templates may use C{[peer_cert]} on any server trigger.
        """
        self.assertIn("peer_cert", SERVER_EVENT_VARIABLES)
        config_from_string("[server:plc]\nlisten = tcp:0\nreply = [peer_cert]\\n\n")

    def test_minimum(self) -> None:
        """
        The minimum is TLS 1.2.
        """
        self.assertEqual(MINIMUM_TLS, SSL.TLS1_2_VERSION)

    def test_not_tls_error(self) -> None:
        """
        A connection that ends without a TLS error is not a refusal.
        """
        from twisted.internet.error import ConnectionDone

        self.assertIsNone(handshake_refusal(Failure(ConnectionDone())))
        self.assertEqual(
            handshake_refusal(Failure(SSL.Error([("SSL routines", "", "bad thing")]))),
            "TLS handshake failed: bad thing",
        )

    def test_verify_error_unknown_handle(self) -> None:
        """
        Asking about something that is not an OpenSSL connection is no
        error.
        """
        import os

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        certs = write_certificates(directory)
        self.assertIsNone(ClientCertificates(certs.ca).verify_error(None))
        self.assertIsNone(ClientCertificates(certs.ca).verify_error(object()))
