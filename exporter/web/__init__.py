"""The HTTP side: /metrics, health, reload, the status page, and --web.config.file."""
