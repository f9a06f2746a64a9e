"""
The reload plan (L{daemon.reload.diff}): pure, from two configurations.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import config_from_string
from daemon.reload import Plan, SectionChange, diff, running_config

BASE = """
[plantd]
state_dir = /tmp/plantd-reload-test
log_level = info

[variables]
printer = 127.0.0.1:9100
site = north

[server:orders]
listen = tcp:9200:interface=127.0.0.1
actions = label

[send:label]
destination = [printer]
data = [data]
queue = durable

[reader:door]
connect = tcp:host=127.0.0.1:port=4000
reply = accept
"""


def edited(*pairs: tuple[str, str]) -> str:
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new)
    return text


class DiffTests(SynchronousTestCase):
    """
    L{diff} names what was added, removed and changed, with the keys.
    """

    def test_nothing_changed(self) -> None:
        """
        The same file twice gives an empty plan and "nothing changed".
        """
        plan = diff(config_from_string(BASE), config_from_string(BASE))
        self.assertEqual(plan, Plan())
        self.assertEqual(plan.describe(), "reload: nothing changed")

    def test_added_changed_removed(self) -> None:
        """
        The issue's example line: an added server, a send action whose
        destination changed, a removed reader.
        """
        new = edited(
            (
                "[reader:door]\nconnect = tcp:host=127.0.0.1:port=4000\nreply = accept\n",
                "",
            ),
            ("destination = [printer]", "destination = 127.0.0.1:9101"),
        )
        new += "\n[server:extra]\nlisten = tcp:9300:interface=127.0.0.1\n"
        plan = diff(config_from_string(BASE), config_from_string(new))
        self.assertEqual(plan.added, ("server:extra",))
        self.assertEqual(plan.removed, ("reader:door",))
        self.assertEqual(
            plan.changed, (SectionChange("send", "label", ("destination",)),)
        )
        self.assertEqual(
            plan.describe(),
            "reload: +server:extra, ~send:label (destination), -reader:door",
        )

    def test_nested_keys_named_as_in_the_file(self) -> None:
        """
        A change inside a nested object (the outbox, the retry) is named by
        its INI key.
        """
        new = edited(
            ("queue = durable", "queue = durable\nmax_jobs = 5\nretry_max = 9")
        )
        plan = diff(config_from_string(BASE), config_from_string(new))
        self.assertEqual(plan.changed[0].keys, ("retry_max", "max_jobs"))

    def test_server_keys(self) -> None:
        """
        A server trigger's changed keys, C{listen} among them when it
        changed; C{reply} for the reply template.
        """
        new = edited(
            ("listen = tcp:9200", "listen = tcp:9201"),
            ("actions = label", "actions = label\nreply = ok [data]"),
        )
        plan = diff(config_from_string(BASE), config_from_string(new))
        self.assertEqual(
            plan.changed, (SectionChange("server", "orders", ("listen", "reply")),)
        )

    def test_variables(self) -> None:
        """
        Added, removed and changed variables are listed by name.
        """
        new = edited(("site = north", "line = 3"), ("9100\n", "9101\n"))
        plan = diff(config_from_string(BASE), config_from_string(new))
        self.assertEqual(plan.variables, ("printer", "line", "site"))
        self.assertEqual(plan.changed, ())
        self.assertEqual(plan.describe(), "reload: ~variables (printer, line, site)")

    def test_daemon_keys(self) -> None:
        """
        C{log_level} reloads; C{state_dir} needs a restart, and the line
        says so.
        """
        new = edited(
            ("log_level = info", "log_level = debug"),
            ("state_dir = /tmp/plantd-reload-test", "state_dir = /tmp/elsewhere"),
        )
        plan = diff(config_from_string(BASE), config_from_string(new))
        self.assertEqual(plan.daemon, ("state_dir", "log_level"))
        self.assertEqual(plan.restart_needed, ("state_dir",))
        self.assertEqual(
            plan.describe(),
            "reload: ~plantd (state_dir: needs a restart, log_level)",
        )

    def test_running_config_keeps_restart_keys(self) -> None:
        """
        After a reload the running configuration keeps the old
        C{state_dir} (so the next reload still reports it) and takes the
        new log level.
        """
        old = config_from_string(BASE)
        new = config_from_string(
            edited(
                ("log_level = info", "log_level = warn"),
                ("state_dir = /tmp/plantd-reload-test", "state_dir = /tmp/elsewhere"),
            )
        )
        running = running_config(old, new)
        self.assertEqual(running.daemon.state_dir, old.daemon.state_dir)
        self.assertEqual(running.daemon.log_level, "warn")
        self.assertEqual(diff(running, new).restart_needed, ("state_dir",))
