"""
The security settings through the real daemon (``twistd -n plantd`` as a
subprocess): a scanned value sent on to a printer with C{escape = zpl} or
C{strip-control}, and client certificates on an ``ssl:`` listener with
C{[peer_cert]} in the reply and C{tls_refused} on the status page.
"""

from __future__ import annotations

import json
import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody

from tests.server.certs import Exchange, tls_line_client, write_certificates
from tests.support import (
    open_client,
    start_daemon,
)

STATUS = re.compile(rb"\[plantd\] status listening on [^\s]+:(\d+)")


class _Job(Protocol):
    """
    One connection to the fake printer: everything it sent, until it closed.
    """

    def connectionMade(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.jobs.append(self.data)
        waiters, self.factory.waiters = self.factory.waiters, []
        for d in waiters:
            d.callback(None)


class Printer(Factory):
    """
    A raw port-9100 printer that keeps each connection's bytes as a job.
    """

    protocol = _Job

    def __init__(self) -> None:
        self.jobs: list[bytes] = []
        self.waiters: list[Deferred[None]] = []

    async def job_count(self, n: int) -> list[bytes]:
        while len(self.jobs) < n:
            d: Deferred[None] = Deferred()
            self.waiters.append(d)
            await d
        return self.jobs


class SecurityEndToEndTests(TestCase):
    """
    The daemon as a user runs it.
    """

    timeout = 60

    async def start(self, text: str, expected: int) -> dict[str, int]:
        path = os.path.join(self.directory, "plantd.ini")
        with open(path, "w") as f:
            f.write(text)
        self.daemon = start_daemon(path, expected=expected)
        self.addCleanup(self.daemon.stop)
        return await self.daemon.listening

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    async def test_escape_to_printer(self) -> None:
        """
        The issue's example byte for byte at the printer: a scanned
        C{A^XZ~JR_1} arrives as C{^XA^FH^FO50,50^FDA_5EXZ_7EJR_5F1^FS^XZ};
        with C{strip-control} the control bytes of a value are gone and the
        template's own are kept; with no escape the value goes as it is.
        """
        printer = Printer()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            printer
        )
        self.addCleanup(port.stopListening)
        printer_port = port.getHost().port
        ports = await self.start(
            f"""
[server:scan]
listen = tcp:0:interface=127.0.0.1
frame = stx-etx
actions = label, plain, stripped
reply = OK\\r\\n

[send:label]
destination = 127.0.0.1:{printer_port}
data = ^XA^FH^FO50,50^FD[data]^FS^XZ
escape = zpl

[send:plain]
destination = 127.0.0.1:{printer_port}
data = ^XA^FO50,50^FD[data]^FS^XZ

[send:stripped]
destination = 127.0.0.1:{printer_port}
data = [data]\\r\\n
escape = strip-control
""",
            expected=1,
        )
        scanner = await open_client(self, ports["server:scan"])
        scanner.transport.write(b"\x02A^XZ~JR_1\x03")  # type: ignore[union-attr]
        await scanner.lines(1)
        scanner.transport.write(b"\x02a\tb\x1bc\x7fd\x03")  # type: ignore[union-attr]
        await scanner.lines(2)
        jobs = await printer.job_count(6)
        self.assertEqual(
            sorted(jobs),
            sorted(
                [
                    b"^XA^FH^FO50,50^FDA_5EXZ_7EJR_5F1^FS^XZ",
                    b"^XA^FO50,50^FDA^XZ~JR_1^FS^XZ",
                    b"A^XZ~JR_1\r\n",
                    b"^XA^FH^FO50,50^FDa\tb\x1bc\x7fd^FS^XZ",
                    b"^XA^FO50,50^FDa\tb\x1bc\x7fd^FS^XZ",
                    b"abcd\r\n",
                ]
            ),
        )

    async def test_client_certificates(self) -> None:
        """
        On an ``ssl:`` listener with C{tls_client_ca} (relative to the INI
        file), a client with a certificate of that CA is answered with its
        subject as C{[peer_cert]}; one without is refused, and the status
        page counts it in C{tls_refused}.
        """
        certs = write_certificates(self.directory)
        ports = await self.start(
            f"""
[plantd]
status = tcp:0:interface=127.0.0.1

[server:plc]
listen = ssl:0:interface=127.0.0.1:privateKey={certs.server_key}:certKey={certs.server_cert}
tls_client_ca = plant-ca.pem
reply = hello [peer_cert]\\r\\n
""",
            expected=1,
        )
        await self.daemon.logged(b"[plantd] status listening on")
        match = STATUS.search(self.daemon.output)
        assert match is not None
        status = int(match.group(1))
        port = ports["server:plc"]
        accepted = await deferToThread(
            tls_line_client, port, b"M1\n", certificate=certs.client
        )
        self.assertEqual(accepted, Exchange(b"hello CN=plc-7,O=Plant\r\n", ""))
        refused = await deferToThread(tls_line_client, port, b"M1\n")
        self.assertEqual(refused.data, b"")
        self.assertNotEqual(refused.error, "")
        agent = Agent(reactor)
        for _ in range(100):
            response = await agent.request(
                b"GET", b"http://127.0.0.1:%d/status.json" % status
            )
            document = json.loads(await readBody(response))
            counters = _find(document, "tls_refused")
            if counters == 1:
                break
            await _sleep(0.05)
        self.assertEqual(counters, 1)


def _find(document: object, key: str) -> object:
    """
    The first value of C{key} anywhere in a JSON document.
    """
    if isinstance(document, dict):
        if key in document:
            return document[key]
        items = list(document.values())
    elif isinstance(document, list):
        items = document
    else:
        return None
    for item in items:
        found = _find(item, key)
        if found is not None:
            return found
    return None


async def _sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds)
