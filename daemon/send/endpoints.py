"""
The endpoint a send action connects with, made once per destination.

A destination is ``host:port`` (a C{HostnameEndpoint}: IPv4, IPv6 or a
name) or a client endpoint description (C{clientFromString}), wrapped in
TLS with ``tls = yes``.  Endpoints are reusable, so each distinct
destination is turned into one once and kept (up to L{MAX_ENDPOINTS}), not
parsed again per event and per attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.ssl import optionsForClientTLS

from daemon.config import SendConfig
from daemon.core.actions import ActionFailed
from daemon.send.destination import Destination
from daemon.send.tls import MAX_TLS_OPTIONS, TLSSettings

#: Makes the endpoint for a destination (injectable for tests).
EndpointFactory = Callable[[Destination], IStreamClientEndpoint]

#: Endpoints kept per destination by one action; the cache starts over when
#: full, so memory does not grow with the number of destinations.
MAX_ENDPOINTS = 1024


def make_endpoint_factory(
    reactor: Any, config: SendConfig, tls: TLSSettings | None
) -> EndpointFactory:
    """
    The endpoint factory of an action: a C{HostnameEndpoint} for
    ``host:port``, C{clientFromString} for endpoint descriptions, wrapped in
    TLS when C{tls} is given; one endpoint per distinct destination.

    @raise ActionFailed: (from the factory) for an endpoint description
        that cannot be combined with C{tls}.
    """
    tls_cache: dict[str, Any] = {}
    endpoints: dict[str, IStreamClientEndpoint] = {}

    def tls_options(hostname: str) -> Any:
        assert tls is not None
        options = tls_cache.get(hostname)
        if options is None:
            if len(tls_cache) >= MAX_TLS_OPTIONS:
                tls_cache.clear()
            options = tls_cache[hostname] = optionsForClientTLS(
                hostname,
                trustRoot=tls.trust_root,
                clientCertificate=tls.client_certificate,
            )
        return options

    def build(destination: Destination) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint
        if destination.endpoint is not None:
            if tls is not None:
                if destination.endpoint.startswith(("tls:", "ssl:")):
                    raise ActionFailed(
                        f"{destination}: is already a TLS endpoint; use tcp: with "
                        f"tls = yes, or drop tls = yes"
                    )
                if tls.hostname is None:
                    raise ActionFailed(
                        f"{destination}: tls = yes with an endpoint destination "
                        f"needs tls_hostname"
                    )
            endpoint = clientFromString(reactor, destination.endpoint)
            if tls is None:
                return endpoint
            assert tls.hostname is not None
            return wrapClientTLS(tls_options(tls.hostname), endpoint)
        assert destination.host is not None and destination.port is not None
        endpoint = HostnameEndpoint(
            reactor,
            destination.host,
            destination.port,
            timeout=config.connect_timeout,
        )
        if tls is None:
            return endpoint
        return wrapClientTLS(tls_options(tls.hostname or destination.host), endpoint)

    def make(destination: Destination) -> IStreamClientEndpoint:
        endpoint = endpoints.get(destination.key)
        if endpoint is None:
            if len(endpoints) >= MAX_ENDPOINTS:
                endpoints.clear()
            endpoint = endpoints[destination.key] = build(destination)
        return endpoint

    return make
