"""
Paths inside endpoint descriptions are relative to the INI file's directory,
like every other path key.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.endpoints import _parse
from twisted.trial.unittest import SynchronousTestCase

from daemon.config import read_config
from daemon.config.endpoint_paths import (
    join_description,
    relative_endpoint,
    split_description,
)
from tests.server.certs import write_certificates


def _under(directory: str) -> Callable[[str], str]:
    def resolve(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(directory, path)

    return resolve


class RelativeEndpointTests(SynchronousTestCase):
    """
    L{relative_endpoint} rewrites only the path arguments, and Twisted reads
    the rewritten description back as the same arguments.
    """

    def rewrite(self, description: str, server: bool = True) -> str:
        return relative_endpoint(description, _under("/etc/plantd"), server)

    def test_unix_positional_and_keyword(self) -> None:
        """
        A server ``unix:`` address, positional or C{address=}, and a client's
        C{path=} (or positional) are paths.
        """
        self.assertEqual(self.rewrite("unix:run/p.sock"), "unix:/etc/plantd/run/p.sock")
        self.assertEqual(
            self.rewrite("unix:address=p.sock:mode=600"),
            "unix:address=/etc/plantd/p.sock:mode=600",
        )
        self.assertEqual(
            self.rewrite("unix:path=p.sock:timeout=3", server=False),
            "unix:path=/etc/plantd/p.sock:timeout=3",
        )
        self.assertEqual(
            self.rewrite("unix:p.sock", server=False), "unix:/etc/plantd/p.sock"
        )

    def test_ssl_and_tls_files(self) -> None:
        """
        C{privateKey}, C{certKey}, C{extraCertChain}, C{dhParameters} of an
        ``ssl:`` listener, C{caCertsDir} of an ``ssl:`` client and the files
        of a ``tls:`` client; other arguments stay.
        """
        self.assertEqual(
            self.rewrite(
                "ssl:9200:interface=127.0.0.1:privateKey=tls/k.pem:certKey=tls/c.pem"
                ":extraCertChain=chain.pem:dhParameters=dh.pem"
            ),
            "ssl:9200:interface=127.0.0.1:privateKey=/etc/plantd/tls/k.pem"
            ":certKey=/etc/plantd/tls/c.pem:extraCertChain=/etc/plantd/chain.pem"
            ":dhParameters=/etc/plantd/dh.pem",
        )
        self.assertEqual(
            self.rewrite(
                "ssl:host=h:port=1:caCertsDir=cas:certKey=c.pem", server=False
            ),
            "ssl:host=h:port=1:caCertsDir=/etc/plantd/cas:certKey=/etc/plantd/c.pem",
        )
        self.assertEqual(
            self.rewrite(
                "tls:host=h:port=1:trustRoots=cas:certificate=c.pem:privateKey=k.pem",
                server=False,
            ),
            "tls:host=h:port=1:trustRoots=/etc/plantd/cas"
            ":certificate=/etc/plantd/c.pem:privateKey=/etc/plantd/k.pem",
        )

    def test_unchanged(self) -> None:
        """
        Absolute paths and endpoints without paths come back byte for byte,
        escapes included.
        """
        for description in (
            "tcp:9200:interface=\\:\\:1",
            "ssl:9200:privateKey=/k.pem",
            "unix:/run/plantd.sock",
            "tcp:host=printer:port=9100",
            "systemd:domain=INET:index=0",
        ):
            self.assertEqual(self.rewrite(description), description)
            self.assertEqual(self.rewrite(description, server=False), description)

    def test_escaping(self) -> None:
        """
        A path with an escaped ``:`` or ``=`` keeps it escaped, and a base
        directory containing ``:``, ``=`` or ``\\`` is escaped, so that
        Twisted's own parser reads the intended path.
        """
        rewritten = relative_endpoint(
            "ssl:9200:privateKey=a\\:b=c.pem:certKey=\\\\x.pem",
            _under("/srv/odd:dir=1"),
            server=True,
        )
        args, kwargs = _parse(rewritten)
        self.assertEqual(args, ["ssl", "9200"])
        self.assertEqual(
            kwargs,
            {
                "privateKey": "/srv/odd:dir=1/a:b=c.pem",
                "certKey": "/srv/odd:dir=1/\\x.pem",
            },
        )
        rewritten = relative_endpoint("unix:s\\=1.sock", _under("/r:1"), server=True)
        self.assertEqual(_parse(rewritten), (["unix", "/r:1/s=1.sock"], {}))

    def test_split_join_round_trip(self) -> None:
        """
        L{split_description} reads what Twisted reads.
        """
        for description in (
            "tcp:9200:interface=\\:\\:1",
            "ssl:443:privateKey=C\\:/key.pem:certKey=C\\:/cert.pem",
            "unix:path=a=b",
        ):
            arguments = split_description(description)
            args, kwargs = _parse(description)
            self.assertEqual([v for k, v in arguments if k is None], args)
            self.assertEqual({k: v for k, v in arguments if k is not None}, kwargs)
            self.assertEqual(_parse(join_description(arguments)), (args, kwargs))


class ConfigEndpointPathTests(SynchronousTestCase):
    """
    Read from a file, the endpoints of C{listen}, C{connect}, C{status} and
    a constant C{destination} name files beside the INI file.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.directory, "tls"))
        certs = write_certificates(os.path.join(self.directory, "tls"))
        self.key = os.path.relpath(certs.server_key, self.directory)
        self.cert = os.path.relpath(certs.server_cert, self.directory)
        self.path = os.path.join(self.directory, "plantd.ini")
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir("/")

    def test_relative_to_the_file(self) -> None:
        """
        An ``ssl:`` listener's key and certificate are found (the check
        loads them) and every endpoint path is absolute under the file's
        directory.
        """
        with open(self.path, "w") as f:
            f.write(
                "[plantd]\nstatus = unix:run/status.sock\n"
                f"[server:a]\nlisten = ssl:0:privateKey={self.key}:certKey={self.cert}\n"
                "[reader:door]\nconnect = unix:path=run/reader.sock\n"
                "[send:p]\ndestination = unix:path=run/printer.sock\ndata = x\n"
            )
        config = read_config(self.path)
        d = self.directory
        self.assertEqual(config.daemon.status, f"unix:{d}/run/status.sock")
        self.assertEqual(
            config.servers[0].listen,
            f"ssl:0:privateKey={d}/{self.key}:certKey={d}/{self.cert}",
        )
        self.assertEqual(config.readers[0].connect, f"unix:path={d}/run/reader.sock")
        self.assertEqual(
            config.sends[0].destination.constant,  # type: ignore[union-attr]
            f"unix:path={d}/run/printer.sock",
        )
