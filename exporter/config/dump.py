"""The running config as YAML for ``GET /config``: the file's shape, every secret shown as <secret>.

Written from the loaded model, not from the file: it shows what is in force (defaults and derived
ports included), and a secret cannot leak from a place the model does not hold it.
"""

from __future__ import annotations

import yaml

from exporter.config.fields import join_host_port
from exporter.config.model import (
    Config,
    DeviceConfig,
    DNSConfig,
    IncomingConfig,
    Labels,
    OAuth2Config,
    Protocol,
    ServerConfig,
    SMTPConfig,
    TaskConfig,
    TLSOptions,
)

SECRET = "<secret>"

Tree = dict[str, object]


def dump_config(config: Config) -> str:
    tree = {"devices": [_device(device) for device in config.devices]}
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _device(device: DeviceConfig) -> Tree:
    return {
        "name": device.name,
        "interval": _seconds(device.interval),
        "dns": _dns(device.dns),
        "tasks": [_task(task) for task in device.tasks],
        **_labels(device.labels),
    }


def _dns(dns: DNSConfig) -> Tree:
    tree: Tree = {"mode": dns.mode.value}
    if dns.servers:
        tree["servers"] = [join_host_port(host, port) for host, port in dns.servers]
    if dns.hosts:
        tree["hosts"] = [{"address": host.address, "name": host.name} for host in dns.hosts]
    if dns.timeout is not None:
        tree["timeout"] = _seconds(dns.timeout)
    return tree


def _task(task: TaskConfig) -> Tree:
    tree: Tree = {
        "name": task.name,
        "destination": task.destination,
        "sender": task.sender,
        "smtp": _smtp(task.smtp),
        "incoming": _incoming(task.incoming),
        "completion_timeout": _seconds(task.completion_timeout),
        "email_timeout": _seconds(task.email_timeout),
        "max_in_flight": task.max_in_flight,
    }
    if task.dns_mode is not None:
        tree["dns_mode"] = task.dns_mode.value
    if task.spam_test is not None:
        tree["spam_test"] = task.spam_test.value
    return tree | _labels(task.labels)


def _labels(labels: Labels) -> Tree:
    return {"labels": dict(labels)} if labels else {}


def _smtp(smtp: SMTPConfig) -> Tree:
    if not smtp.mx:
        return _server(smtp) | {"helo_name": smtp.helo_name} | _keeping(smtp.persistent, smtp.fresh_login_every)
    tree: Tree = {"mx": True, "port": smtp.port, "security": smtp.security.value}
    return tree | _tls(smtp.tls) | {"helo_name": smtp.helo_name}


def _server(server: ServerConfig) -> Tree:
    tree: Tree = {"host": server.host, "port": server.port, "security": server.security.value}
    tree |= _tls(server.tls)
    if server.user is not None:
        tree["user"] = server.user
    if server.password is not None:
        tree["password"] = SECRET  # whichever source it came from
    if server.oauth2 is not None and server.mechanism is not None:
        tree["auth"] = server.mechanism.value
        tree["oauth2"] = _oauth2(server.oauth2)
    return tree


def _tls(tls: TLSOptions) -> Tree:
    tree: Tree = {}
    if tls.ca_file is not None:
        tree["ca_file"] = tls.ca_file
    if tls.insecure_skip_verify:
        tree["insecure_skip_verify"] = True
    return tree


def _oauth2(oauth2: OAuth2Config) -> Tree:
    if oauth2.token_file is not None:
        return {"token_file": oauth2.token_file}
    assert oauth2.grant is not None
    tree: Tree = {"token_url": oauth2.token_url, "grant": oauth2.grant.value, "client_id": oauth2.client_id}
    if oauth2.client_secret is not None:
        tree["client_secret"] = SECRET
    if oauth2.refresh_token_file is not None:  # the path, as the write-back needs it (not the token)
        tree["refresh_token_file"] = oauth2.refresh_token_file
        if oauth2.refresh_token_write_back:
            tree["refresh_token_write_back"] = True
    elif oauth2.refresh_token is not None:
        tree["refresh_token"] = SECRET
    if oauth2.scope is not None:
        tree["scope"] = oauth2.scope
    return tree | _tls(oauth2.tls)


def _incoming(incoming: IncomingConfig) -> Tree:
    return {
        "protocol": incoming.protocol.value,
        **_server(incoming.server),
        "mailbox": incoming.mailbox,
        "poll_interval": _seconds(incoming.poll_interval),
        **({"cleanup": incoming.cleanup.value} if incoming.cleanup is not None else {}),
        **(_junk(incoming) if incoming.protocol is Protocol.IMAP else {}),
        **({"authserv_ids": list(incoming.authserv_ids)} if incoming.authserv_ids else {}),
        **_keeping(incoming.persistent, incoming.fresh_login_every),
    }


def _keeping(persistent: bool, fresh_login_every: int) -> Tree:
    return {"persistent": True, "fresh_login_every": fresh_login_every} if persistent else {}


def _junk(incoming: IncomingConfig) -> Tree:
    return {"junk_folders": list(incoming.junk_folders), "junk_is_failure": incoming.junk_is_failure}


def _seconds(value: float) -> str:
    return f"{value:g}s"
