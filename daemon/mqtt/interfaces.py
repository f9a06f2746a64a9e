"""
The seam between plantd and an MQTT broker connection.

The broker client (L{daemon.mqtt.client}) runs paho-mqtt on its own network
thread and hands everything to the reactor; publish actions and subscribe
triggers only see L{IBrokerClient} and L{Message}, so they are tested with a
fake broker, and the fake is checked against this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

#: The MQTT 5 user property that carries a published job's id, so that a
#: subscriber can drop a repeat of a message it has already acted on.
ID_PROPERTY = "plantd-id"


class BrokerUnavailable(Exception):
    """
    The broker connection is down (or went down before the broker
    acknowledged): the publish did not happen, or is not known to have.
    C{str()} is one line for logs and C{[error]}.
    """


@dataclass(frozen=True, slots=True)
class Message:
    """
    One message the broker delivered to a subscription.

    @ivar topic: the topic it was published to.
    @ivar payload: its bytes.
    @ivar qos: 0 or 1.
    @ivar retain: the broker's retained copy.
    @ivar duplicate: the broker's DUP flag (a redelivery it knows of).
    @ivar properties: MQTT 5 user properties (empty under 3.1.1).
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    duplicate: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def message_id(self) -> str | None:
        """
        The publisher's job id (L{ID_PROPERTY}), or None.
        """
        return self.properties.get(ID_PROPERTY)


#: What a subscription calls for each message, on the reactor thread.  A
#: Deferred (or None, for done at once) that fires when the message's
#: actions have succeeded: only then is the broker's PUBACK sent.  A failure
#: sends no PUBACK, so the broker delivers the message again (QoS 1).
MessageHandler = Callable[[Message], "Deferred[None] | None"]


class IBrokerClient(Interface):
    """
    One connection to one broker (``[broker:NAME]``), kept up for as long as
    the daemon runs.  Every method is called on the reactor thread, and
    every Deferred fires on it.
    """

    name = Attribute("The broker section's name (``line1`` for ``[broker:line1]``).")
    connected = Attribute("True while a session with the broker is up.")

    def publish(
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        properties: Mapping[str, str],
    ) -> Deferred[None]:
        """
        Publish one message.  QoS 1: fires once the broker's PUBACK arrives;
        QoS 0: once handed to the network.  Fails with L{BrokerUnavailable}
        when the broker is not connected, or the session ends before the
        PUBACK (the caller retries; the outbox keeps the job).
        """

    def subscribe(topic_filter: str, qos: int, handler: MessageHandler) -> None:
        """
        Deliver every message matching C{topic_filter} (``+``/``#``) to
        C{handler}, for this and every later session (re-subscribed on
        reconnect).  The PUBACK of a QoS 1 message is sent only once the
        handler's Deferred has succeeded.
        """
