"""
Checking endpoint descriptions without a reactor.

C{serverFromString} / C{clientFromString} parse a description and build an
endpoint that stores its reactor, used only to listen or connect.  A check
does neither, so it passes L{DESCRIPTIONS_ONLY}, not a real reactor (and
product code does not import Twisted's test reactors for this).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IHostnameResolver,
    IReactorPluggableNameResolver,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer


@implementer(IReactorPluggableNameResolver)
class DescriptionsOnlyReactor:
    """
    The reactor given to the endpoint parsers when a description is only
    checked.  A C{HostnameEndpoint} asks for a name resolver (and warns when
    the reactor has none to offer), never uses it in a check.
    """

    nameResolver: Any = None

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError("only endpoint descriptions are checked")


#: The one stand-in: it holds no state.
DESCRIPTIONS_ONLY = DescriptionsOnlyReactor()


def check_server_description(description: str) -> IStreamServerEndpoint:
    """
    Parse a server endpoint description (loading any TLS files it names),
    without listening.

    @raise Exception: whatever the parser raises (many kinds; all mean the
        description is not valid).
    """
    return serverFromString(DESCRIPTIONS_ONLY, description)


def check_client_description(description: str) -> IStreamClientEndpoint:
    """
    Parse a client endpoint description (loading any TLS files it names),
    without connecting.

    @raise Exception: whatever the parser raises (many kinds; all mean the
        description is not valid).
    """
    return clientFromString(DESCRIPTIONS_ONLY, description)
