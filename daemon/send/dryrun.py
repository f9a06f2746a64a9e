"""
A dry run of a send action (``twistd plantd --config FILE --render NAME
--data MESSAGE``): what the action would send for one message, and where,
without sending anything.

It runs the real code on the message: the server trigger's C{parse} rule
(L{parse_frame}) and a real L{SendAction}'s L{SendAction.render} and
L{SendAction.destination}.  The action is built with an endpoint factory
that refuses to make endpoints and is never run, so no socket, link or
outbox is ever opened.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon.config import Config, SendConfig, ServerConfig
from daemon.core import events
from daemon.core.actions import ActionFailed, Event, timestamp
from daemon.core.codecs import AUTO, show_bytes
from daemon.send.action import SendAction
from daemon.send.destination import Destination
from daemon.server.parse import ParseError, parse_frame

#: The client a dry run pretends the message came from.
DRY_PEER_HOST = "127.0.0.1"
DRY_PEER_PORT = "0"


class DryRunError(Exception):
    """
    The dry run cannot render the action; C{str()} is one line saying why.
    """


@dataclass(frozen=True)
class Rendered:
    """
    What a send action would send for one message.

    @ivar where: a one-line description of where it would go.
    """

    action: SendConfig
    trigger: ServerConfig
    variables: Mapping[str, str]
    payload: bytes
    where: str


def _no_endpoints(destination: Destination) -> Any:
    raise AssertionError("a dry run makes no endpoint")


def _trigger(config: Config, action: str, name: str | None) -> ServerConfig:
    servers = {s.name: s for s in config.servers}
    if name is not None:
        server = servers.get(name)
        if server is None:
            known = ", ".join(servers) or "none"
            raise DryRunError(
                f"--trigger {name}: no [server:{name}] (servers: {known})"
            )
        if action not in server.actions:
            raise DryRunError(f"[server:{name}] does not run action {action}")
        return server
    for server in config.servers:
        if action in server.actions:
            return server
    raise DryRunError(
        f"no [server:...] trigger runs action {action}; a dry run takes a server"
        " trigger's message"
    )


def render(
    config: Config,
    action: str,
    data: str,
    trigger: str | None = None,
    extra: Mapping[str, str] | None = None,
    reactor: Any = None,
    now: float = 0.0,
) -> Rendered:
    """
    Run C{trigger}'s parse rule on the message C{data} and C{action}'s
    templates on the event, as the daemon would.

    @param trigger: the server trigger whose parse rule applies; by default
        the first one that runs C{action}.
    @param extra: variables to set on top (an earlier action's
        C{save_reply}, or to override C{peer_host}).
    @param reactor: passed to the action as its clock; never run.
    @raise DryRunError: when the action does not exist, the message does
        not parse, or a template names a variable without a value.
    """
    send = config.actions.get(action)
    if send is None:
        known = ", ".join(config.actions) or "none"
        raise DryRunError(f"no [send:{action}] action (actions: {known})")
    server = _trigger(config, action, trigger)
    variables = dict(config.variables)
    variables[events.PEER_HOST] = DRY_PEER_HOST
    variables[events.PEER_PORT] = DRY_PEER_PORT
    variables[events.PEER_CERT] = ""  # as from a client without a certificate
    variables[events.TRIGGER] = server.name
    variables[events.SEQ] = "1"
    variables[events.TIMESTAMP] = timestamp(now)
    variables[events.DATA] = data
    try:
        data.encode("utf-8" if server.encoding == AUTO else server.encoding)
    except UnicodeEncodeError as e:
        raise DryRunError(
            f"[server:{server.name}] encoding {server.encoding} cannot carry"
            f" {data[e.start]!r} at position {e.start} of the message"
        ) from None
    if server.parse is not None:
        try:
            variables.update(parse_frame(server.parse, data))
        except ParseError as e:
            raise DryRunError(f"[server:{server.name}] parse: {e}") from None
    variables.update(extra or {})
    sender = SendAction(send, reactor, endpoint_factory=_no_endpoints, path=config.path)
    event = Event(f"server:{server.name}", DRY_PEER_HOST, variables, [])
    try:
        payload = sender.render(event)
        if send.reply_to_sender:
            where = f"the sender, in [server:{server.name}]'s reply"
        else:
            where = f"{sender.destination(event)} (queue {send.queue.mode})"
    except ActionFailed as e:
        message = str(e)
        for earlier in server.actions[: server.actions.index(action)]:
            saved = config.actions[earlier].save_reply
            if saved and f"[{saved}]" in message:
                message += (
                    f" (the save_reply of [send:{earlier}], which a dry run"
                    f" does not run: give it with --var {saved}=VALUE)"
                )
        raise DryRunError(f"[send:{action}] {message}") from None
    return Rendered(send, server, variables, payload, where)


def dry_run(
    config: Config,
    action: str,
    data: str,
    trigger: str | None = None,
    extra: Mapping[str, str] | None = None,
    *,
    raw: bool = False,
) -> int:
    """
    ``--render``: print what C{action} would send for C{data} (the bytes
    escaped, the encoding, where), or with C{raw} only the bytes as they
    are; the exit status: 0, or 1 with one line on stderr.
    """
    try:
        rendered = render(config, action, data, trigger, extra, now=time.time())
    except DryRunError as e:
        sys.stderr.write(f"plantd: --render {action}: {e}\n")
        sys.stderr.flush()
        return 1
    if raw:
        sys.stdout.flush()
        sys.stdout.buffer.write(rendered.payload)
        sys.stdout.buffer.flush()
        return 0
    send = rendered.action
    parse = rendered.trigger.parse
    shown = " ".join(f"{k}={v!r}" for k, v in sorted(rendered.variables.items()))
    sys.stdout.write(
        f"[send:{send.name}] for a message to [server:{rendered.trigger.name}]"
        f" (parse {parse.kind if parse else 'none'}); nothing is sent\n"
        f"variables: {shown}\n"
        f"to: {rendered.where}\n"
        f"encoding: {send.encoding}\n"
        f"bytes: {len(rendered.payload)}\n"
        "---\n" + show_bytes(rendered.payload) + "\n---\n"
    )
    sys.stdout.flush()
    return 0
