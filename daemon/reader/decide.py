"""
What a badge is answered with: the reader's C{reply}, C{allow_list} or
C{accept_if} rule, or no answer.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Literal

from twisted.internet.interfaces import IReactorTime

from daemon.config import ConfigError, ReaderConfig
from daemon.core.actions import Outcome
from daemon.reader.allowlist import AllowList, AllowListError
from daemon.reader.scrdr import CommandError, parse_reply_spec
from daemon.status.events import NO_EVENTS, IEventRecorder


class Verdict(enum.Enum):
    """
    What was decided for one badge.
    """

    ACCEPT = "accept"
    DENY = "deny"
    FIXED = "fixed"
    """The C{reply} command, the same for every badge."""
    NONE = "none"
    """No answer."""


Mode = Literal["none", "reply", "allow_list", "accept_if"]


class Decider:
    """
    Chooses the answer to a badge, from the reader's configuration.

    L{before} decides for the modes that do not wait for the actions
    (C{reply}, C{allow_list}, none); L{after} for C{accept_if}.
    """

    def __init__(
        self,
        config: ReaderConfig,
        clock: IReactorTime,
        section: str,
        events: IEventRecorder = NO_EVENTS,
    ) -> None:
        """
        @param events: where the allow list records its re-reads.
        @raise ConfigError: a command cannot be built, or the allow list
            cannot be read.
        """
        self.rule = config.accept_if
        self.allow_list: AllowList | None = None
        self.mode: Mode
        if config.reply is not None:
            self.mode = "reply"
        elif config.allow_list is not None:
            self.mode = "allow_list"
            try:
                self.allow_list = AllowList(config.allow_list, clock, section, events)
            except AllowListError as e:
                raise ConfigError(
                    config.allow_list, section, "allow_list", str(e)
                ) from None
        elif config.accept_if is not None:
            self.mode = "accept_if"
        else:
            self.mode = "none"

        def encode(key: str, spec: str) -> bytes:
            try:
                return parse_reply_spec(spec).encode(checksum=config.command_checksum)
            except CommandError as e:
                raise ConfigError(
                    "configuration", section, key, f"{spec!r}: {e}"
                ) from None

        self.fixed = encode("reply", config.reply) if config.reply else None
        self.accept = encode("accept_command", config.accept_command)
        self.deny = encode("deny_command", config.deny_command)

    @property
    def waits(self) -> bool:
        """
        Whether the answer depends on the actions' results.
        """
        return self.mode == "accept_if"

    def before(self, tag_id: str) -> tuple[Verdict, bytes | None]:
        """
        The answer when it does not depend on the actions.
        """
        if self.mode == "reply":
            return Verdict.FIXED, self.fixed
        if self.allow_list is not None:
            if tag_id in self.allow_list:
                return Verdict.ACCEPT, self.accept
            return Verdict.DENY, self.deny
        return Verdict.NONE, None

    def after(
        self, variables: Mapping[str, str], outcome: Outcome
    ) -> tuple[Verdict, bytes]:
        """
        The C{accept_if} answer once the actions are done: accept when the
        variable matches (C{re.search}), deny otherwise or when an action
        failed.
        """
        rule = self.rule
        assert rule is not None
        if outcome is None and rule.pattern.search(variables.get(rule.variable, "")):
            return Verdict.ACCEPT, self.accept
        return Verdict.DENY, self.deny


__all__ = ["Decider", "Mode", "Verdict"]
