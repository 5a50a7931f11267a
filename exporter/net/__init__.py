"""The network under every leg: host name resolution (DNS modes), TCP connect, TLS."""
