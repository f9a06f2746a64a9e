"""``make soak``: the daemon under steady mixed load (not installed with the package)."""
