"""
The status page in a real browser: the real daemon (a subprocess) with a
printer down and a reader connected, the page loaded in headless Chromium
(Debian's C{chromium}), read as a person would read it; then the printer
comes back and the same page, by its own polling (C{/?refresh=1}), shows it.
Chromium is driven over the DevTools protocol on a pipe
(C{--remote-debugging-pipe}: JSON messages ending in NUL on its fds 3 and
4), so no websocket client is needed.

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
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
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


class DevTools(ProcessProtocol):
    """
    Headless Chromium driven over the DevTools protocol on a pipe: the
    commands go to its fd 3, the answers come from its fd 4, each a JSON
    object followed by a NUL byte.
    """

    #: Seconds a command may take.
    COMMAND_TIMEOUT = 30

    def __init__(self) -> None:
        self.buffer = b""
        self.next_id = 0
        self.waiting: dict[int, Deferred[dict[str, Any]]] = {}
        self.stderr = b""
        self.ended: Deferred[None] = Deferred()
        self.session: str | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 2:
            self.stderr = (self.stderr + data)[-4000:]
            return
        if childFD != 4:
            return
        self.buffer += data
        while b"\0" in self.buffer:
            message, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(message)
            waiting = self.waiting.pop(answer.get("id"), None)
            if waiting is not None:
                waiting.callback(answer)

    def processEnded(self, reason: Failure) -> None:
        for waiting in self.waiting.values():
            waiting.errback(reason)
        self.waiting.clear()
        self.ended.callback(None)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """
        Run one command (in the attached page, once there is one); its
        result.
        """
        assert self.transport is not None
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method}
        message["params"] = params
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        answer: Deferred[dict[str, Any]] = Deferred()
        answer.addTimeout(self.COMMAND_TIMEOUT, _reactor)
        self.waiting[self.next_id] = answer
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        document = await answer
        if "error" in document:
            raise AssertionError(f"{method}: {document['error']}")
        result: dict[str, Any] = document["result"]
        return result

    async def attach(self) -> None:
        """
        Attach to the page the browser opened.
        """
        for _ in range(100):
            targets = await self.send("Target.getTargets")
            pages = [t for t in targets["targetInfos"] if t["type"] == "page"]
            if pages:
                attached = await self.send(
                    "Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True
                )
                self.session = attached["sessionId"]
                return
            await deferLater(_reactor, 0.1, lambda: None)
        raise AssertionError("Chromium opened no page")

    async def evaluate(self, expression: str) -> Any:
        """
        The value of the JavaScript C{expression} in the page.
        """
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def close(self) -> None:
        """
        Close the browser (killed if it does not end in 10 s).
        """
        if self.ended.called:
            return
        try:
            await self.send("Browser.close")
        except Exception:
            pass
        stop = _reactor.callLater(10, self._kill)
        await self.ended
        if stop.active():
            stop.cancel()

    def _kill(self) -> None:
        if self.transport is not None and not self.ended.called:
            self.transport.signalProcess("KILL")


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

    async def open_page(self, url: str) -> DevTools:
        """
        C{url} in headless Chromium (a fresh profile), driven over the
        DevTools protocol; closed at the end of the test.
        """
        assert CHROMIUM is not None
        profile = tempfile.mkdtemp(prefix="plantd-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        browser = DevTools()
        argv = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Polling must not be slowed down in a page nobody looks at.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            url,
        ]
        _reactor.spawnProcess(
            browser,
            CHROMIUM,
            argv,
            env=dict(os.environ),
            childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"},
        )
        self.addCleanup(browser.close)
        await browser.attach()
        return browser

    async def page_until(
        self, browser: DevTools, what: str, check: Callable[[str], bool]
    ) -> str:
        """
        Read the page's DOM as it is now until C{check(dom)} holds (45 s at
        most); the browser is never told to reload.
        """
        dom = ""
        for _ in range(225):
            dom = await browser.evaluate("document.documentElement.outerHTML")
            if check(dom):
                return dom
            await deferLater(_reactor, 0.2, lambda: None)
        self.fail(
            f"the page never showed: {what}; it shows: {visible_text(dom)[:2000]}"
            f"\nchromium said: {browser.stderr.decode(errors='replace')[-1000:]}"
        )

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
        browser = await self.open_page(base + "/?refresh=1")
        dom = await self.page_until(
            browser, "the printer failing", lambda dom: "FAILING" in dom
        )
        # Set in this document: still there at the end means the page was
        # never loaded again, only its live part swapped in by its polling.
        await browser.evaluate("window.loadedOnce = 'yes'")
        self.assertEqual(
            await browser.evaluate("document.getElementById('live').dataset.every"),
            "1000",
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

        refreshes = await browser.evaluate(
            "+(document.getElementById('live').dataset.refreshes || 0)"
        )
        back = "works again"
        dom = await self.page_until(
            browser,
            "the printer OK",
            lambda dom: "All 3 devices OK" in visible_text(dom) and back in dom,
        )
        self.assertGreater(
            await browser.evaluate(
                "+document.getElementById('live').dataset.refreshes"
            ),
            refreshes,
        )
        self.assertEqual(await browser.evaluate("window.loadedOnce"), "yes")
        self.assertEqual(
            await browser.evaluate("performance.getEntriesByType('navigation').length"),
            1,
        )
        await self.wait_for(base, "printer ok", ok)
        seen = rows(dom)
        printer_row = next(r for r in seen if f"127.0.0.1:{printer}" in r)
        self.assertIn(" OK ", f" {printer_row} ")
        self.assertNotIn("FAILING", printer_row)
        self.assertIn("no jobs waiting", printer_row)
        self.assertIn("All 3 devices OK", visible_text(dom))
        self.assertIn("works again", visible_text(dom))
        self.assertEqual(factory.jobs and b"".join(factory.jobs), b"LABEL SKU-1;3\r\n")  # type: ignore[attr-defined]
