"""
The real daemon (and the simulators) as subprocesses, for C{make fuzz} and
C{make soak}: start, find the ports in the log, read C{/status.json}, RSS
and open descriptors from C{/proc}, and the log checks.

Plain blocking code (subprocess, sockets, threads): the drivers are load
generators, not part of the daemon.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(
    r"\[(server:[\w.\-]+|plantd)\] (?:status )?listening on \S+:(\d+)"
)
#: What must never be in the daemon's log: an exception that escaped.
PROBLEMS = re.compile(r"Unhandled Error|Traceback \(most recent call last\)")


def twistd(*args: str) -> list[str]:
    """
    The command line that runs C{twistd --pidfile= -n ARGS} with this Python.
    """
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--pidfile=",
        "-n",
        *args,
    ]


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for a simulator that
    must come back on the same port).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_problems(text: str) -> list[str]:
    """
    The log lines that show an exception escaped (with the line after each).
    """
    lines = text.splitlines()
    return [
        "\n".join(lines[i : i + 2])
        for i, line in enumerate(lines)
        if PROBLEMS.search(line)
    ]


class Child:
    """
    A subprocess whose output goes to a log file.
    """

    def __init__(self, argv: Sequence[str], log_path: str) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # closed in stop()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )
        self.pid = self.process.pid

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 20.0) -> str:
        """
        Wait until the log matches C{pattern}; the log text.

        @raise RuntimeError: on timeout, or when the process exited first.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if re.search(pattern, text):
                return text
            if not self.alive():
                raise RuntimeError(f"{self.pid} exited early:\n{text[-3000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {pattern!r}:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """
        Signal the process and wait; its exit code (negative: killed).
        """
        if self.alive():
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


class Daemon(Child):
    """
    ``twistd -n plantd --config PATH``; L{ports} maps C{server:NAME} and
    C{plantd} (the status page) to their ports once L{wait_listening} ran.
    """

    def __init__(self, config_path: str, log_path: str) -> None:
        super().__init__(twistd("plantd", "--config", config_path), log_path)
        self.ports: dict[str, int] = {}

    def wait_listening(self, names: Sequence[str], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.ports = {m[0]: int(m[1]) for m in LISTENING.findall(self.log())}
            if all(name in self.ports for name in names):
                return
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"daemon not listening on {names}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        """
        C{/status.json}'s C{stats}.
        """
        url = f"http://127.0.0.1:{self.ports['plantd']}/status.json"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["stats"]

    def rss(self) -> int:
        """
        Resident memory in bytes (VmRSS), 0 once the process is gone.
        """
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def fds(self) -> int:
        """
        Open file descriptors, 0 once the process is gone.
        """
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return 0


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"
