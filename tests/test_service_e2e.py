"""
The real daemon as systemd runs it: ``READY=1`` on a notify socket only once
its port accepts connections, ``STOPPING=1`` on SIGTERM, journald priorities
when C{$JOURNAL_STREAM} names its stdout, JSON lines with ``log_format =
json``, an unprivileged start against a read-only installation, and
``--version``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import tempfile
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import (
    ROOT,
    DaemonProcess,
    connect_client,
    run,
    start_daemon,
    twistd_command,
)

TIMEOUT = 20


class NotifyCollector(DatagramProtocol):
    """
    The fake systemd: records each datagram as a dict; L{wait} fires once
    one has a given key.
    """

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self._waiters: list[tuple[str, Deferred[dict[str, str]]]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.messages.append(message)
        for item in list(self._waiters):
            if item[0] in message:
                self._waiters.remove(item)
                item[1].callback(message)

    def wait(self, key: str) -> Deferred[dict[str, str]]:
        for message in self.messages:
            if key in message:
                d: Deferred[dict[str, str]] = Deferred()
                d.callback(message)
                return d
        waiting: Deferred[dict[str, str]] = Deferred()
        self._waiters.append((key, waiting))
        return waiting


class SystemdTests(TestCase):
    """
    The daemon under a fake systemd: notify socket and journal stream.
    """

    timeout = TIMEOUT

    async def test_notify_and_journal(self) -> None:
        """
        ``READY=1`` comes once the trigger's port accepts a connection (its
        number is in the log before); ``STOPPING=1`` on SIGTERM; every log
        line starts with its priority, ``<4>`` for the warning of a reader
        that cannot connect; Twisted's own "starting on" / "Port Closed"
        lines are gone, plantd's listening lines stay.
        """
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work)
        systemd = NotifyCollector()
        notify_path = os.path.join(work, "notify")
        port = reactor.listenUNIXDatagram(notify_path, systemd)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        self.addCleanup(closed.close)
        config = os.path.join(work, "plantd.ini")
        with open(config, "w") as f:
            f.write(
                "[server:a]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n"
                "[reader:door]\n"
                f"connect = tcp:host=127.0.0.1:port={closed.getsockname()[1]}\n"
                "reply = accept\n"
            )
        log_path = os.path.join(work, "journal")
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.addCleanup(os.close, log_fd)
        st = os.fstat(log_fd)
        env = dict(os.environ)
        env.update(
            NOTIFY_SOCKET=notify_path,
            JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}",
            WATCHDOG_USEC="2000000",
            PYTHONUNBUFFERED="1",
        )
        process = DaemonProcess(0)
        # Its log goes to the "journal" file, not to a pipe: only ended counts.
        process.listening.addErrback(lambda _: None)
        argv = [*twistd_command(), "--pidfile=", "-n", "plantd", "--config", config]
        reactor.spawnProcess(
            process,
            argv[0],
            argv,
            env=env,
            path=ROOT,
            childFDs={0: "w", 1: log_fd, 2: "r"},
        )
        self.addCleanup(lambda: process.stop(signal.SIGKILL))
        ready = await systemd.wait("READY")
        self.assertEqual(ready["STATUS"], "1 trigger, 0 of 1 reader connected")
        with open(log_path) as f:
            text = f.read()
        match = re.search(r"\[server:a\] listening on 127.0.0.1:(\d+)", text)
        assert match is not None, text
        client = await connect_client(int(match.group(1)))
        assert client.transport is not None
        client.transport.write(b"hello\n")
        self.assertEqual(await client.lines(1), b"hello\r\n")
        client.transport.loseConnection()
        await systemd.wait("WATCHDOG")
        await process.stop()
        self.assertIn("1", (await systemd.wait("STOPPING"))["STOPPING"])
        with open(log_path) as f:
            lines = f.read().splitlines()
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^<[3467]>")
        self.assertTrue(
            any(
                line.startswith("<4>") and "[reader:door] cannot connect" in line
                for line in lines
            ),
            lines,
        )
        self.assertTrue(
            any(line.startswith("<6>") and "listening on" in line for line in lines)
        )
        joined = "\n".join(lines)
        self.assertNotIn("starting on", joined)
        self.assertNotIn("Closed)", joined)
        self.assertIn("[server:a] stopped listening on", joined)

    async def test_json_lines(self) -> None:
        """
        With ``log_format = json`` every line is one JSON object with time,
        level, logger, message and the event's fields.
        """
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work)
        config = os.path.join(work, "plantd.ini")
        with open(config, "w") as f:
            f.write(
                "[plantd]\nlog_format = json\nlog_level = debug\n"
                "[server:a]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n"
            )
        process = start_daemon(config)
        self.addCleanup(lambda: process.stop(signal.SIGKILL))
        ports = await process.listening
        client = await connect_client(ports["server:a"])
        assert client.transport is not None
        client.transport.write(b"x\n")
        await client.lines(1)
        client.transport.loseConnection()
        await process.logged(b"disconnected")
        await process.stop()
        lines = process.output.decode().splitlines()
        self.assertGreater(len(lines), 4)
        records = [json.loads(line) for line in lines]
        for record in records:
            self.assertLessEqual({"time", "level", "logger", "message"}, set(record))
        listening = [r for r in records if "listening on" in r["message"]]
        self.assertEqual(listening[0]["level"], "info")
        self.assertEqual(listening[0]["label"], "[server:a]")
        self.assertIn("address", listening[0])


class UnprivilegedTests(TestCase):
    """
    An installation owned by root and read-only, run as ``nobody``.
    """

    timeout = TIMEOUT

    def setUp(self) -> None:
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            raise SkipTest("needs root and setpriv (util-linux) to run as nobody")

    async def start_as_nobody(self, regenerate: bool) -> str:
        """
        Copy the package and its plugin into a read-only tree, regenerate
        the plugin cache there (the documented install step) or not, start
        the daemon as nobody, and return its log once it listened.
        """
        work = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, work)
        os.chmod(work, 0o755)
        install = os.path.join(work, "site")
        shutil.copytree(
            os.path.join(ROOT, "daemon"),
            os.path.join(install, "daemon"),
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        plugins = os.path.join(install, "twisted", "plugins")
        os.makedirs(plugins)
        # Both plugin files, as the wheel installs them: each then shadows
        # its twin in the source tree (also on sys.path, by plantd-source.pth),
        # whose cache is left alone.
        for name in ("plantd_plugin.py", "plantd_sim_plugin.py"):
            shutil.copy(os.path.join(ROOT, "twisted", "plugins", name), plugins)
        env = dict(os.environ, PYTHONPATH=install, PYTHONDONTWRITEBYTECODE="1")
        if regenerate:
            result = await run(
                [
                    "/usr/bin/env",
                    f"PYTHONPATH={install}",
                    sys.executable,
                    "-c",
                    "from twisted.plugin import IPlugin, getPlugins; "
                    "list(getPlugins(IPlugin))",
                ],
                cwd=work,
            )
            self.assertEqual(result.code, 0, result.err)
            self.assertTrue(os.path.exists(os.path.join(plugins, "dropin.cache")))
        for path, dirs, files in os.walk(install):
            for name in dirs + files:
                full = os.path.join(path, name)
                os.chmod(full, 0o555 if os.path.isdir(full) else 0o444)
        os.chmod(install, 0o555)
        state = os.path.join(work, "state")
        os.mkdir(state)
        os.chmod(state, 0o777)
        config = os.path.join(work, "plantd.ini")
        with open(config, "w") as f:
            f.write(
                "[plantd]\nstate_dir = state\n"
                "[server:a]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n"
                "[send:keep]\ndestination = 127.0.0.1:9\ndata = x\nqueue = durable\n"
            )
        os.chmod(config, 0o644)
        as_nobody = [
            shutil.which("setpriv") or "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ]
        # This interpreter and its virtualenv must be readable by nobody: a
        # checkout in a private directory (mktemp -d makes it 0700) is not.
        probe = await run(
            [*as_nobody, sys.executable, "-c", "import twisted.scripts.twistd"],
            cwd=work,
        )
        if probe.code != 0:
            why = probe.err.decode(errors="replace").strip().splitlines()
            raise SkipTest(
                "user nobody cannot run this checkout's Python (a checkout in a "
                "directory only root can enter?): "
                + (why[-1] if why else f"exit {probe.code}")
            )
        process = DaemonProcess(1)
        argv = [
            *as_nobody,
            *twistd_command(),
            "--pidfile=",
            "-n",
            "plantd",
            "--config",
            config,
        ]
        reactor.spawnProcess(process, argv[0], argv, env=env, path=work)
        self.addCleanup(lambda: process.stop(signal.SIGKILL))
        await process.listening
        await process.logged(b"recovered")
        await process.stop()
        # The outbox was created by nobody, relative to the file's directory.
        self.assertTrue(os.path.exists(os.path.join(state, "outbox.sqlite3")))
        self.assertEqual(
            os.stat(os.path.join(state, "outbox.sqlite3"))[stat.ST_UID],
            65534,
        )
        return process.output.decode()

    async def test_read_only_installation(self) -> None:
        """
        With the plugin cache written at install, the start logs no error.
        """
        output = await self.start_as_nobody(regenerate=True)
        self.assertNotIn("plugin cache", output)
        self.assertNotIn("Traceback", output)

    async def test_without_the_install_step(self) -> None:
        """
        Without that step the same start complains (what the step fixes).
        """
        output = await self.start_as_nobody(regenerate=False)
        self.assertIn("Unable to write to plugin cache", output)


class VersionTests(TestCase):
    """
    ``twistd plantd --version``.
    """

    timeout = TIMEOUT

    async def test_version(self) -> None:
        """
        It prints plantd's version, the one the distribution was built with.
        """
        from importlib.metadata import version

        result = await run([*twistd_command(), "plantd", "--version"])
        self.assertEqual(result.code, 0, result.err)
        self.assertEqual(result.out.decode().strip(), f"plantd {version('plantd')}")
