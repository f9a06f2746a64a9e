"""
Tests for L{daemon.core.endpoints}: checking descriptions without a reactor.
"""

from pathlib import Path

from twisted.internet.interfaces import (
    IReactorPluggableNameResolver,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import daemon
from daemon.core.endpoints import (
    DESCRIPTIONS_ONLY,
    check_client_description,
    check_server_description,
)


class DescriptionCheckTests(SynchronousTestCase):
    """
    L{check_server_description} and L{check_client_description}.
    """

    def test_stand_in_is_a_name_resolving_reactor(self) -> None:
        """
        The stand-in provides C{IReactorPluggableNameResolver}, so building a
        C{HostnameEndpoint} (C{tls:}) does not warn about the reactor.
        """
        self.assertTrue(verifyObject(IReactorPluggableNameResolver, DESCRIPTIONS_ONLY))
        endpoint = check_client_description("tls:host=printer.example:port=9100")
        self.assertTrue(IStreamClientEndpoint.providedBy(endpoint))
        self.assertEqual(self.flushWarnings(), [])

    def test_valid_descriptions_build_endpoints(self) -> None:
        """
        Valid server and client descriptions give endpoints, without
        listening or connecting.
        """
        server = check_server_description("tcp:9101:interface=127.0.0.1")
        client = check_client_description("tcp:host=127.0.0.1:port=9200")
        self.assertTrue(IStreamServerEndpoint.providedBy(server))
        self.assertTrue(IStreamClientEndpoint.providedBy(client))

    def test_invalid_descriptions_raise(self) -> None:
        """
        A description the parsers refuse raises (the callers turn it into
        their own error).
        """
        self.assertRaises(ValueError, check_server_description, "tcp:notaport")
        self.assertRaises(ValueError, check_client_description, "nosuch:host=x")

    def test_product_code_imports_no_test_helpers(self) -> None:
        """
        No module under C{daemon/} imports C{twisted.internet.testing}.
        """
        root = Path(daemon.__file__).parent
        offenders = [
            str(path.relative_to(root))
            for path in sorted(root.rglob("*.py"))
            if "twisted.internet.testing" in path.read_text(encoding="utf-8")
        ]
        self.assertEqual(offenders, [])
