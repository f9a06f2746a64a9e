"""plantd: a Twisted daemon that connects the machines of a plant floor over TCP."""
