"""The names of what a probe times: its two legs and every phase, in the order a round trip goes.

Phase names are metric label values (``phase_duration_seconds{phase}``), so the set is fixed here
and nowhere else; a phase's leg is the part of its name before the first underscore.
"""

from __future__ import annotations

from enum import StrEnum


class Leg(StrEnum):
    SMTP = "smtp"
    MAILBOX = "mailbox"


class Phase(StrEnum):
    SMTP_OAUTH2 = "smtp_oauth2"  # the access token: from the cache, the token endpoint or token_file
    SMTP_DNS = "smtp_dns"
    SMTP_CONNECT = "smtp_connect"
    SMTP_TLS = "smtp_tls"  # the implicit TLS handshake, or STARTTLS and its handshake
    SMTP_GREETING = "smtp_greeting"  # banner and EHLO (again after STARTTLS)
    SMTP_AUTH = "smtp_auth"
    SMTP_SUBMIT = "smtp_submit"  # MAIL, RCPT, DATA
    MAILBOX_OAUTH2 = "mailbox_oauth2"
    MAILBOX_DNS = "mailbox_dns"
    MAILBOX_CONNECT = "mailbox_connect"
    MAILBOX_TLS = "mailbox_tls"
    MAILBOX_LOGIN = "mailbox_login"  # greeting, login, SELECT
    MAILBOX_SEARCH = "mailbox_search"  # the look that found the letter (or the last one)
    MAILBOX_HEADERS = "mailbox_headers"  # the found letter's header block: where and how it arrived
    MAILBOX_DELETE = "mailbox_delete"
    MAILBOX_SWEEP = "mailbox_sweep"  # late letters and leftovers, never inside delivery time

    @property
    def leg(self) -> Leg:
        return Leg(self.value.split("_", 1)[0])

    @property
    def is_dns(self) -> bool:
        return self in DNS_PHASE.values()


DNS_PHASE = {Leg.SMTP: Phase.SMTP_DNS, Leg.MAILBOX: Phase.MAILBOX_DNS}
CONNECT_PHASE = {Leg.SMTP: Phase.SMTP_CONNECT, Leg.MAILBOX: Phase.MAILBOX_CONNECT}
OAUTH2_PHASE = {Leg.SMTP: Phase.SMTP_OAUTH2, Leg.MAILBOX: Phase.MAILBOX_OAUTH2}
