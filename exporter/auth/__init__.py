"""Logging in with OAuth2: SASL mechanisms, tokens from the endpoint, and what a leg logs in with."""
