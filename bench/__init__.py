"""make bench: throughput and latency figures; not part of the installed package."""
