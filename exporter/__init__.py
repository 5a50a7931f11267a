"""Mail round-trip exporter: sends a tagged test letter over SMTP and finds it again over IMAP4 or POP3."""

__version__ = "0.1.0"
