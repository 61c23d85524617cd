"""Serve the reference server from a settings file and run the server suite against it.

``unisock serve`` runs as a subprocess on a port the OS chooses, exactly as an operator runs
it; the suite runs as ``python -m unisock_conformance.runner server`` in another subprocess and
is judged by its exit status and its ``report.json``. The drain and reset hooks signal the
server process, as the reference server's own documentation tells operators to.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("UNISOCK_TIME_SCALE", "1.0"))
STARTUP_S = 30.0 * SCALE

__all__ = ["ROOT", "SCALE", "Served", "SuiteRun", "run_suite", "write_key_pair"]


def write_key_pair(folder: Path, alg: str) -> tuple[Path, Path]:
    """A fresh private key (PKCS#8 PEM) and its public key for ``alg``, written to ``folder``."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(alg)
    private = folder / f"{alg.lower()}.pem"
    public = folder / f"{alg.lower()}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


class Served:
    """``unisock serve --config CONFIG`` on a free port; ``url`` once it is ready."""

    def __init__(self, config: Path, secret: str, log: Path) -> None:
        env = {**os.environ, "UNISOCK_SECRET": secret}
        argv = [sys.executable, "-m", "unisock.cli", "serve", "--port", "0"]
        self.log = log.open("w", encoding="utf-8")  # a file: a full pipe would stall the server
        self.process = subprocess.Popen(
            [*argv, "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self._first_line()
        match = re.search(r"serving unisock\.v1 on (ws://\S+)", line)
        if match is None:
            self.stop()
            raise AssertionError(f"unisock serve did not start: {line!r}, see {log}")
        self.url = match.group(1)

    def _first_line(self) -> str:
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(STARTUP_S):
                return ""
        return self.process.stdout.readline()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STARTUP_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.log.close()


@dataclass
class SuiteRun:
    """One finished suite run: its exit status, report and output."""

    exit_code: int
    report: dict[str, Any]
    output: str
    seconds: float
    tests: list[dict[str, Any]] = field(default_factory=list)

    def must_counts(self) -> dict[str, int]:
        """MUST requirements by outcome (pass, not-run, unimplemented, fail, ...)."""
        counts: dict[str, int] = {}
        for entry in self.report.get("requirements", []):
            if entry["level"] == "MUST":
                counts[entry["outcome"]] = counts.get(entry["outcome"], 0) + 1
        return counts

    def outcomes(self) -> dict[str, str]:
        return {entry["id"]: entry["outcome"] for entry in self.report.get("requirements", [])}

    def not_run_checks(self) -> dict[str, str]:
        """Check name -> reason, for every check graded not-run."""
        return {
            t["id"].rsplit("::", 1)[-1]: t["message"]
            for t in self.tests
            if t["outcome"] == "not-run"
        }


def run_suite(url: str, report_dir: Path, *options: str, timeout: float) -> SuiteRun:
    """``unisock conformance server URL --report-dir DIR OPTIONS...`` as a subprocess."""
    env = {key: value for key, value in os.environ.items() if key != "UNISOCK_SECRET"}
    argv = [sys.executable, "-m", "unisock_conformance.runner", "server", url]
    argv += ["--report-dir", str(report_dir), "--time-scale", str(SCALE), *options]
    started = time.monotonic()
    result = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    path = report_dir / "report.json"
    report: dict[str, Any] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    return SuiteRun(
        result.returncode,
        report,
        (result.stdout + result.stderr)[-6000:],
        time.monotonic() - started,
        list(report.get("tests", [])),
    )
