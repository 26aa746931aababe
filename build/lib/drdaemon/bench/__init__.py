"""``drdaemon bench``: engine and daemon benchmarks that print figures (never asserted)."""
