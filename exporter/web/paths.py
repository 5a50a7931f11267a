"""Where the HTTP routes live (``--web.route-prefix``) and where links in pages point
(``--web.external-url``), as Prometheus and blackbox_exporter have them: behind a reverse proxy that
serves the exporter under ``/mail/``, either both are ``/mail`` (the proxy passes the path on) or the
routes stay at ``/`` and only the links say ``/mail`` (the proxy strips it)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Prefix:
    route: str = ""  # "" or "/a/b": no trailing slash
    external: str = ""  # the same, for links

    def at(self, path: str) -> str:
        """The route of ``path`` (which starts with /)."""
        return self.route + path

    def link(self, path: str) -> str:
        """A link to ``path`` as the browser must ask for it."""
        return self.external + path


def _clean(path: str, flag: str) -> str:
    if not path.startswith("/") or not path.isprintable() or any(c in path for c in " ?#%\\\"'<>"):
        raise ValueError(f"{flag} {path!r} must be a path starting with / (no spaces, quotes, ?, # or %)")
    return path.rstrip("/")


def parse_prefix(route_prefix: str | None, external_url: str | None) -> Prefix:
    """The prefixes from the two flags: the route prefix defaults to the external URL's path."""
    external = ""
    if external_url is not None:
        parts = urlsplit(external_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"--web.external-url {external_url!r} must be an absolute http(s) URL without ? or #")
        external = _clean(parts.path or "/", "--web.external-url")
    route = _clean(route_prefix, "--web.route-prefix") if route_prefix is not None else external
    return Prefix(route, external if external_url is not None else route)
