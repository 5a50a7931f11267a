"""Run the exporter for real against a throwaway local Postfix + Dovecot (the README's first command).

Starts the test rig (tests/rig.py) on free loopback ports, writes a config with an IMAP and a POP3
task, runs the exporter in the foreground, and cleans everything up on Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.rig import MailRig


def demo_config(rig: MailRig, interval: str) -> dict[str, Any]:
    user = rig.address("user1")
    password = rig.password("user1")
    ca = str(rig.ca_file)
    submission = {
        "host": f"localhost:{rig.ports.submission}",
        "security": "starttls",
        "user": user,
        "password": password,
        "ca_file": ca,
    }
    submissions = {
        "host": f"localhost:{rig.ports.submissions}",
        "security": "tls",
        "user": user,
        "password": password,
        "ca_file": ca,
    }
    return {
        "devices": [
            {
                "name": "local-rig",
                "interval": interval,
                "tasks": [
                    {
                        "name": "imap",
                        "destination": user,
                        "email_timeout": "1m",
                        "smtp": submission,
                        "incoming": {
                            "protocol": "imap",
                            "host": f"localhost:{rig.ports.imaps}",
                            "security": "tls",
                            "user": user,
                            "password": password,
                            "ca_file": ca,
                            "poll_interval": "1s",
                        },
                    },
                    {
                        "name": "pop3",
                        "destination": user,
                        "email_timeout": "1m",
                        "smtp": submissions,
                        "incoming": {
                            "protocol": "pop3",
                            "host": f"localhost:{rig.ports.pop3}",
                            "security": "starttls",
                            "user": user,
                            "password": password,
                            "ca_file": ca,
                            "poll_interval": "1s",
                        },
                    },
                ],
            }
        ]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:9925", help="exporter listen address (default %(default)s)")
    parser.add_argument("--interval", default="15s", help="probe interval (default %(default)s)")
    args = parser.parse_args()
    # Stop like Ctrl-C on SIGTERM, and on SIGINT even when started in the background (where it is ignored).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)
    with MailRig(users=2) as rig:
        config = rig.dir / "exporter.yml"
        config.write_text(yaml.safe_dump(demo_config(rig, args.interval)))
        print(f"mail rig in {rig.dir}; config {config}", file=sys.stderr)
        print(f"metrics: curl http://{args.listen}/metrics   status page: http://{args.listen}/", file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            args.listen,
            "--signing.key-file",
            str(rig.dir / "signing.key"),
        ]
        exporter = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent)
        try:
            return exporter.wait()
        except KeyboardInterrupt:
            exporter.send_signal(signal.SIGTERM)
            return exporter.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
