"""
Cross-section checks of a parsed configuration: actions named by triggers
exist, and templates use only variables something defines.
"""

from __future__ import annotations

from daemon.config.model import Config, ConfigError, PublishConfig
from daemon.core.events import (
    READER_EVENT_VARIABLES,
    READER_STATE_VARIABLES,
    SERVER_ERROR_VARIABLES,
    SERVER_EVENT_VARIABLES,
    SUBSCRIBE_EVENT_VARIABLES,
)
from daemon.core.template import Template


def check_references(config: Config) -> None:
    """
    Check what spans sections: every action a trigger names exists and
    fits the trigger, and every variable a template uses is defined by the
    event (L{daemon.core.events}), C{[variables]}, the parse rule or an
    earlier action's C{save_reply}.

    @raise ConfigError: naming the section and key of the first mistake.
    """
    globals_ = frozenset(config.variables)
    for server in config.servers:
        section = f"server:{server.name}"
        event = globals_ | SERVER_EVENT_VARIABLES
        if server.parse is not None:
            parsed = server.parse.variables()
            event |= parsed if parsed is not None else frozenset()
        open_names = server.parse is not None and server.parse.variables() is None
        defined = _check_chain(
            config, section, "actions", server.actions, event, open_names, sender=True
        )
        for key, template, extra in (
            ("reply", server.reply_template, frozenset()),
            ("error_reply", server.error_reply, SERVER_ERROR_VARIABLES),
        ):
            if template is not None:
                _check_template(
                    config.path, section, key, template, defined | extra, open_names
                )
    for reader in config.readers:
        section = f"reader:{reader.name}"
        defined = _check_chain(
            config,
            section,
            "actions",
            reader.actions,
            globals_ | READER_EVENT_VARIABLES,
            False,
            sender=False,
        )
        if reader.accept_if is not None and reader.accept_if.variable not in defined:
            raise ConfigError(
                config.path,
                section,
                "accept_if",
                f"variable [{reader.accept_if.variable}] is not defined by the "
                f"event, [variables] or an earlier action's save_reply",
            )
        for key in ("on_connect", "on_disconnect"):
            _check_chain(
                config,
                section,
                key,
                getattr(reader, key),
                globals_ | READER_STATE_VARIABLES,
                False,
                sender=False,
            )
    brokers = {b.name for b in config.brokers}
    for sub in config.subscribes:
        section = f"subscribe:{sub.name}"
        if sub.broker not in brokers:
            known = ", ".join(sorted(brokers)) or "none defined"
            raise ConfigError(
                config.path,
                section,
                "broker",
                f"no [broker:{sub.broker}] section (brokers: {known})",
            )
        event = globals_ | SUBSCRIBE_EVENT_VARIABLES
        parsed = sub.parse.variables() if sub.parse is not None else frozenset()
        _check_chain(
            config,
            section,
            "actions",
            sub.actions,
            event | (parsed or frozenset()),
            sub.parse is not None and parsed is None,
            sender=False,
        )


def _check_chain(
    config: Config,
    section: str,
    key: str,
    names: tuple[str, ...],
    defined: frozenset[str],
    open_names: bool,
    sender: bool,
) -> frozenset[str]:
    """
    Check an ordered action list: every action exists, and every variable
    each one uses is defined by the event, [variables] or an earlier
    action.  Returns what is defined after the last action.
    """
    publishes = getattr(config, "publishes", {})
    for name in names:
        publish = publishes.get(name)
        if publish is not None:
            _check_publish(config, section, publish, defined, open_names)
            continue
        action = config.actions.get(name)
        if action is None:
            known = ", ".join(sorted([*config.actions, *publishes])) or "none defined"
            raise ConfigError(
                config.path,
                section,
                key,
                f"no action named {name!r} (actions: {known})",
            )
        if action.reply_to_sender and not sender:
            raise ConfigError(
                config.path,
                section,
                key,
                f"action {name!r} has reply_to_sender = yes, but this trigger has "
                f"no sender socket to reply to",
            )
        where = f"send:{name}"
        for k, template in (("data", action.data), ("destination", action.destination)):
            if template is not None:
                missing = template.undefined(defined)
                if missing and not open_names:
                    raise ConfigError(
                        config.path,
                        where,
                        k,
                        f"variable [{missing[0]}] is not defined for [{section}] "
                        f"(by the event, [variables] or an earlier action's save_reply)",
                    )
        defined = defined | action.defines
    return defined


def _check_publish(
    config: Config,
    section: str,
    publish: PublishConfig,
    defined: frozenset[str],
    open_names: bool,
) -> None:
    """
    The variables of a publish action's topic and payload templates.
    """
    for key, template in (("topic", publish.topic), ("payload", publish.payload)):
        if template is None:
            continue
        missing = template.undefined(defined)
        if missing and not open_names:
            raise ConfigError(
                config.path,
                f"publish:{publish.name}",
                key,
                f"variable [{missing[0]}] is not defined for [{section}] "
                f"(by the event, [variables] or an earlier action's save_reply)",
            )


def _check_template(
    path: str,
    section: str,
    key: str,
    template: Template,
    defined: frozenset[str],
    open_names: bool,
) -> None:
    missing = template.undefined(defined)
    if missing and not open_names:
        raise ConfigError(
            path,
            section,
            key,
            f"variable [{missing[0]}] is not defined (by the event, [variables], "
            f"the parse rule or an action's save_reply)",
        )
