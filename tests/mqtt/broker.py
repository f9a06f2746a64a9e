"""
A real mosquitto for the MQTT tests: Debian's C{mosquitto} on a free
loopback port, with its own configuration and persistence directory,
configured as the README tells production to (persistence on, saved after
every change so that a hard kill loses nothing acknowledged), stopped at
cleanup.  Without the package the tests that need it skip with one line
naming it (C{make test} installs it when it can).

Also L{read_messages}: a paho subscriber in a thread, bounded, for reading
back what plantd published.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)

#: Seconds a broker gets to listen after it was started.
START_TIMEOUT = 10.0


def need_mosquitto() -> str:
    """
    The mosquitto binary, or skip the test naming the package to install.
    """
    if MOSQUITTO is None:
        raise SkipTest("install Debian's mosquitto package for the MQTT broker tests")
    return MOSQUITTO


def free_port() -> int:
    """
    A TCP port nothing listens on at 127.0.0.1 now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Mosquitto:
    """
    One mosquitto process; L{start} again after L{kill} or L{stop} restarts
    it on the same port with the same persistence directory.

    @ivar tls: C{(ca, cert, key)} PEM files for a TLS listener, or None.
    """

    directory: str
    port: int = field(default_factory=free_port)
    tls: tuple[str, str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "mosquitto.log")

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            # save after every change: a kill -9 loses nothing it acked
            "autosave_on_changes true",
            "autosave_interval 1",
            "persistent_client_expiration 1d",
            "max_queued_messages 100000",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # else it drops to the mosquitto user, who cannot write here
            lines.append("user root")
        if self.tls is not None:
            ca, cert, key = self.tls
            lines += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        """
        Start mosquitto and wait (bounded) until it accepts connections.
        """
        binary = need_mosquitto()
        os.makedirs(self.directory, exist_ok=True)
        config = os.path.join(self.directory, "mosquitto.conf")
        with open(config, "w") as f:
            f.write(self.config_text())
        self.process = subprocess.Popen(
            [binary, "-c", config],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        waited = 0.0
        while not await deferToThread(_accepts, self.port):
            if self.process.poll() is not None:
                error = self.process.stderr.read() if self.process.stderr else b""
                raise RuntimeError(
                    f"mosquitto exited ({self.process.returncode}): "
                    f"{error.decode(errors='replace')} {self.log()}"
                )
            waited += 0.05
            if waited > START_TIMEOUT:
                raise RuntimeError(f"mosquitto did not listen on {self.port}")
            await deferLater(_reactor, 0.05, lambda: None)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def kill(self) -> None:
        """
        C{kill -9}: no goodbye, no last save.
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(5)
        if process is not None and process.stderr is not None:
            process.stderr.close()

    def stop(self) -> None:
        """
        SIGTERM (it saves) and wait.
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if process is not None and process.stderr is not None:
            process.stderr.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def start_broker(
    directory: str,
    add_cleanup: Callable[..., None],
    tls: tuple[str, str, str] | None = None,
) -> Mosquitto:
    """
    A started L{Mosquitto} in C{directory}, stopped at the test's cleanup.
    """
    broker = Mosquitto(directory, tls=tls)
    add_cleanup(broker.stop)
    await broker.start()
    return broker


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: dict[str, str]


class Subscriber:
    """
    A paho client on its own thread, subscribed to C{topic_filter}; what it
    receives is in L{messages}.  L{wait_for} waits (bounded) for a count.
    """

    def __init__(
        self,
        port: int,
        topic_filter: str,
        tls_ca: str | None = None,
        session: str | None = None,
    ) -> None:
        """
        @param session: a client id whose session the broker keeps (an
            hour) while this subscriber is away, reconnecting on its own.
        """
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=session or "", protocol=mqtt.MQTTv5
        )
        client.reconnect_delay_set(0.2, 0.5)  # type: ignore[arg-type]
        if tls_ca is not None:
            client.tls_set(ca_certs=tls_ca)

        def on_connect(
            c: mqtt.Client, u: object, f: object, rc: object, p: object
        ) -> None:
            c.subscribe(topic_filter, qos=1)

        def on_subscribe(
            c: mqtt.Client, u: object, mid: int, rc: object, p: object
        ) -> None:
            self._subscribed.set()

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            pairs = getattr(m.properties, "UserProperty", None) or []
            with self._lock:
                self.messages.append(
                    Received(m.topic, bytes(m.payload), bool(m.retain), dict(pairs))
                )

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        properties = None
        if session is not None:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600
        client.connect(
            "127.0.0.1",
            port,
            30,
            clean_start=session is None,
            properties=properties,
        )
        client.loop_start()
        self.client = client

    async def subscribed(self, timeout: float = 10.0) -> None:
        if not await deferToThread(self._subscribed.wait, timeout):
            raise TimeoutError("the test subscriber was never subscribed")

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        waited = 0.0
        while True:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            if waited >= timeout:
                with self._lock:
                    got = list(self.messages)
                raise TimeoutError(f"got {len(got)} of {count} messages: {got[:5]}")
            await deferLater(_reactor, 0.05, lambda: None)
            waited += 0.05

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def blackhole() -> tuple[socket.socket, int]:
    """
    A listening socket that never accepts: TCP connects (into the backlog)
    and then nothing answers.  Close it at cleanup.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port: int = s.getsockname()[1]
    return s, port


def never(_: object) -> Deferred[None]:
    """
    A subscription handler that never finishes.
    """
    return Deferred()
