"""Per-task statistics and their Prometheus exposition."""
