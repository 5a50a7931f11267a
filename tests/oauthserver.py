"""An OAuth2 token and introspection server for the tests, over HTTPS on loopback (the rig's CA).

The rig runs it as a child process (``python -m tests.oauthserver``): the exporter fetches tokens
from ``/token`` (grants client_credentials and refresh_token, RFC 6749 4.4 and 6), and Dovecot's
oauth2 passdb checks every XOAUTH2/OAUTHBEARER login against ``/introspect`` (RFC 7662), so SMTP
(Postfix's SASL goes to that Dovecot), IMAP and POP3 all check tokens for real.

Tests drive it through ``/control/...`` with ``OAuthControl``: register a client (its secret, the
mailbox it may open, its tokens' lifetime and length, whether it rotates refresh tokens, or a way to
misbehave), mint tokens (for token_file), revoke or expire them, and read how many token requests
each client made, so caching and refresh are asserted by counts, never by time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import ssl
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

MODES = ("ok", "refuse", "garbage", "hang", "huge", "no_token")


@dataclass
class Client:
    secret: str | None
    user: str  # the one mailbox this client's tokens open (its service principal's mailbox permission)
    lifetime: int = 3600  # expires_in of its tokens
    token_length: int = 40
    rotate: bool = False  # answer every refresh_token grant with a new refresh token (the old one dies)
    mode: str = "ok"  # how /token answers: one of MODES


@dataclass
class Issued:
    user: str
    client_id: str
    expires: float  # Unix time
    revoked: bool = False


@dataclass
class State:
    clients: dict[str, Client] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh token -> client id
    tokens: dict[str, Issued] = field(default_factory=dict)
    token_requests: Counter[str] = field(default_factory=Counter)  # by client id
    grants: dict[str, list[str]] = field(default_factory=dict)  # client id -> grant types, in order
    introspections: Counter[str] = field(default_factory=Counter)  # by the token's user ("?" if unknown)

    def mint(self, client_id: str, user: str, lifetime: float, length: int = 40) -> str:
        token = secrets.token_urlsafe(length)[:length]
        self.tokens[token] = Issued(user, client_id, time.time() + lifetime)
        return token

    def active(self, token: str) -> Issued | None:
        issued = self.tokens.get(token)
        if issued is None or issued.revoked or issued.expires <= time.time():
            return None
        return issued


def _refused(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


async def token(request: web.Request) -> web.StreamResponse:
    state: State = request.app["state"]
    form = await request.post()
    client_id = str(form.get("client_id", ""))
    client = state.clients.get(client_id)
    state.token_requests[client_id] += 1
    state.grants.setdefault(client_id, []).append(str(form.get("grant_type", "")))
    if client is None or (client.secret is not None and form.get("client_secret") != client.secret):
        return _refused("invalid_client", "AADSTS7000215: Invalid client secret provided.", 401)
    if client.mode != "ok":
        return await _misbehave(request, client.mode)
    answer: dict[str, Any] = {"token_type": "Bearer", "expires_in": client.lifetime}
    grant = form.get("grant_type")
    if grant == "refresh_token":
        refresh = str(form.get("refresh_token", ""))
        if state.refresh_tokens.get(refresh) != client_id:
            return _refused("invalid_grant", "AADSTS70000: The refresh token is invalid or has been revoked.")
        if client.rotate:
            del state.refresh_tokens[refresh]
            answer["refresh_token"] = new_refresh_token(state, client_id)
    elif grant != "client_credentials":
        return _refused("unsupported_grant_type", f"grant {grant!r} is not supported here")
    answer["access_token"] = state.mint(client_id, client.user, client.lifetime, client.token_length)
    return web.json_response(answer)


async def _misbehave(request: web.Request, mode: str) -> web.StreamResponse:
    if mode == "refuse":
        return _refused("unauthorized_client", "The client is not authorized to request this token.")
    if mode == "garbage":
        return web.Response(text="<html>502 Bad Gateway</html>", content_type="text/html")
    if mode == "huge":
        return web.Response(text='{"access_token": "' + "x" * (2 * 1024 * 1024) + '"}', content_type="application/json")
    if mode == "no_token":
        return web.json_response({"token_type": "Bearer", "expires_in": 3600})
    await asyncio.Event().wait()  # hang: answer never (until the server stops)
    raise AssertionError("unreachable")


def new_refresh_token(state: State, client_id: str) -> str:
    refresh = "rt-" + secrets.token_urlsafe(24)
    state.refresh_tokens[refresh] = client_id
    return refresh


async def introspect(request: web.Request) -> web.Response:
    """RFC 7662, as Dovecot's ``introspection_mode = post`` asks it: ``token=...`` in a form."""
    state: State = request.app["state"]
    form = await request.post()
    issued = state.active(str(form.get("token", "")))
    state.introspections[issued.user if issued else "?"] += 1
    if issued is None:
        return web.json_response({"active": False})
    return web.json_response({"active": True, "email": issued.user, "client_id": issued.client_id})


