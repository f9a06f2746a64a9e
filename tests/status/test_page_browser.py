"""
The status page in a real browser: the real daemon (a subprocess) with a
printer down and a reader connected, the page loaded in headless Chromium
(Debian's C{chromium}), read as a person would read it.

Set C{PLANTD_SCREENSHOT=path.png} to also write a 1280x800 screenshot of the
page with the printer down (the README's picture is made this way).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, readBody

from daemon.sim.reader import ReaderSimulator
from tests.support import DaemonProcess, connect_client, start_daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

STATUS_PORT = re.compile(rb"\[plantd\] status listening on [^\s]+:(\d+)")

CONFIG = """\
[plantd]
state_dir = {state}
status = tcp:0:interface=127.0.0.1

[server:orders]
listen = tcp:0:interface=127.0.0.1
actions = label
reply = OK\\r\\n

[send:label]
destination = 127.0.0.1:{printer}
data = LABEL [data]\\r\\n
queue = durable
connect_timeout = 2
disconnect_delay = 0.1
retry_initial = 0.2
retry_max = 0.5

[reader:door]
connect = tcp:host=127.0.0.1:port={reader}:timeout=5
reply = accept
retry_initial = 0.2
retry_max = 1
"""


def free_port() -> int:
    """
    A loopback port nothing listens on (bound and closed at once).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def visible_text(markup: str) -> str:
    """
    The text a person sees: tags dropped, entities decoded, blanks folded.
    """
    markup = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", markup)
    markup = re.sub(r"(?s)<[^>]+>", " ", markup)
    return " ".join(html.unescape(markup).split())


def rows(dom: str) -> list[str]:
    """
    The visible text of each device row of the page.
    """
    return [
        visible_text(row)
        for row in re.findall(r'(?s)<tr class="device">(.*?)</tr>', dom)
    ]


class _Printer(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.jobs.append(data)


class StatusPageBrowserTests(TestCase):
    """
    What someone on shift sees in a browser.
    """

    timeout = 90

    def setUp(self) -> None:
        if CHROMIUM is None:
            raise SkipTest(
                "headless browser test: install Debian's chromium package "
                "(apt-get install chromium)"
            )

    async def chromium(self, url: str, *extra: str) -> str:
        """
        Load C{url} in headless Chromium (a fresh profile); its stdout.
        """
        assert CHROMIUM is not None
        profile = tempfile.mkdtemp(prefix="plantd-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        argv = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            *extra,
            url,
        ]
        d = getProcessOutputAndValue(CHROMIUM, argv, env=dict(os.environ))
        d.addTimeout(60, _reactor)
        out, err, code = await d
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out.decode("utf-8", errors="replace")

    async def status(self, base: str) -> dict[str, Any]:
        agent = Agent(_reactor)
        response = await agent.request(b"GET", f"{base}/status.json".encode())
        document: dict[str, Any] = json.loads(await readBody(response))
        return document

    async def wait_for(
        self, base: str, what: str, check: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """
        Read C{/status.json} until C{check(document)} holds (20 s at most).
        """
        for _ in range(100):
            document = await self.status(base)
            if check(document):
                return document
            await deferLater(_reactor, 0.2, lambda: None)
        self.fail(f"never: {what}; last status: {json.dumps(document)[:2000]}")

    async def start(self) -> tuple[DaemonProcess, str, int, int]:
        simulator = ReaderSimulator(
            _reactor, script=["04DEADBEEF"], interval=0.3, loop=False
        )
        port: IListeningPort = await serverFromString(
            _reactor, "tcp:0:interface=127.0.0.1"
        ).listen(simulator)
        self.addCleanup(port.stopListening)
        printer = free_port()
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        path = os.path.join(tmp, "plantd.ini")
        with open(path, "w") as f:
            f.write(
                CONFIG.format(
                    state=os.path.join(tmp, "state"),
                    printer=printer,
                    reader=port.getHost().port,  # type: ignore[attr-defined]
                )
            )
        daemon = start_daemon(path, expected=1)
        self.addCleanup(daemon.stop)
        ports = await daemon.listening
        await daemon.logged(b"[plantd] status listening on")
        match = STATUS_PORT.search(daemon.output)
        assert match is not None
        return (
            daemon,
            f"http://127.0.0.1:{int(match.group(1))}",
            printer,
            ports["server:orders"],
        )

    async def test_printer_down_then_back(self) -> None:
        """
        With the printer's port closed, the page shows the printer first,
        failing, with its error and the label waiting, and the reader
        connected with its badge; after the printer comes back the page
        shows it OK with nothing waiting.  The page's own polling ran (it
        swapped in a fresh copy).
        """
        daemon, base, printer, orders = await self.start()
        client = await connect_client(orders)
        client.transport.write(b"SKU-1;3\n")  # type: ignore[union-attr]
        await client.lines(1)
        client.transport.loseConnection()  # type: ignore[union-attr]

        def failing(doc: dict[str, Any]) -> bool:
            dests = doc["devices"].get("destination", [])
            readers = doc["devices"].get("reader", [])
            return bool(
                dests
                and dests[0]["state"] == "failing"
                and readers
                and readers[0]["state"] == "connected"
                and readers[0]["last_badge"]
            )

        await self.wait_for(base, "printer failing, reader connected", failing)
        dom = await self.chromium(
            base + "/", "--virtual-time-budget=7000", "--dump-dom"
        )
        seen = rows(dom)
        self.assertEqual(len(seen), 3, seen)
        first = seen[0]
        self.assertIn(f"127.0.0.1:{printer}", first)
        self.assertIn("FAILING", first)
        self.assertIn("refused", first.lower())
        self.assertIn("1 job waiting", first)
        reader = next(r for r in seen if "Reader door" in r)
        self.assertIn("connected since", reader)
        self.assertIn("last badge 04DEADBEEF", reader)
        self.assertIn("1 problem", visible_text(dom))
        self.assertIn('data-refreshes="', dom)
        if os.environ.get("PLANTD_SCREENSHOT"):
            await self.chromium(
                base + "/",
                "--hide-scrollbars",
                "--window-size=1280,800",
                f"--screenshot={os.path.abspath(os.environ['PLANTD_SCREENSHOT'])}",
            )

        # The printer comes back.
        factory = Factory.forProtocol(_Printer)
        factory.jobs = []  # type: ignore[attr-defined]
        listening = await serverFromString(
            _reactor, f"tcp:{printer}:interface=127.0.0.1"
        ).listen(factory)
        self.addCleanup(listening.stopListening)

        def ok(doc: dict[str, Any]) -> bool:
            dest = doc["devices"]["destination"][0]
            return bool(dest["state"] == "ok" and dest["jobs_waiting"] == 0)

        await self.wait_for(base, "printer ok", ok)
        dom = await self.chromium(base + "/", "--dump-dom")
        seen = rows(dom)
        printer_row = next(r for r in seen if f"127.0.0.1:{printer}" in r)
        self.assertIn(" OK ", f" {printer_row} ")
        self.assertNotIn("FAILING", printer_row)
        self.assertIn("no jobs waiting", printer_row)
        self.assertIn("All 3 devices OK", visible_text(dom))
        self.assertIn("works again", visible_text(dom))
        self.assertEqual(factory.jobs and b"".join(factory.jobs), b"LABEL SKU-1;3\r\n")  # type: ignore[attr-defined]
