"""Command line: validate a config, run every task once with a readable report, or serve metrics."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from exporter import __version__, assets, logs
from exporter.config.fields import split_host_port
from exporter.config.load import describe_failure, load_config
from exporter.config.model import Config
from exporter.letter import keys
from exporter.letter.token import Signer
from exporter.net.resolve import DeviceRun
from exporter.probe.phases import Phase
from exporter.probe.result import ProbeResult
from exporter.probe.roundtrip import run_probe
from exporter.sanitise import MESSAGE_LIMIT, server_text
from exporter.service import Exporter, warn_unverified
from exporter.timefmt import utc_time
from exporter.web.app import make_app
from exporter.web.webconfig import WebConfig, load_web_config

log = logging.getLogger(__name__)
DEFAULT_LISTEN = ":9925"
KEEPALIVE_SECONDS = 75.0

EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2  # argparse's own
EXIT_PROBE_FAILED = 3


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mail-roundtrip-exporter",
        description="Prometheus exporter that sends test letters over SMTP and finds them over IMAP4/POP3.",
    )
    p.add_argument("--config.file", dest="config_file", default="config.yml", help="YAML config (default: %(default)s)")
    p.add_argument("--config.check", dest="config_check", action="store_true", help="validate the config and exit 0/1")
    p.add_argument("--once", action="store_true", help="run every task once, print a per-phase report, exit")
    p.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help="address to serve metrics on (default: %(default)s, all interfaces)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default=None,
        help="TLS and basic auth, in exporter-toolkit's format (default: plain HTTP, no auth)",
    )
    p.add_argument(
        "--signing.key-file",
        dest="key_file",
        type=Path,
        default=keys.default_key_path(),
        help="key that signs probe letters, created on first start (default: %(default)s)",
    )
    p.add_argument(
        "--print",
        dest="print_asset",
        choices=assets.NAMES,
        help="write the shipped Grafana dashboard, Prometheus rules or example config to stdout and exit",
    )
    p.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.print_asset:
        return assets.print_asset(args.print_asset)
    logs.setup(args.log_level, args.log_format)
    try:
        config = load_config(args.config_file)
    except Exception as exc:  # one line, whatever it is: a traceback could quote the file's passwords
        print(f"config error: {describe_failure(Path(args.config_file), exc)}", file=sys.stderr)
        return EXIT_CONFIG
    warn_unverified(config)
    try:
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
    except Exception as exc:
        print(f"error: {describe_failure(Path(args.web_config_file), exc)}", file=sys.stderr)
        return EXIT_USAGE
    if args.config_check:
        print(f"{args.config_file}: ok ({len(config.tasks())} tasks in {len(config.devices)} devices)")
        return EXIT_OK
    try:
        signer = Signer(keys.load_or_create(args.key_file))
        host, port = split_host_port(args.listen)
    except (keys.SigningKeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.once:
        results = asyncio.run(run_once(config, signer))
        print(render_report(results))
        return EXIT_OK if all(r.success for r in results) else EXIT_PROBE_FAILED
    if port is None:
        print(f"error: --web.listen-address {args.listen!r} needs a port", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(serve(Exporter(Path(args.config_file), config, signer), host or None, port, web_config))


async def serve(exporter: Exporter, host: str | None, port: int, web_config: WebConfig | None = None) -> int:
    # aiohttp keeps an idle connection for an hour by default: a crowd of silent clients would then
    # hold file descriptors that probes need. Prometheus reconnects cheaply; 75 s is plenty.
    runner = web.AppRunner(make_app(exporter, web_config), access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    ssl_context = web_config.ssl_context if web_config else None
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except OSError as exc:
        print(f"error: cannot listen on {host or '*'}:{port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return EXIT_USAGE
    exporter.install_signal_handlers()
    await exporter.start()
    log.info(
        "listening",
        extra={
            "address": f"{host or '*'}:{port}",
            "tls": ssl_context is not None,
            "basic_auth": bool(web_config and web_config.users),
        },
    )
    if web_config and web_config.users and ssl_context is None:
        log.warning("basic auth without TLS: passwords cross the network in clear text")
    await exporter.stopping.wait()
    await exporter.stop()
    await runner.cleanup()
    return EXIT_OK


async def run_once(config: Config, signer: Signer) -> list[ProbeResult]:
    """Every task once, all at the same time (they are independent round trips)."""
    runs = {device.name: DeviceRun(device) for device in config.devices}
    return list(
        await asyncio.gather(
            *(run_probe(device.name, task, signer, runs[device.name].resolver(task)) for device, task in config.tasks())
        )
    )


def render_report(results: Sequence[ProbeResult]) -> str:
    return "\n\n".join(_render_one(result) for result in results)


def _render_one(r: ProbeResult) -> str:
    status = "OK" if r.success else f"FAILED ({r.reason})"
    lines = [f"== {r.device}/{r.task}: {status}"]
    if r.error:
        lines.append(f"   error: {_safe(r.error)}")
    lines.append(f"   {'phase':<18}{'seconds':>10}")
    for phase in (p for p in Phase if p in r.phases):
        note = "  (cache hit)" if phase.is_dns and r.legs()[phase.leg].dns_cached else ""
        lines.append(f"   {phase:<18}{r.phases[phase]:>10.4f}{note}")
    if r.delivery_seconds is not None:
        server = f"  (server clock: {r.server_delivery_seconds:.3f})" if r.server_delivery_seconds is not None else ""
        lines.append(f"   {'delivery':<18}{r.delivery_seconds:>10.4f}{server}")
    facts: list[tuple[str, str | None]] = [("smtp reply", r.smtp_reply)]
    for leg, leg_result in r.legs().items():
        facts.append((f"{leg} address", leg_result.address))
        facts.append((f"{leg} cert expires", _date(leg_result.certificate_not_after)))
    for label, value in facts:
        if value:
            lines.append(f"   {label}: {_safe(value)}")
    return "\n".join(lines)


def _safe(text: str) -> str:
    """Once more at the output, whatever the source did: a report line can never hold a line break or a
    terminal control, so no server can forge a "== device/task: OK" line or drive the terminal."""
    return server_text(text, MESSAGE_LIMIT)


def _date(unix: float | None) -> str | None:
    return utc_time(unix) if unix is not None else None
