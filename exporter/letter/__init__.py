"""The probe letter: its signed token, how it is written, how it is recognised, the signing key."""
