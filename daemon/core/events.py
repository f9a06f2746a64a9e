"""
The one catalogue of event variables: which names each kind of trigger sets.

Config checking uses it to refuse a template naming a variable nothing
defines; the triggers use the same constants when they build an event.  Each
catalogue maps a name to its one-line meaning (the README's tables say the
same).  Variables from C{[variables]}, a server's parse rule and an action's
C{save_reply} come on top and are not listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# -- server trigger events ([server:NAME], one per message)

DATA = "data"
PEER_HOST = "peer_host"
PEER_PORT = "peer_port"
PEER_CERT = "peer_cert"
TRIGGER = "trigger"
SEQ = "seq"
TIMESTAMP = "timestamp"

#: Set only for a server's C{error_reply}: why the message failed.
ERROR = "error"

# -- reader badge events ([reader:NAME], one per $SCRDR badge)

TAG_ID = "tag_id"
RSSI = "rssi"
INTERFACE = "interface"
PROTOCOL = "protocol"
TEMPLATE = "template"
MOVE = "move"
TAG_DATA = "tag_data"
TAG_DETAILS = "tag_details"
READER = "reader"

#: The eight C{$SCRDR} fields, in the order the reader sends them.
SCRDR_FIELDS = (
    INTERFACE,
    PROTOCOL,
    TEMPLATE,
    RSSI,
    TAG_ID,
    MOVE,
    TAG_DATA,
    TAG_DETAILS,
)

# -- reader connection-state events (on_connect / on_disconnect)

STATE = "state"
PEER = "peer"

#: What every server trigger event carries: name -> meaning.
SERVER_EVENT: Mapping[str, str] = MappingProxyType(
    {
        DATA: "the message, decoded with the trigger's encoding",
        PEER_HOST: "the client's address",
        PEER_PORT: "the client's port",
        PEER_CERT: "the subject of the client's certificate (CN=plc-7) on an "
        "ssl: listener with tls_client_ca; empty otherwise",
        TRIGGER: "the trigger's NAME from [server:NAME]",
        SEQ: "the message's number on its connection, from 1",
        TIMESTAMP: "when the message arrived, ISO 8601 local time",
    }
)

#: What a server's C{error_reply} template may use on top of L{SERVER_EVENT}.
SERVER_ERROR: Mapping[str, str] = MappingProxyType(
    {ERROR: "why parsing or an action failed"}
)

#: What every reader badge event carries: the eight C{$SCRDR} fields, the
#: reader's name and the time.
READER_EVENT: Mapping[str, str] = MappingProxyType(
    {
        INTERFACE: "the reader interface the badge came through ($SCRDR field 1)",
        PROTOCOL: "the card protocol ($SCRDR field 2)",
        TEMPLATE: "the reader template that matched ($SCRDR field 3)",
        RSSI: "the signal strength ($SCRDR field 4)",
        TAG_ID: "the badge's id, hex ($SCRDR field 5)",
        MOVE: "the movement: '', I, R or IR ($SCRDR field 6)",
        TAG_DATA: "data read from the badge ($SCRDR field 7)",
        TAG_DETAILS: "further badge details ($SCRDR field 8)",
        READER: "the reader's NAME from [reader:NAME]",
        TIMESTAMP: "when the badge arrived, ISO 8601 local time",
    }
)

#: What a reader's C{on_connect} / C{on_disconnect} events carry.
READER_STATE: Mapping[str, str] = MappingProxyType(
    {
        READER: "the reader's NAME from [reader:NAME]",
        TIMESTAMP: "when the state changed, ISO 8601 local time",
        STATE: "connected or disconnected",
        PEER: "the reader's address, as the logs show it",
    }
)

# -- subscribe trigger events ([subscribe:NAME], one per broker message)

TOPIC = "topic"

#: What every subscribe trigger event carries (a parse rule adds its names).
SUBSCRIBE_EVENT: Mapping[str, str] = MappingProxyType(
    {
        DATA: "the message's payload, decoded with the trigger's encoding",
        TOPIC: "the topic it was published to (plant/line1/scan)",
        TRIGGER: "the trigger's NAME from [subscribe:NAME]",
        TIMESTAMP: "when the message arrived, ISO 8601 local time",
    }
)

#: The names alone, for checking templates.
SERVER_EVENT_VARIABLES = frozenset(SERVER_EVENT)
SERVER_ERROR_VARIABLES = frozenset(SERVER_ERROR)
READER_EVENT_VARIABLES = frozenset(READER_EVENT)
READER_STATE_VARIABLES = frozenset(READER_STATE)
SUBSCRIBE_EVENT_VARIABLES = frozenset(SUBSCRIBE_EVENT)
