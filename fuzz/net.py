"""
The network half of C{make fuzz}: random and structured-but-broken bytes at
a real C{twistd -n plantd}: every server frame mode, TLS listeners (``ssl:``,
one requiring client certificates: raw non-TLS bytes, and TLS clients with
no certificate, the plant's, an expired one or another CA's), the status
page's HTTP, and a reader trigger fed by a fake SpringCore (a loopback
server here that sends garbled C{$SCRDR} lines).

The rule checked (L{Findings}): no exception escapes (nothing like
"Unhandled Error" or a traceback in the daemon's log), memory stays bounded
(RSS while fuzzing, and per held connection), and the counters in
C{/status.json} account for what was sent and rejected.  The daemon must
still answer a good line correctly at the end and exit 0 on SIGTERM.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.reader.scrdr import MAX_MESSAGE, build_scrdr
from fuzz.proc import Daemon, log_problems, mib
from tests.server.certs import Certificates, write_certificates

MAX_FRAME = 512
MAX_CONNECTIONS = 80
#: Connections held open with a partial frame to measure memory per connection.
HELD = 60
#: RSS a held connection may cost: its frame buffer plus the protocol,
#: transport, framer and timers (generous: RSS moves in pages and arenas).
PER_CONNECTION = MAX_FRAME + 48 * 1024
#: RSS the whole fuzz may add over the daemon's size after start-up: every
#: listener full of connections at once, with room for allocator slack.
GROWTH = 6 * MAX_CONNECTIONS * PER_CONNECTION + 24 * 1024 * 1024

#: (section, frame mode, extra INI lines) for every server trigger.
LISTENERS: tuple[tuple[str, str, str], ...] = (
    (
        "line",
        "line",
        "parse = regex:^(?P<sku>[\\w-]+);(?P<qty>\\d+)$\n"
        "reply = ACK [sku] [qty]\\r\\n\nerror_reply = NAK [error]\\r\\n\n",
    ),
    ("delimiter", "delimiter", "delimiter = ||\nparse = csv:;\nreply = echo\n"),
    ("stx", "stx-etx", "parse = json\nreply = echo\nerror_reply = E [error]\n"),
    ("bytes", "bytes", "frame_size = 16\nreply = echo\n"),
    ("idle", "idle", "frame_idle = 0.05\nreply = got [data]\\n\n"),
    ("disconnect", "disconnect", "reply = echo\n"),
)


#: (section, needs a client certificate) for the TLS server triggers: line
#: framing over ``ssl:``, one of them with C{tls_client_ca}.
TLS_LISTENERS: tuple[tuple[str, bool], ...] = (("tls", False), ("mtls", True))

#: What a connection to a TLS listener does: raw bytes that are no TLS at
#: all, a TLS client with no certificate, the plant's valid one, an expired
#: one, or one from another CA.
TLS_CLIENTS = ("raw", "anonymous", "client", "expired", "other")


def config_text(
    state_dir: str, reader_port: int, certs: Certificates | None = None
) -> str:
    """
    The daemon's INI for a fuzz run (with C{certs}, TLS listeners too).
    """
    parts = [f"[plantd]\nstate_dir = {state_dir}\nstatus = tcp:0:interface=127.0.0.1\n"]
    for name, mode, extra in LISTENERS:
        parts.append(
            f"[server:{name}]\nlisten = tcp:0:interface=127.0.0.1\nframe = {mode}\n"
            f"max_frame = {MAX_FRAME}\nmax_connections = {MAX_CONNECTIONS}\n"
            f"idle_timeout = 5\nwrite_timeout = 5\nallow = 127.0.0.0/8 ::1\n{extra}"
        )
    for name, mutual in TLS_LISTENERS if certs is not None else ():
        assert certs is not None
        listen = (
            f"ssl:0:interface=127.0.0.1:privateKey={certs.server_key}"
            f":certKey={certs.server_cert}"
        )
        parts.append(
            f"[server:{name}]\nlisten = {listen}\nmax_frame = {MAX_FRAME}\n"
            f"max_connections = {MAX_CONNECTIONS}\nidle_timeout = 5\n"
            "write_timeout = 5\n"
            + (f"tls_client_ca = {certs.ca}\n" if mutual else "")
            + "parse = regex:^(?P<sku>[\\w-]+);(?P<qty>\\d+)$\n"
            "reply = ACK [sku] [qty] [peer_cert]\\r\\n\n"
            "error_reply = NAK [error]\\r\\n\n"
        )
    parts.append(
        f"[reader:fake]\nconnect = tcp:host=127.0.0.1:port={reader_port}:timeout=5\n"
        "retry_initial = 0.05\nretry_max = 0.2\nchecksum = lenient\n"
        "reply = accept\n"
    )
    return "\n".join(parts)


# --------------------------------------------------------------- payloads


def _noise(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """
    Flip, cut, duplicate or splice a few bytes of C{data}.
    """
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        how = rng.randrange(5)
        if how == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif how == 1:
            del buf[at:]
        elif how == 2:
            buf[at:at] = buf[at : at + rng.randint(1, 64)] * rng.randint(1, 8)
        elif how == 3:
            buf[at:at] = rng.choice(
                [b"\x00", b"\xff\xfe", b"\r", b"\n", b"\x02", b"\x03"]
            )
        else:
            del buf[at]
    return bytes(buf)


def _valid_frame(rng: random.Random, mode: str) -> bytes:
    sku = f"SKU-{rng.randint(0, 99999)}"
    qty = rng.randint(0, 999)
    if mode == "line":
        return f"{sku};{qty}\r\n".encode()
    if mode == "delimiter":
        return f"{sku};{qty};x||".encode()
    if mode == "stx-etx":
        return b"\x02" + f'{{"sku": "{sku}", "qty": {qty}}}'.encode() + b"\x03"
    return f"{sku};{qty}".encode().ljust(16, b".")


def server_payload(rng: random.Random, mode: str) -> tuple[bytes, str]:
    """
    What one connection to a listener of C{mode} sends, and its kind.
    """
    kind = rng.choice(["noise", "broken", "valid", "oversized", "mixed", "utf8"])
    if kind == "noise":
        return _noise(rng, rng.randint(1, 3000)), kind
    if kind == "valid":
        return b"".join(
            _valid_frame(rng, mode) for _ in range(rng.randint(1, 20))
        ), kind
    if kind == "broken":
        frames = b"".join(_valid_frame(rng, mode) for _ in range(rng.randint(1, 10)))
        return _mutate(rng, frames), kind
    if kind == "oversized":
        filler = rng.choice([b"A", b"\x02", b"\r", b"|"]) * (
            MAX_FRAME + rng.randint(1, 4000)
        )
        return _valid_frame(rng, mode)[:1] + filler, kind
    if kind == "utf8":
        return b"\xc3\x28\xa0\xa1;1\r\n\xf0\x28\x8c\xbc||\x02\xff\x03", kind
    return b"".join(
        rng.choice([_valid_frame(rng, mode), _noise(rng, rng.randint(0, 40))])
        for _ in range(rng.randint(2, 30))
    ), kind


def http_payload(rng: random.Random) -> bytes:
    """
    A broken, odd or valid HTTP request for the status page.
    """
    path = rng.choice(
        ["/", "/status.json", "/metrics", "/nope", "/%00", "/" + "a" * 5000]
    )
    method = rng.choice([b"GET", b"POST", b"HEAD", b"BREW", b"", b"G\x00T"])
    headers = rng.choice(
        [
            b"Host: x\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 99999999999999999999\r\n",
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"X: " + b"y" * rng.randint(1, 20000) + b"\r\n",
            b"\x00\xff: \x01\r\n",
            b"",
        ]
    )
    request = (
        method + b" " + path.encode() + b" HTTP/1." + rng.choice([b"0", b"1", b"9"])
    )
    request += b"\r\n" + headers + b"\r\n"
    choice = rng.randrange(4)
    if choice == 0:
        return _mutate(rng, request)
    if choice == 1:
        return _noise(rng, rng.randint(1, 2000))
    if choice == 2:
        return request * rng.randint(1, 5)
    return request


def reader_line(rng: random.Random) -> tuple[bytes, str]:
    """
    One thing the fake reader sends, and its kind.
    """
    kind = rng.choice(
        ["valid", "valid", "broken", "noise", "greeting", "checksum", "oversized"]
    )
    if kind == "oversized" and rng.random() < 0.8:
        kind = "broken"  # keep sessions alive most of the time
    tag = f"{rng.getrandbits(32):08X}"
    line = build_scrdr(
        interface="01",
        protocol="02",
        tag_id=tag,
        move=rng.choice(["", "I", "R"]),
        tag_data=rng.choice(["", "x y"]),
        checksum_span=rng.choice(["inclusive", "exclusive", None]),
    )
    if kind == "valid":
        return line, kind
    if kind == "broken":
        return _mutate(rng, line[:-2]).replace(b"\n", b"") + b"\r\n", kind
    if kind == "noise":
        return _noise(rng, rng.randint(1, 200)).replace(b"\n", b"") + b"\r\n", kind
    if kind == "greeting":
        return b"$SCRDR\r\n", kind
    if kind == "checksum":
        return line[:-4] + b"ZZ\r\n", kind
    return b"$SCRDR;" + b"A" * (MAX_MESSAGE + rng.randint(1, 1000)) + b"\r\n", kind


# --------------------------------------------------------------- the run


@dataclass
class Tally:
    """
    What the fuzzer did, by target.
    """

    connections: dict[str, int] = field(default_factory=dict)
    bytes_sent: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, target: str, sent: int, kind: str, connected: bool) -> None:
        with self.lock:
            if connected:
                self.connections[target] = self.connections.get(target, 0) + 1
            self.bytes_sent[target] = self.bytes_sent.get(target, 0) + sent
            kinds = self.kinds.setdefault(target, {})
            kinds[kind] = kinds.get(kind, 0) + 1


@dataclass
class Findings:
    """
    Everything a fuzz run found wrong (empty: the rule held).
    """

    violations: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)


def _send_chunks(rng: random.Random, sock: socket.socket, data: bytes) -> int:
    sent = 0
    while sent < len(data):
        size = rng.choice([1, 7, 64, 1500, len(data)])
        try:
            sock.sendall(data[sent : sent + size])
        except OSError:
            break
        sent += min(size, len(data) - sent)
        if rng.random() < 0.05:
            time.sleep(rng.random() * 0.02)
    return sent


def _finish(rng: random.Random, sock: socket.socket) -> None:
    """
    End a connection one of the ways a peer can: read a little and close,
    half-close, or reset.
    """
    try:
        how = rng.randrange(4)
        if how == 0:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        elif how == 1:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.3)
            while sock.recv(65536):
                pass
        elif how == 2:
            sock.settimeout(0.05)
            sock.recv(65536)
    except OSError:
        pass
    sock.close()


def _tls_connection(
    rng: random.Random, port: int, certs: Certificates
) -> tuple[int, str]:
    """
    One connection to a TLS listener: raw bytes that are no TLS at all, or a
    real TLS client (with no certificate, the plant's, an expired one, or
    another CA's) sending a line-mode payload and ending one of the ways a
    peer can.  Returns the bytes sent and the kind.
    """
    who = rng.choice(TLS_CLIENTS)
    sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    if who == "raw":
        sent = _send_chunks(rng, sock, _noise(rng, rng.randint(1, 3000)))
        _finish(rng, sock)
        return sent, who
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if who != "anonymous":
        context.load_cert_chain(*getattr(certs, who))
    data, kind = server_payload(rng, "line")
    sent = 0
    try:
        tls = context.wrap_socket(sock)
    except (OSError, ssl.SSLError):
        sock.close()
        return 0, f"{who} refused"
    conn: socket.socket = tls
    try:
        sent = _send_chunks(rng, tls, data)
        how = rng.randrange(3)
        if how == 0:
            conn = tls.unwrap()  # close_notify; what is due still comes
        else:
            tls.settimeout(0.2)
            try:
                while tls.recv(65536):
                    pass
            except (OSError, ssl.SSLError):
                pass
        if how == 1:
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    except (OSError, ssl.SSLError, ValueError):
        pass
    finally:
        conn.close()
    return sent, f"{who} {kind}"


class FakeReader(threading.Thread):
    """
    A SpringCore stand-in: accepts the daemon's reader connection and sends
    random, garbled and valid C{$SCRDR} lines until told to stop, dropping
    the connection now and then so the daemon reconnects.
    """

    def __init__(self, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.rng = rng
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stop_event = threading.Event()
        self.sessions = 0
        self.lines: dict[str, int] = {}
        self.bytes_sent = 0
        self.received = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            self.sessions += 1
            self._session(conn)
        self.server.close()

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(0.5)
        rng = self.rng
        budget = rng.randint(5, 400)
        try:
            for _ in range(budget):
                if self.stop_event.is_set():
                    break
                line, kind = reader_line(rng)
                conn.sendall(line)
                self.bytes_sent += len(line)
                self.lines[kind] = self.lines.get(kind, 0) + 1
                conn.setblocking(False)
                try:
                    self.received += len(conn.recv(65536))
                except (BlockingIOError, OSError):
                    pass
                conn.settimeout(0.5)
                if kind == "oversized":
                    break
                if rng.random() < 0.02:
                    time.sleep(0.01)
        except OSError:
            pass
        _finish(rng, conn)


def _worker(
    daemon: Daemon,
    deadline: float,
    seed: int,
    tally: Tally,
    stop: threading.Event,
    certs: Certificates,
) -> None:
    rng = random.Random(seed)
    targets = [(name, mode) for name, mode, _ in LISTENERS] + [("status", "http")]
    targets += [(name, "tls") for name, _ in TLS_LISTENERS]
    while time.monotonic() < deadline and not stop.is_set():
        name, mode = rng.choice(targets)
        port = daemon.ports["plantd" if mode == "http" else f"server:{name}"]
        if mode == "tls":
            try:
                sent, kind = _tls_connection(rng, port, certs)
            except OSError:
                tally.add(name, 0, "connect failed", False)
                continue
            tally.add(name, sent, kind, True)
            continue
        if mode == "http":
            data, kind = http_payload(rng), "http"
        else:
            data, kind = server_payload(rng, mode)
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            tally.add(name, 0, "connect failed", False)
            continue
        sent = _send_chunks(rng, sock, data)
        _finish(rng, sock)
        tally.add(name, sent, kind, True)


def _hold_connections(
    daemon: Daemon, tally: Tally, findings: Findings
) -> dict[str, float]:
    """
    Open L{HELD} connections each holding a partial frame just under
    max_frame; the RSS they add, per connection, must stay under
    L{PER_CONNECTION}.
    """
    port = daemon.ports["server:line"]
    time.sleep(0.5)
    before = daemon.rss()
    socks = []
    for i in range(HELD):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(bytes([65 + i % 26]) * (MAX_FRAME - 1))
        socks.append(s)
    time.sleep(1.0)
    during = daemon.rss()
    for s in socks:
        s.close()
        tally.add("line", MAX_FRAME - 1, "held", True)
    per = max(0, during - before) / HELD
    findings.check(
        per <= PER_CONNECTION,
        f"memory per held connection {per:.0f} B > {PER_CONNECTION} B",
    )
    return {
        "held": HELD,
        "rss_before": before,
        "rss_held": during,
        "per_connection": per,
    }


def _wait_idle(daemon: Daemon, timeout: float = 15.0) -> dict[str, Any]:
    """
    /status.json once no server connection is active any more.
    """
    deadline = time.monotonic() + timeout
    while True:
        stats = daemon.status()
        if all(s["active"] == 0 for s in stats["server"].values()):
            return stats
        if time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def fuzz_network(
    work_dir: str, seconds: float, seed: int, workers: int = 3
) -> dict[str, Any]:
    """
    Run the network fuzzer for about C{seconds}; a summary dict whose
    C{violations} list is empty when the rule held.
    """
    rng = random.Random(seed)
    findings = Findings()
    reader = FakeReader(random.Random(rng.random()))
    config = os.path.join(work_dir, "fuzz.ini")
    pki = os.path.join(work_dir, "pki")
    os.makedirs(pki, exist_ok=True)
    certs = write_certificates(pki)
    with open(config, "w") as f:
        f.write(config_text(os.path.join(work_dir, "state"), reader.port, certs))
    daemon = Daemon(config, os.path.join(work_dir, "daemon.log"))
    names = ["plantd"] + [f"server:{name}" for name, _, _ in LISTENERS]
    names += [f"server:{name}" for name, _ in TLS_LISTENERS]
    tally = Tally()
    summary: dict[str, Any] = {"daemon_pid": daemon.pid, "log": daemon.log_path}
    try:
        daemon.wait_listening(names)
        reader.start()
        time.sleep(1.0)
        start_rss = daemon.rss()
        summary["held"] = _hold_connections(daemon, tally, findings)
        peak = [start_rss]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], daemon.rss())
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        deadline = time.monotonic() + seconds
        threads = [
            threading.Thread(
                target=_worker,
                args=(daemon, deadline, rng.random(), tally, stop, certs),
            )
            for _ in range(workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reader.stop_event.set()
        reader.join(10)
        stats = _wait_idle(daemon)
        stop.set()
        sampler.join()
        summary.update(
            rss_start=start_rss,
            rss_peak=peak[0],
            rss_end=daemon.rss(),
            fds=daemon.fds(),
        )
        findings.check(
            peak[0] - start_rss <= GROWTH,
            f"RSS grew by {mib(peak[0] - start_rss)} while fuzzing (bound {mib(GROWTH)})",
        )
        check_counters(stats, tally, reader.sessions, reader.lines, findings)
        _check_alive(daemon, findings)
        summary["counters"] = stats
    finally:
        reader.stop_event.set()
        code = daemon.stop()
    # twistd ends itself with the signal it stopped on, once shut down.
    findings.check(code in (0, -signal.SIGTERM), f"daemon exited {code} on SIGTERM")
    problems = log_problems(daemon.log())
    findings.check(
        not problems, "exceptions in the daemon log:\n" + "\n".join(problems[:5])
    )
    summary.update(
        connections=dict(tally.connections),
        bytes_sent=dict(tally.bytes_sent),
        kinds={k: dict(v) for k, v in tally.kinds.items()},
        reader={
            "sessions": reader.sessions,
            "lines": dict(reader.lines),
            "bytes_sent": reader.bytes_sent,
            "bytes_received": reader.received,
        },
        violations=findings.violations,
    )
    return summary


def check_counters(
    stats: dict[str, Any],
    tally: Tally,
    reader_sessions: int,
    reader_lines: dict[str, int],
    findings: Findings,
) -> None:
    """
    The counters account for every connection and say what was rejected.
    """
    for name, mode, _ in LISTENERS:
        s = stats["server"][name]
        opened = tally.connections.get(name, 0)
        findings.check(
            s["connections"] + s["rejected"] == opened,
            f"[server:{name}] connections {s['connections']} + rejected "
            f"{s['rejected']} != {opened} connections made",
        )
        findings.check(
            s["bytes_in"] <= tally.bytes_sent.get(name, 0),
            f"[server:{name}] bytes_in {s['bytes_in']} > bytes sent",
        )
        kinds = tally.kinds.get(name, {})
        if mode not in ("bytes",) and kinds.get("oversized"):
            findings.check(s["oversized"] > 0, f"[server:{name}] oversized not counted")
        if mode != "bytes" and kinds.get("oversized"):
            findings.check(
                s["errors"] >= s["oversized"],
                f"[server:{name}] errors {s['errors']} < oversized {s['oversized']}",
            )
        if kinds.get("valid"):
            findings.check(s["frames"] > 0, f"[server:{name}] no frame counted")
    for name, mutual in TLS_LISTENERS:
        s = stats["server"][name]
        opened = tally.connections.get(name, 0)
        findings.check(
            s["connections"] + s["rejected"] == opened,
            f"[server:{name}] connections {s['connections']} + rejected "
            f"{s['rejected']} != {opened} connections made",
        )
        kinds = tally.kinds.get(name, {})
        strangers = sum(
            n
            for k, n in kinds.items()
            if k.split()[0] in ("anonymous", "expired", "other")
        )
        valid = sum(n for k, n in kinds.items() if k == "client valid")
        if mutual:
            findings.check(
                s["tls_refused"] > 0 or strangers == 0,
                f"[server:{name}] {strangers} clients without a plant certificate, "
                "tls_refused not counted",
            )
            findings.check(
                s["tls_refused"] <= strangers + kinds.get("raw", 0),
                f"[server:{name}] tls_refused {s['tls_refused']} > refusable "
                f"connections made",
            )
        if valid:
            findings.check(s["frames"] > 0, f"[server:{name}] no frame counted")
    line = stats["server"]["line"]
    if tally.kinds.get("line", {}).get("broken"):
        findings.check(
            line["parse_errors"] > 0, "[server:line] parse_errors not counted"
        )
    if tally.kinds.get("line", {}).get("utf8"):
        findings.check(
            line["decode_errors"] > 0, "[server:line] decode_errors not counted"
        )
    r = stats["reader"]["fake"]
    # A connection the fake reader accepted and reset before the daemon's
    # reactor saw the connect complete is a failed connect, not a session.
    findings.check(
        r["sessions"] <= reader_sessions <= r["sessions"] + r["connect_failures"],
        f"[reader:fake] sessions {r['sessions']} + connect_failures "
        f"{r['connect_failures']} do not account for {reader_sessions} accepted",
    )
    sent = sum(reader_lines.values())
    findings.check(
        r["messages"] <= sent, f"[reader:fake] messages {r['messages']} > {sent}"
    )
    for kind, counter in (
        ("valid", "badges"),
        ("broken", "protocol_errors"),
        ("noise", "protocol_errors"),
        ("greeting", "greetings"),
        ("oversized", "oversized"),
    ):
        if reader_lines.get(kind, 0) > 5:
            findings.check(
                r[counter] > 0, f"[reader:fake] {counter} not counted ({kind})"
            )


def _check_alive(daemon: Daemon, findings: Findings) -> None:
    """
    After all that, a good line still gets its reply.
    """
    try:
        with socket.create_connection(
            ("127.0.0.1", daemon.ports["server:line"]), 5
        ) as s:
            s.sendall(b"SKU-1;7\r\n")
            s.settimeout(5)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = s.recv(100)
                if not chunk:
                    break
                reply += chunk
    except OSError as e:
        reply = repr(e).encode()
    findings.check(
        reply == b"ACK SKU-1 7\r\n", f"good line after fuzzing got {reply!r}"
    )