# --- control, for the tests --------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    body = await request.json()
    client_id = body.pop("client_id")
    state.clients[client_id] = Client(**body)
    return web.json_response({})


async def issue_refresh_token(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"refresh_token": new_refresh_token(request.app["state"], body["client_id"])})


async def mint(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    body = await request.json()
    access = state.mint(body.get("client_id", "minted"), body["user"], float(body["lifetime"]))
    return web.json_response({"access_token": access})


async def revoke(request: web.Request) -> web.Response:
    """Revoke (or with ``expire``, let expire) every token of a client, or one token."""
    state: State = request.app["state"]
    body = await request.json()
    for value, issued in state.tokens.items():
        if value == body.get("token") or issued.client_id == body.get("client_id"):
            if body.get("expire"):
                issued.expires = time.time() - 1
            else:
                issued.revoked = True
    return web.json_response({})


async def stats(request: web.Request) -> web.Response:
    state: State = request.app["state"]
    client_id = request.match_info["client_id"]
    client = state.clients.get(client_id)
    return web.json_response(
        {
            "token_requests": state.token_requests[client_id],
            "grants": state.grants.get(client_id, []),
            "introspections": state.introspections[client.user] if client else 0,
            "refresh_tokens": [rt for rt, owner in state.refresh_tokens.items() if owner == client_id],
            "tokens": [value for value, issued in state.tokens.items() if issued.client_id == client_id],
        }
    )


def make_app() -> web.Application:
    app = web.Application()
    app["state"] = State()
    app.router.add_post("/token", token)
    app.router.add_post("/introspect", introspect)
    app.router.add_post("/control/clients", register)
    app.router.add_post("/control/refresh-tokens", issue_refresh_token)
    app.router.add_post("/control/tokens", mint)
    app.router.add_post("/control/revoke", revoke)
    app.router.add_get("/control/stats/{client_id}", stats)
    return app


# --- the tests' side ---------------------------------------------------------------------------


class OAuthControl:
    """The tests' handle on the running server (synchronous: a few small loopback requests)."""

    def __init__(self, port: int, ca_file: str) -> None:
        self.port = port
        self.base = f"https://localhost:{port}"
        self.token_url = f"{self.base}/token"
        self._context = ssl.create_default_context(cafile=ca_file)

    def _call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30, context=self._context) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def register(self, client_id: str, client: Client) -> None:
        self._call("/control/clients", {"client_id": client_id, **asdict(client)})

    def refresh_token(self, client_id: str) -> str:
        return str(self._call("/control/refresh-tokens", {"client_id": client_id})["refresh_token"])

    def mint(self, user: str, lifetime: float = 3600, client_id: str = "minted") -> str:
        return str(
            self._call("/control/tokens", {"user": user, "lifetime": lifetime, "client_id": client_id})["access_token"]
        )

    def revoke(self, client_id: str, expire: bool = False) -> None:
        self._call("/control/revoke", {"client_id": client_id, "expire": expire})

    def revoke_token(self, token: str, expire: bool = False) -> None:
        self._call("/control/revoke", {"token": token, "expire": expire})

    def stats(self, client_id: str) -> dict[str, Any]:
        return self._call(f"/control/stats/{client_id}")


async def _serve(port: int, cert: str, key: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(make_app(), shutdown_timeout=1.0)
    await runner.setup()
    for host in ("127.0.0.1", "::1"):
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.oauthserver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
