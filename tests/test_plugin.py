"""
The twistd plugin: discovered in the source tree, and shipped in the wheel
so that ``pip install .`` anywhere gives a working ``twistd plantd``.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
import zipfile

from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.plugin import getPlugins
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.support import ROOT, RunResult, run, twistd_command


class PluginDiscoveryTests(SynchronousTestCase):
    """
    The plugin as Twisted finds it.
    """

    def test_found(self) -> None:
        """
        getPlugins finds plantd and plantd-sim with real descriptions.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("plantd", makers)
        self.assertIn("plantd-sim", makers)
        self.assertIn("TCP", makers["plantd"].description)

    def test_no_init(self) -> None:
        """
        twisted/plugins has no __init__.py (one there breaks every other
        plugin on the machine).
        """
        self.assertFalse(
            os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py"))
        )


def run_isolated(argv: list[str], cwd: str | None = None) -> Deferred[RunResult]:
    """
    Run without trial's PYTHONPATH, which would put the source tree (and
    its editable install) in front of the environment under test.
    """
    return run(argv, cwd=cwd, isolated=True)


class WheelTests(TestCase):
    """
    ``pip install .`` into a fresh virtualenv, used outside the source tree.
    """

    timeout = 240

    async def test_installed_wheel(self) -> None:
        """
        The wheel carries the plugin (and no twisted/plugins/__init__.py);
        installed into a new virtualenv and run from another directory,
        ``twistd --help`` lists plantd and ``twistd -n plantd --config FILE
        --check-config`` works with the installed package.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        wheels = os.path.join(work, "wheels")
        result = await run_isolated(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                wheels,
                ROOT,
            ]
        )
        if result.code != 0:
            raise SkipTest(f"cannot build a wheel here: {result.err.decode()[-300:]}")
        [wheel] = glob.glob(os.path.join(wheels, "plantd-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/plantd_plugin.py", names)
        self.assertIn("twisted/plugins/plantd_sim_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("daemon/tap.py", names)

        venv = os.path.join(work, "venv")
        result = await run_isolated(
            [sys.executable, "-m", "venv", "--without-pip", venv]
        )
        self.assertEqual(result.code, 0, result.err)
        python = os.path.join(venv, "bin", "python")
        result = await run_isolated(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "--quiet",
                "--no-deps",
                wheel,
            ]
        )
        self.assertEqual(result.code, 0, result.err)
        # Dependencies come from this environment; the path line adds the
        # directory only, so this tree's editable-install .pth is not read.
        site = sysconfig.get_paths()["purelib"]
        result = await run_isolated(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        )
        target = result.out.decode().strip()
        with open(os.path.join(target, "zz_plantd_test_deps.pth"), "w") as f:
            f.write(site + "\n")

        elsewhere = os.path.join(work, "elsewhere")
        os.makedirs(elsewhere)
        config = os.path.join(elsewhere, "plantd.ini")
        with open(config, "w") as f:
            f.write("[server:a]\nlisten = tcp:0:interface=127.0.0.1\nreply = echo\n")
        result = await run_isolated(
            [python, "-c", "import daemon; print(daemon.__file__)"],
            cwd=elsewhere,
        )
        self.assertTrue(result.out.decode().startswith(venv), result.out + result.err)
        result = await run_isolated([*twistd_command(python), "--help"], cwd=elsewhere)
        self.assertIn(b"plantd", result.out)
        result = await run_isolated(
            [
                *twistd_command(python),
                "-n",
                "plantd",
                "--config",
                config,
                "--check-config",
            ],
            cwd=elsewhere,
        )
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(b"[server:a] listen tcp:0", result.out)
