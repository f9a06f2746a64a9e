"""
Tests for L{daemon.core.networks}: the one CIDR allow check.
"""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from daemon.core.networks import host_allowed, parse_host, parse_networks


class ParseNetworksTests(SynchronousTestCase):
    """
    L{parse_networks} reads an allow list.
    """

    def test_separators(self) -> None:
        """
        Commas and spaces separate entries; host bits are ignored.
        """
        self.assertEqual(
            parse_networks("10.1.2.3/16, 127.0.0.1 ::1"),
            (
                ipaddress.ip_network("10.1.0.0/16"),
                ipaddress.ip_network("127.0.0.1/32"),
                ipaddress.ip_network("::1/128"),
            ),
        )

    def test_empty(self) -> None:
        """
        An empty value is an empty list.
        """
        self.assertEqual(parse_networks("  , "), ())

    def test_mapped_entries_are_ipv4(self) -> None:
        """
        An IPv4-mapped entry is read as its IPv4 form, prefix included.
        """
        self.assertEqual(
            parse_networks("::ffff:10.1.0.0/112 ::ffff:192.168.0.7"),
            (
                ipaddress.ip_network("10.1.0.0/16"),
                ipaddress.ip_network("192.168.0.7/32"),
            ),
        )

    def test_wider_than_mapped_stays_ipv6(self) -> None:
        """
        A block wider than C{::ffff:0:0/96} is not a mapped block.
        """
        self.assertEqual(parse_networks("::/64"), (ipaddress.ip_network("::/64"),))

    def test_bad_entry(self) -> None:
        """
        The first bad entry is named in the error.
        """
        with self.assertRaises(ValueError) as caught:
            parse_networks("10.0.0.0/8, plc-7")
        self.assertEqual(
            str(caught.exception),
            "expected addresses or CIDR blocks (10.1.0.0/16); got 'plc-7'",
        )


class HostAllowedTests(SynchronousTestCase):
    """
    L{host_allowed} decides whether a peer is inside a list.
    """

    networks = parse_networks("10.1.0.0/16, 127.0.0.1, fd00::/8")

    def test_ipv4(self) -> None:
        """
        IPv4 peers inside and outside the list.
        """
        self.assertTrue(host_allowed("10.1.2.3", self.networks))
        self.assertTrue(host_allowed("127.0.0.1", self.networks))
        self.assertFalse(host_allowed("10.2.0.1", self.networks))

    def test_ipv4_mapped(self) -> None:
        """
        An IPv4-mapped IPv6 peer is checked as its IPv4 form.
        """
        self.assertTrue(host_allowed("::ffff:10.1.2.3", self.networks))
        self.assertTrue(host_allowed("::ffff:127.0.0.1", self.networks))
        self.assertFalse(host_allowed("::ffff:10.2.0.1", self.networks))

    def test_mapped_entry_matches_ipv4_peer(self) -> None:
        """
        A list written with a mapped entry admits the plain IPv4 peer.
        """
        networks = parse_networks("::ffff:10.1.0.0/112")
        self.assertTrue(host_allowed("10.1.9.9", networks))
        self.assertTrue(host_allowed("::ffff:10.1.9.9", networks))
        self.assertFalse(host_allowed("10.2.9.9", networks))

    def test_ipv6_and_zone(self) -> None:
        """
        IPv6 peers are checked as IPv6; a zone suffix is ignored.
        """
        self.assertTrue(host_allowed("fd00::5", self.networks))
        self.assertTrue(host_allowed("fd00::5%eth0", self.networks))
        self.assertFalse(host_allowed("::1", self.networks))

    def test_not_an_address(self) -> None:
        """
        A UNIX socket peer or an unknown one is never allowed.
        """
        self.assertFalse(host_allowed("unix", self.networks))
        self.assertFalse(host_allowed("unknown", self.networks))
        self.assertIsNone(parse_host("unix"))

    def test_empty_list(self) -> None:
        """
        The empty list allows nobody.
        """
        self.assertFalse(host_allowed("127.0.0.1", ()))

    @given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32))
    def test_mapped_same_as_ipv4(
        self, address: ipaddress.IPv4Address, prefix: int
    ) -> None:
        """
        For any IPv4 address and block, the mapped form of the address gets
        the same answer as the address itself.
        """
        networks = (ipaddress.ip_network(f"10.0.0.0/{prefix}", strict=False),)
        self.assertEqual(
            host_allowed(f"::ffff:{address}", networks),
            host_allowed(str(address), networks),
        )
