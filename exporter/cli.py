"""Command line: validate a config, run every task once with a readable report, or serve metrics."""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Sequence

from exporter import __version__, logs
from exporter.config import Config, ConfigError, load_config
from exporter.dns import SystemResolver
from exporter.message import Signer
from exporter.probe import ProbeResult, run_probe

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
    p.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.config_check:
        print(f"{args.config_file}: ok ({len(config.tasks())} tasks in {len(config.devices)} devices)")
        return EXIT_OK
    if args.once:
        results = asyncio.run(run_once(config))
        print(render_report(results))
        return EXIT_OK if all(r.success for r in results) else EXIT_PROBE_FAILED
    print("serving mode is not available yet; use --once", file=sys.stderr)
    return EXIT_USAGE


async def run_once(config: Config) -> list[ProbeResult]:
    """Every task once, all at the same time (they are independent round trips)."""
    signer = Signer(secrets.token_bytes(32))
    resolver = SystemResolver()
    return list(
        await asyncio.gather(
            *(run_probe(device.name, task, signer, resolver.resolve) for device, task in config.tasks())
        )
    )


def render_report(results: Sequence[ProbeResult]) -> str:
    return "\n\n".join(_render_one(result) for result in results)


def _render_one(r: ProbeResult) -> str:
    status = "OK" if r.success else f"FAILED ({r.reason})"
    lines = [f"== {r.device}/{r.task}: {status}"]
    if r.error:
        lines.append(f"   error: {r.error}")
    lines.append(f"   {'phase':<18}{'seconds':>10}")
    for phase, seconds in r.phases.items():
        leg = phase.split("_", 1)[0]
        note = "  (cache hit)" if phase.endswith("_dns") and r.dns_cached.get(leg) else ""
        lines.append(f"   {phase:<18}{seconds:>10.4f}{note}")
    if r.delivery_seconds is not None:
        server = f"  (server clock: {r.server_delivery_seconds:.3f})" if r.server_delivery_seconds is not None else ""
        lines.append(f"   {'delivery':<18}{r.delivery_seconds:>10.4f}{server}")
    for label, value in (
        ("smtp reply", r.smtp_reply),
        ("smtp address", r.smtp_address),
        ("mailbox address", r.mailbox_address),
        ("smtp cert expires", _date(r.smtp_certificate_not_after)),
        ("mailbox cert expires", _date(r.mailbox_certificate_not_after)),
    ):
        if value:
            lines.append(f"   {label}: {value}")
    return "\n".join(lines)


def _date(unix: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix)) if unix is not None else None
