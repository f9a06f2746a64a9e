"""
Reload end to end: the real daemon (``twistd -n plantd``) as a subprocess,
C{SIGHUP} through the process transport, simulated printers and reader on
127.0.0.1 port 0.
"""

from __future__ import annotations

import os

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort
from twisted.trial.unittest import TestCase

from daemon.sim.printer import PrinterSimulator
from daemon.sim.reader import ReaderSimulator
from tests.support import DaemonProcess, connect_client, start_daemon

TIMEOUT = 20


class ReloadTests(TestCase):
    """
    C{SIGHUP} applies the file section by section; a bad file changes
    nothing.
    """

    timeout = TIMEOUT

    async def set_up(self) -> None:
        self.printers: list[tuple[PrinterSimulator, int]] = []
        for _ in range(2):
            sim = PrinterSimulator(reactor)
            port: IListeningPort = await sim.listen(
                reactor, "tcp:0:interface=127.0.0.1"
            )
            self.addCleanup(sim.disconnect_all)
            self.addCleanup(port.stopListening)
            self.printers.append((sim, port.getHost().port))  # type: ignore[attr-defined]
        self.reader = ReaderSimulator(reactor)
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        reader_port = await endpoint.listen(self.reader)
        self.addCleanup(self.reader.shutdown)
        self.addCleanup(reader_port.stopListening)
        self.reader_port = reader_port.getHost().port
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        self.state_dir = os.path.join(base, "state")
        self.path = os.path.join(base, "plantd.ini")

    def config(self, printer: int, extra: bool, old: bool) -> str:
        text = f"""
[plantd]
state_dir = {self.state_dir}

[server:orders]
listen = tcp:0:interface=127.0.0.1
actions = label
reply = ok [data]\\r\\n

[send:label]
destination = 127.0.0.1:{self.printers[printer][1]}
data = [data]

[reader:door]
connect = tcp:host=127.0.0.1:port={self.reader_port}:timeout=5
reply = accept
"""
        if extra:
            text += "\n[server:extra]\nlisten = tcp:0:interface=127.0.0.1\n"
        if old:
            text += "\n[server:old]\nlisten = tcp:0:interface=127.0.0.1\n"
        return text

    def write(self, text: str) -> None:
        with open(self.path, "w") as f:
            f.write(text)

    async def start(self, expected: int) -> DaemonProcess:
        daemon = start_daemon(self.path, expected=expected)

        async def stop() -> None:
            await daemon.stop()

        self.addCleanup(stop)
        await daemon.listening
        return daemon

    def hup(self, daemon: DaemonProcess) -> None:
        assert daemon.transport is not None
        daemon.transport.signalProcess("HUP")

    async def test_invalid_file_changes_nothing(self) -> None:
        """
        An invalid file is rejected with the start-up line, logged at
        error; the daemon lives and answers as before.
        """
        await self.set_up()
        self.write(self.config(0, extra=False, old=False))
        daemon = await self.start(1)
        client = await connect_client(daemon.ports["server:orders"])
        client.transport.write(b"A1\n")  # type: ignore[union-attr]
        await client.lines(1)
        bad = self.config(0, extra=True, old=False)
        bad = bad.replace("actions = label\n", "actions = label\nframe = lines\n")
        self.assertIn("frame = lines", bad)
        self.write(bad)
        self.hup(daemon)
        await daemon.logged(b"reload rejected")
        self.assertIn(
            f"plantd: {self.path}: [server:orders] frame: expected one of".encode(),
            daemon.output,
        )
        client.transport.write(b"A2\n")  # type: ignore[union-attr]
        await client.lines(2)
        self.assertEqual(client.data, b"ok A1\r\nok A2\r\n")
        self.assertIsNone(daemon.exit_code)
        self.assertNotIn(b"server:extra", daemon.output)
        # Every line of a rejected reload is an error line, not a traceback.
        self.assertNotIn(b"Traceback", daemon.output)

    async def test_reload_applies_section_by_section(self) -> None:
        """
        A reload that adds a trigger, re-points the send action to another
        printer and removes a trigger: the PLC's connection to the
        unchanged trigger survives, its next job goes to the new printer,
        the reader keeps its session, the new trigger listens and the
        removed one does not.
        """
        await self.set_up()
        first, second = self.printers[0][0], self.printers[1][0]
        self.write(self.config(0, extra=False, old=True))
        daemon = await self.start(2)
        old_port = daemon.ports["server:old"]
        await daemon.logged(b"[reader:door]")
        client = await connect_client(daemon.ports["server:orders"])
        client.transport.write(b"A1\n")  # type: ignore[union-attr]
        await client.lines(1)
        self.assertEqual([j.data for j in first.jobs], [b"A1"])
        sessions = self.reader.counters.connections
        self.assertEqual(sessions, 1)

        self.write(self.config(1, extra=True, old=False))
        self.hup(daemon)
        await daemon.logged(
            b"reload: +server:extra, ~send:label (destination), -server:old"
        )
        self.assertIn("server:extra", daemon.ports)

        client.transport.write(b"A2\n")  # type: ignore[union-attr]
        await client.lines(2)
        self.assertEqual(client.data, b"ok A1\r\nok A2\r\n")
        jobs = await second.wait_for_jobs(1)
        self.assertEqual([j.data for j in jobs], [b"A2"])
        self.assertEqual(len(first.jobs), 1)

        extra = await connect_client(daemon.ports["server:extra"])
        extra.transport.loseConnection()  # type: ignore[union-attr]
        with self.assertRaises(ConnectionRefusedError):
            await connect_client(old_port)
        self.assertEqual(self.reader.counters.connections, sessions)
        self.assertTrue(self.reader.connected)
        self.assertFalse(client.lost.called)
