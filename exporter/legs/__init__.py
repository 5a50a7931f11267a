"""The legs of a round trip: SMTP out, the mailbox (IMAP4 or POP3) in, behind one interface."""
