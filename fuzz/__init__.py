"""
``make fuzz``: the parser properties with many examples, then random and
broken bytes at a running daemon (not installed with the package).

The hypothesis profile comes from C{HYPOTHESIS_PROFILE}: C{fuzz} runs
C{FUZZ_EXAMPLES} examples per property (default 2000); anything else keeps
hypothesis' default (100), which is what C{make test} would use.
"""

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))

settings.register_profile(
    "fuzz",
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
