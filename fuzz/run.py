"""
``python -m fuzz.run`` (``make fuzz``): the parser properties under the
C{fuzz} hypothesis profile, then the network fuzzer against a real daemon;
prints a summary and exits 1 when any property or rule was violated.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import unittest
from typing import Any

from hypothesis import settings

from fuzz import FUZZ_EXAMPLES
from fuzz.proc import mib


def run_properties(examples: int) -> tuple[bool, dict[str, int], float]:
    """
    Every property in L{fuzz.test_properties} with C{examples} examples.
    """
    settings.register_profile(
        "fuzz", settings.get_profile("fuzz"), max_examples=examples
    )
    settings.load_profile("fuzz")
    from fuzz import test_properties

    suite = unittest.defaultTestLoader.loadTestsFromModule(test_properties)
    started = time.monotonic()
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    return (
        result.wasSuccessful(),
        dict(test_properties.EXAMPLES),
        time.monotonic() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__)
    parser.add_argument(
        "--examples",
        type=int,
        default=FUZZ_EXAMPLES,
        help="examples per property (FUZZ_EXAMPLES, default %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("FUZZ_SECONDS", "90")),
        help="network fuzzing time (FUZZ_SECONDS, default %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=int(os.environ.get("FUZZ_SEED", str(int(time.time())))),
        help="seed of the network fuzzer (FUZZ_SEED; default: the time)",
    )
    parser.add_argument("--no-properties", action="store_true")
    parser.add_argument("--no-network", action="store_true")
    args = parser.parse_args(argv)
    ok = True
    if not args.no_properties:
        print(f"== properties: {args.examples} examples each")
        passed, examples, took = run_properties(args.examples)
        ok &= passed
        print(f"\n== properties: {'passed' if passed else 'FAILED'} in {took:.0f} s")
        for name, n in sorted(examples.items()):
            print(f"   {n:8d}  {name}")
        print(f"   {sum(examples.values()):8d}  examples in all")
    if not args.no_network:
        print(f"\n== network: {args.seconds:.0f} s, seed {args.seed}")
        with tempfile.TemporaryDirectory(prefix="plantd-fuzz-") as work:
            from fuzz.net import fuzz_network

            summary = fuzz_network(work, args.seconds, args.seed)
            _print_network(summary)
            if summary["violations"]:
                ok = False
                keep = os.path.join(
                    tempfile.gettempdir(), f"plantd-fuzz-{args.seed}.log"
                )
                with open(summary["log"], "rb") as src, open(keep, "wb") as dst:
                    dst.write(src.read())
                print(f"\n   the daemon's log is kept in {keep}")
    print(f"\n== fuzz: {'OK' if ok else 'VIOLATIONS'}")
    return 0 if ok else 1


def _print_network(summary: dict[str, Any]) -> None:
    counters = summary.get("counters", {})
    print(f"   {'target':<12}{'conns':>8}{'bytes sent':>12}  counters")
    for name, conns in sorted(summary["connections"].items()):
        sent = summary["bytes_sent"].get(name, 0)
        c = counters.get("server", {}).get(name)
        shown = (
            ", ".join(
                f"{k} {c[k]}"
                for k in (
                    "connections",
                    "rejected",
                    "frames",
                    "errors",
                    "oversized",
                    "parse_errors",
                    "decode_errors",
                    "idle_timeouts",
                    "tls_refused",
                    "discarded_bytes",
                )
                if c.get(k)
            )
            if c
            else "(status page)"
        )
        print(f"   {name:<12}{conns:>8}{sent:>12}  {shown}")
    reader = summary["reader"]
    r = counters.get("reader", {}).get("fake", {})
    print(
        f"   {'reader':<12}{reader['sessions']:>8}{reader['bytes_sent']:>12}  "
        + ", ".join(
            f"{k} {r.get(k)}"
            for k in (
                "sessions",
                "messages",
                "badges",
                "greetings",
                "protocol_errors",
                "oversized",
                "commands_sent",
            )
        )
    )
    print(f"   reader lines sent by kind: {reader['lines']}")
    total_conns = sum(summary["connections"].values()) + reader["sessions"]
    total_bytes = sum(summary["bytes_sent"].values()) + reader["bytes_sent"]
    print(f"   in all: {total_conns} connections, {total_bytes} bytes")
    held = summary.get("held")
    if held:
        print(
            f"   memory: {held['held']} held connections with a partial frame: "
            f"{held['per_connection'] / 1024:.1f} KiB each"
        )
    if "rss_start" in summary:
        print(
            f"   RSS: after start-up {mib(summary['rss_start'])}, peak "
            f"{mib(summary['rss_peak'])}, end {mib(summary['rss_end'])}; "
            f"fds at the end {summary['fds']}"
        )
    for v in summary["violations"]:
        print(f"   VIOLATION: {v}")


if __name__ == "__main__":
    sys.exit(main())
