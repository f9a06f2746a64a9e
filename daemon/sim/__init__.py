"""Device simulators (printer, SpringCore reader, PLC) for tests and demos."""
