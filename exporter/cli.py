"""Command line: validate a config, run every task once with a readable report, or serve metrics."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter import assets, logs
from exporter.build import version_text
from exporter.config.fields import split_host_port
from exporter.config.load import describe_failure, load_config
from exporter.config.model import Config
from exporter.letter import keys
from exporter.letter.token import Signer
from exporter.net.resolve import DeviceRun
from exporter.probe.history import DEFAULT_LIMIT as DEFAULT_HISTORY_LIMIT
from exporter.probe.history import MAX_LIMIT as MAX_HISTORY_LIMIT
from exporter.probe.result import ProbeResult
from exporter.probe.roundtrip import run_probe
from exporter.report import render_report
from exporter.service import Exporter, warn_unverified
from exporter.sharding import Shard
from exporter.web.app import DEFAULT_TELEMETRY_PATH, OTHER_PATHS
from exporter.web.guard import WebGuard
from exporter.web.paths import parse_prefix
from exporter.web.server import serve

DEFAULT_LISTEN = ":9925"
LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error"}

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2  # argparse's own
EXIT_PROBE_FAILED = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mail-roundtrip-exporter",
        description="Prometheus exporter that sends test letters over SMTP and finds them over IMAP4/POP3.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # --version keeps its lines
    )
    p.add_argument("--config.file", dest="config_file", default="config.yml", help="YAML config (default: %(default)s)")
    p.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config and exit 0/1; password_env and password_file are checked, not read",
    )
    p.add_argument(
        "--config.check-secrets",
        dest="config_check_secrets",
        action="store_true",
        help="like --config.check, and read every password_env and password_file too",
    )
    p.add_argument("--once", action="store_true", help="run every task once, print a per-phase report, exit")
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        action="append",
        help=f"address to serve metrics on, repeatable (default: {DEFAULT_LISTEN}, all interfaces)",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=DEFAULT_TELEMETRY_PATH,
        help="path under which to expose metrics (default: %(default)s)",
    )
    p.add_argument(
        "--web.external-url",
        dest="external_url",
        default=None,
        help="the URL under which the exporter is reached (behind a reverse proxy): the console's links use its path",
    )
    p.add_argument(
        "--web.route-prefix",
        dest="route_prefix",
        default=None,
        help="prefix of every HTTP route (default: the path of --web.external-url, else none)",
    )
    p.add_argument(
        "--history.limit",
        dest="history_limit",
        type=history_limit,
        default=DEFAULT_HISTORY_LIMIT,
        help="probes each task keeps in memory for the console's task page (default: %(default)s)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="TLS and basic auth, in exporter-toolkit's format, read again on reload (default: plain HTTP, no auth)",
    )
    p.add_argument(
        "--signing.key-file",
        dest="key_file",
        type=Path,
        default=keys.default_key_path(),
        help="key that signs probe letters, created on first start (default: %(default)s)",
    )
    p.add_argument("--shard", type=int, default=0, help="this exporter's shard, 0..N-1 (default: %(default)s)")
    p.add_argument(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=1,
        help="how many exporters share the config, each probing the tasks of its shard (default: %(default)s)",
    )
    p.add_argument(
        "--print",
        dest="print_asset",
        choices=assets.NAMES,
        help="write the shipped Grafana dashboard, Prometheus rules or example config to stdout and exit",
    )
    p.add_argument("--log.level", dest="log_level", default="info", choices=list(LOG_LEVELS))
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    p.add_argument("--version", action="version", version=version_text("mail-roundtrip-exporter"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.print_asset:
        return assets.print_asset(args.print_asset)
    logs.setup(LOG_LEVELS[args.log_level], args.log_format)
    checking = args.config_check or args.config_check_secrets
    try:
        config = load_config(args.config_file, secrets=not checking or args.config_check_secrets)
    except Exception as exc:  # one line, whatever it is: a traceback could quote the file's passwords
        print(f"config error: {describe_failure(Path(args.config_file), exc)}", file=sys.stderr)
        return EXIT_CONFIG
    warn_unverified(config)
    try:
        guard = WebGuard.load(args.web_config_file)
    except Exception as exc:
        print(f"error: {describe_failure(Path(args.web_config_file), exc)}", file=sys.stderr)
        return EXIT_USAGE
    if checking:
        secrets = "read" if args.config_check_secrets else "not read (--config.check-secrets reads them)"
        print(
            f"{args.config_file}: ok ({len(config.tasks())} tasks in {len(config.devices)} devices; secrets {secrets})"
        )
        return EXIT_OK
    try:
        signer = Signer(keys.load_or_create(args.key_file))
        addresses = listen_addresses(args.listen or [DEFAULT_LISTEN])
        telemetry_path = check_telemetry_path(args.telemetry_path)
        shard = Shard(args.shard, args.total_shards)
        prefix = parse_prefix(args.route_prefix, args.external_url)
    except (keys.SigningKeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.once:
        results = asyncio.run(run_once(shard.select(config), signer))
        print(render_report(results))
        return EXIT_OK if all(r.success for r in results) else EXIT_PROBE_FAILED
    exporter = Exporter(
        Path(args.config_file), config, signer, also=[guard], shard=shard, history_limit=args.history_limit
    )
    return asyncio.run(serve(exporter, addresses, guard, telemetry_path, prefix))


def listen_addresses(texts: Sequence[str]) -> list[tuple[str | None, int]]:
    addresses: list[tuple[str | None, int]] = []
    for text in texts:
        host, port = split_host_port(text)
        if port is None:
            raise ValueError(f"--web.listen-address {text!r} needs a port")
        addresses.append((host or None, port))
    return addresses


def history_limit(text: str) -> int:
    """1 .. MAX_HISTORY_LIMIT probes: each kept probe costs a few KB per task."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_HISTORY_LIMIT:
        raise argparse.ArgumentTypeError(f"must be a whole number 1..{MAX_HISTORY_LIMIT}, got {text!r}")
    return value


def check_telemetry_path(path: str) -> str:
    if not path.startswith("/") or not path.isprintable() or " " in path or path in OTHER_PATHS:
        raise ValueError(f"--web.telemetry-path {path!r} must be a path starting with / and not one of {OTHER_PATHS}")
    return path


async def run_once(config: Config, signer: Signer) -> list[ProbeResult]:
    """Every task once, all at the same time (they are independent round trips)."""
    runs = {device.name: DeviceRun(device) for device in config.devices}
    return list(
        await asyncio.gather(
            *(run_probe(device.name, task, signer, runs[device.name].resolver(task)) for device, task in config.tasks())
        )
    )
