"""
End to end through a real broker: daemon A (server trigger, durable publish
action) and daemon B (subscribe trigger, durable send action to a printer
simulator) as real twistd processes, one real mosquitto; the broker is
killed with C{kill -9} and restarted mid-stream, B is restarted mid-stream,
and every message A acknowledged is printed once, in order.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from daemon.sim.printer import PrinterSimulator
from tests.mqtt.broker import Mosquitto, start_broker
from tests.support import Collector, DaemonProcess, connect_client, start_daemon

#: Messages sent into A (the issue's figure).
MESSAGES = 2000
#: Lines written before waiting for their ACKs.
BATCH = 100
#: After this many ACKed, the broker is killed (and restarted).
KILL_BROKER_AT = 600
#: After this many ACKed, B is restarted.
RESTART_B_AT = 1300
#: The whole test's bound.
TIMEOUT = 120.0

A_INI = """\
[plantd]
state_dir = {state}

[broker:site]
url = mqtt://127.0.0.1:{broker}
client_id = plantd-e2e-a
retry_initial = 0.1
retry_max = 0.5

[server:in]
listen = tcp:0:interface=127.0.0.1
actions = out
reply = ACK [data]\\r\\n

[publish:out]
broker = site
topic = acme/e2e/line1/scanner/scan
payload = [data]
queue = durable
retry_initial = 0.1
retry_max = 0.5
"""

B_INI = """\
[plantd]
state_dir = {state}

[broker:site]
url = mqtt://127.0.0.1:{broker}
client_id = plantd-e2e-b
retry_initial = 0.1
retry_max = 0.5

[subscribe:scans]
broker = site
topic = acme/e2e/+/scanner/scan
actions = label

[send:label]
destination = 127.0.0.1:{printer}
data = [data]\\n
queue = durable
retry_initial = 0.1
retry_max = 0.5
"""


def acked_up_to(last: int) -> Callable[[bytes], bool]:
    """
    Whether the ACKs of lines 1 to C{last} have all arrived.
    """
    return lambda data: data.count(b"\n") >= last


def keep_output(daemon: DaemonProcess, path: str) -> None:
    """
    Write what C{daemon} logged next to its configuration, to read after a
    failure.
    """
    with open(path, "wb") as f:
        f.write(daemon.output)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class MQTTEndToEndTests(TestCase):
    timeout = TIMEOUT

    def setUp(self) -> None:
        self._outputs: list[DaemonProcess] = []

    def progress(self, text: str) -> None:
        with open(os.path.join(self.work, "progress.txt"), "a") as f:
            f.write(f"{time.monotonic():.2f} {text}\n")

    async def start_b(self, path: str) -> DaemonProcess:
        b = start_daemon(path, expected=0)
        self.addCleanup(b.stop, signal.SIGKILL)
        self.addCleanup(keep_output, b, path + f".{len(self._outputs)}.log")
        self._outputs.append(b)
        await b.logged(b"[subscribe:scans] subscribed")
        await b.logged(b"[broker:site] connected to")
        return b

    async def test_nothing_lost_through_broker_and_restarts(self) -> None:
        """
        2,000 numbered lines into A; mid-stream the broker is killed with
        SIGKILL and restarted on the same port and persistence directory,
        and B is restarted.  Every line A acknowledged is printed at B's
        printer, in order, none lost and none twice.
        """
        began = time.monotonic()
        work = self.work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        broker: Mosquitto = await start_broker(
            os.path.join(work, "broker"), self.addCleanup
        )
        printer = PrinterSimulator(reactor)
        port = await printer.listen(reactor, "tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        printer_port = port.getHost().port  # type: ignore[attr-defined]

        paths = {}
        for name, template in (("a", A_INI), ("b", B_INI)):
            state = os.path.join(work, f"state-{name}")
            os.makedirs(state)
            paths[name] = os.path.join(work, f"{name}.ini")
            with open(paths[name], "w") as f:
                f.write(
                    template.format(
                        state=state, broker=broker.port, printer=printer_port
                    )
                )

        # B first: its session (clean_start = no) must exist at the broker
        # before A publishes, or the broker has nobody to keep messages for.
        b = await self.start_b(paths["b"])
        a = start_daemon(paths["a"], expected=1)
        self.addCleanup(a.stop, signal.SIGKILL)
        self.addCleanup(keep_output, a, paths["a"] + ".log")
        ports = await a.listening
        client: Collector = await connect_client(ports["server:in"])
        assert client.transport is not None
        self.addCleanup(client.transport.loseConnection)

        acked = 0
        broker_killed = b_restarted = False
        while acked < MESSAGES:
            batch = range(acked + 1, min(acked + BATCH, MESSAGES) + 1)
            client.transport.write(b"".join(b"%d\n" % n for n in batch))
            last = batch[-1]
            await client.until(acked_up_to(last))
            acked = last
            self.progress(f"acked {acked}, printed {len(printer.jobs)}")
            if acked >= KILL_BROKER_AT and not broker_killed:
                broker_killed = True
                broker.kill()
                await sleep(0.5)
                await broker.start()
            if acked >= RESTART_B_AT and not b_restarted:
                b_restarted = True
                # twistd ends a clean SIGTERM stop by re-raising the signal
                self.assertIn(await b.stop(), (0, -signal.SIGTERM))
                b = await self.start_b(paths["b"])

        expected = [b"ACK %d\r\n" % n for n in range(1, MESSAGES + 1)]
        self.assertEqual(client.data.splitlines(keepends=True), expected)

        # Every acknowledged line reaches the printer: wait for the last.
        deadline = time.monotonic() + TIMEOUT - 20
        while True:
            printed = [int(job.data) for job in printer.jobs]
            if set(printed) >= set(range(1, MESSAGES + 1)):
                break
            if time.monotonic() > deadline:
                missing = sorted(set(range(1, MESSAGES + 1)) - set(printed))
                self.fail(
                    f"{len(missing)} acknowledged lines never printed, "
                    f"first {missing[:10]}"
                )
            self.progress(f"printed {len(printer.jobs)}")
            await sleep(1.0)
        await sleep(1.0)  # let a late duplicate show up, if any
        printed = [int(job.data) for job in printer.jobs]
        duplicates = len(printed) - len(set(printed))
        first_seen = list(dict.fromkeys(printed))
        self.assertEqual(first_seen, list(range(1, MESSAGES + 1)), "out of order")
        twice = sorted({n for n in printed if printed.count(n) > 1})
        self.assertEqual(duplicates, 0, f"printed twice: {twice[:20]}")
        print(
            f"\nmqtt e2e: {MESSAGES} acknowledged, {len(printed)} printed, "
            f"{duplicates} duplicates, {time.monotonic() - began:.1f}s"
        )
