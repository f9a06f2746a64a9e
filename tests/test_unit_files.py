"""
The shipped systemd unit: its hardening score and ``systemd-analyze verify``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys

from twisted.trial.unittest import SkipTest, TestCase

from tests.support import ROOT, run

UNIT = os.path.join(ROOT, "etc", "plantd.service")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        raise SkipTest("systemd-analyze missing: apt-get install systemd")
    return path


class UnitTests(TestCase):
    """
    ``etc/plantd.service`` is a hardened ``Type=notify`` unit.
    """

    timeout = 60

    def test_directives(self) -> None:
        """
        The unit notifies, is watched, reloads with SIGHUP, runs as a
        dynamic user with a state directory.
        """
        with open(UNIT) as f:
            text = f.read()
        for line in (
            "Type=notify",
            "WatchdogSec=30",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "DynamicUser=yes",
            "StateDirectory=plantd",
        ):
            self.assertIn(f"\n{line}\n", text)

    async def test_security_score(self) -> None:
        """
        ``systemd-analyze security --offline=true`` rates it 2.0 or lower.
        """
        result = await run([systemd_analyze(), "security", "--offline=true", UNIT])
        text = result.out.decode()
        match = re.search(r"Overall exposure level for plantd.service: ([\d.]+)", text)
        assert match is not None, text + result.err.decode()
        self.assertLessEqual(float(match.group(1)), 2.0, text)

    async def test_verify(self) -> None:
        """
        ``systemd-analyze verify`` passes once its paths exist (here: the
        unit pointed at this virtualenv's twistd).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(UNIT) as f:
            text = f.read()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.path.exists(twistd):
            raise SkipTest(f"no twistd beside {sys.executable}")
        unit = os.path.join(directory, "plantd.service")
        with open(unit, "w") as f:
            f.write(text.replace("/opt/plantd/bin/twistd", twistd))
        result = await run([systemd_analyze(), "verify", unit])
        self.assertEqual(result.code, 0, result.err.decode())
