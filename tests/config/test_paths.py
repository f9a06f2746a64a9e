"""
Relative paths in the INI file are relative to the file's directory.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from daemon.config import ConfigError, config_from_string, read_config


class RelativePathTests(SynchronousTestCase):
    """
    C{state_dir}, C{allow_list} and the TLS files resolve against the
    directory of the file that names them, not the working directory.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.directory, "tls"))
        for name in ("badges.txt", "tls/ca.pem"):
            with open(os.path.join(self.directory, name), "w") as f:
                f.write("0102030405060708\n" if name == "badges.txt" else "x\n")
        self.path = os.path.join(self.directory, "plantd.ini")
        with open(self.path, "w") as f:
            f.write(
                "[plantd]\nstate_dir = state\n"
                "[reader:door]\nconnect = tcp:host=127.0.0.1:port=4000\n"
                "allow_list = badges.txt\n"
                "[send:p]\ndestination = 127.0.0.1:9100\ndata = x\n"
                "tls = yes\ntls_ca = tls/ca.pem\n"
            )
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir("/")

    def test_relative_to_the_file(self) -> None:
        """
        Read from another working directory, the paths name the files
        beside the INI file.
        """
        config = read_config(self.path)
        self.assertEqual(config.daemon.state_dir, os.path.join(self.directory, "state"))
        self.assertEqual(
            config.readers[0].allow_list, os.path.join(self.directory, "badges.txt")
        )
        self.assertEqual(
            config.sends[0].tls.ca, os.path.join(self.directory, "tls", "ca.pem")
        )

    def test_absolute_unchanged(self) -> None:
        """
        An absolute path stays as written.
        """
        with open(self.path, "w") as f:
            f.write("[plantd]\nstate_dir = /var/lib/plantd\n")
        self.assertEqual(read_config(self.path).daemon.state_dir, "/var/lib/plantd")

    def test_missing_names_both(self) -> None:
        """
        A missing file is reported as written and as resolved.
        """
        with open(self.path, "w") as f:
            f.write(
                "[reader:door]\nconnect = tcp:host=127.0.0.1:port=4000\n"
                "allow_list = nothere.txt\n"
            )
        e = self.assertRaises(ConfigError, read_config, self.path)
        self.assertIn(
            f"allow_list: cannot read file 'nothere.txt' "
            f"({os.path.join(self.directory, 'nothere.txt')})",
            str(e),
        )

    def test_from_string_keeps_cwd(self) -> None:
        """
        Text without a file keeps paths relative to the working directory.
        """
        config = config_from_string("[plantd]\nstate_dir = state\n")
        self.assertEqual(config.daemon.state_dir, "state")
