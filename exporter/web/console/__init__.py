"""The operator console: overview, task pages, Probe now (see README, Operator console)."""
