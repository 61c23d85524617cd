"""``unisock conformance server URL ...``: run the server checks through pytest in-process.

The command is a thin front for the pytest plugin: it turns its options into
``--unisock-*`` options, isolates the run from the caller's pytest configuration, and shows
the live progress display. The exit status is 0 only when no MUST that was run failed.
Also runnable as ``python -m unisock_conformance.runner server URL ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from unisock_conformance.deployment import PROFILES
from unisock_conformance.grading import EXIT_INTERNAL, EXIT_USAGE

__all__ = ["add_server_parser", "build_parser", "main", "pytest_args", "run_server_suite"]

CHECKS_PACKAGE = "unisock_conformance.checks"
EXIT_STATUSES = """\
exit status:
  0   conforming: no MUST that was run failed (MUSTs not run are listed in the verdict)
  1   non-conforming: a MUST failed
  2   usage error
  6   incomplete: --require-complete and at least one MUST was not run
  10  setup error: the server cannot be reached
  11  setup error: the server refused the WebSocket handshake
  12  setup error: the server refused the suite's token (check --secret/--token-command,
      --issuer, --audience)
  13  setup error: the server is draining
  14  setup error: the token command failed
  70  internal error of the suite
"""


def _scale(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def add_server_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``server`` command to an ``add_subparsers()`` object (of ``conformance``).

    The parser sets ``conformance_handler`` to :func:`run_server_suite`.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server",
        help="check a server deployment against the spec",
        description="Run the Unisock server conformance suite against a ws:// or wss:// URL. "
        "Exit status 0 only when every MUST requirement that was run passes.",
        epilog=EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the server")
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--secret", help="the server's HS256 secret (default: $UNISOCK_SECRET)")
    tokens.add_argument(
        "--token-command",
        metavar="CMD",
        help="the deployment's signer, speaking the token command protocol (spec 14.6): "
        "one JSON request of claims per line in, one signed token per line out; e.g. "
        "'python -m unisock_conformance.token_command --key key.pem --alg RS256'",
    )
    parser.add_argument("--broadcaster-token", metavar="T", help="a broadcaster-role token")
    parser.add_argument(
        "--issuer",
        metavar="ISS",
        help="the issuer the deployment requires (every token the suite asks for carries it)",
    )
    parser.add_argument(
        "--audience",
        metavar="AUD",
        help="the audience the deployment requires (every token the suite asks for carries it)",
    )
    origins = parser.add_mutually_exclusive_group()
    origins.add_argument(
        "--origin",
        metavar="O",
        help="an Origin the deployment's allowlist contains; test connections send it and "
        "the Origin checks test the allowlist around it",
    )
    origins.add_argument(
        "--any-origin",
        action="store_true",
        help="the deployment has no Origin allowlist and accepts every Origin",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K:V",
        help="extra handshake header (repeatable)",
    )
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--report-dir", metavar="DIR", help="write report.json/.html/.md here")
    parser.add_argument("--junit", metavar="FILE", help="write JUnit XML here")
    parser.add_argument("--seed", type=int, help="seed for hypothesis and generated names")
    parser.add_argument(
        "--time-scale",
        type=_scale,
        metavar="X",
        help="multiply every timeout (default: $UNISOCK_TIME_SCALE or 1.0)",
    )
    parser.add_argument(
        "--time-budget",
        type=_scale,
        metavar="SECONDS",
        help="seconds one timing check may wait for announced timers (default: 60 in the "
        "quick profile, 600 in full); timing checks that need longer are not run, and say so",
    )
    parser.add_argument(
        "--drain-command",
        metavar="CMD",
        help="shell command that makes the deployment drain, e.g. 'kill -TERM 1234'; "
        "the drain checks run last (the deployment stops serving) and need it",
    )
    parser.add_argument(
        "--reset-command",
        metavar="CMD",
        help="shell command that makes the deployment lose its channel history and offsets, "
        "e.g. 'kill -HUP 1234' for the reference server; the epoch checks need it",
    )
    parser.add_argument(
        "--outage-command",
        metavar="CMD",
        help="shell command that makes the deployment's broker unreachable, e.g. "
        "'kill -STOP <redis pid>'; the outage checks need it and --recover-command",
    )
    parser.add_argument(
        "--recover-command",
        metavar="CMD",
        help="shell command that makes the broker reachable again, e.g. 'kill -CONT <pid>'",
    )
    parser.add_argument(
        "--node-url",
        action="append",
        default=[],
        metavar="URL",
        help="another node of the same deployment sharing its broker (repeatable); "
        "the checks' connections are then spread over every node, and the cluster checks "
        "need one",
    )
    parser.add_argument(
        "--coalescing-channel",
        metavar="NAME",
        help="a channel the deployment declares coalescing (coalescing checks need one)",
    )
    parser.add_argument(
        "--example-event-types",
        action="store_true",
        help="the deployment registers the example event types of schemas/v1/events with "
        "their schemas; a typed-event check that finds invalid data acknowledged then fails "
        "instead of not running (the suite cannot tell an unregistered type from one left "
        "unchecked)",
    )
    parser.add_argument(
        "--require-complete",
        action="store_true",
        help="exit with status 6 when any MUST was not run (by default the verdict lists "
        "them, e.g. 'conforming, 12 MUSTs not run', and the exit status is 0)",
    )
    parser.add_argument("-k", dest="keyword", metavar="EXPR", help="only checks matching EXPR")
    parser.add_argument(
        "--spec-link-base",
        default="spec/",
        metavar="BASE",
        help="link prefix for spec sections in report.html ('{section}' is substituted)",
    )
    parser.set_defaults(conformance_handler=run_server_suite)
    return parser


def pytest_args(args: argparse.Namespace) -> list[str]:
    """The pytest command line equivalent to ``args`` (secrets included: keep in-process)."""
    argv = [
        "--pyargs",
        CHECKS_PACKAGE,
        "-c",
        os.devnull,  # the caller's pytest configuration must not change the suite
        "--rootdir",
        os.getcwd(),
        "-p",
        "no:cacheprovider",
        "-p",
        "no:terminal",
        "--unisock-progress",
        f"--unisock-url={args.url}",
        f"--unisock-profile={args.profile}",
        f"--unisock-spec-link-base={args.spec_link_base}",
    ]
    optional = {
        "--unisock-secret": args.secret,
        "--unisock-token-command": args.token_command,
        "--unisock-broadcaster-token": args.broadcaster_token,
        "--unisock-origin": args.origin,
        "--unisock-report-dir": args.report_dir,
        "--unisock-junit": args.junit,
        "--unisock-seed": args.seed,
        "--unisock-time-scale": args.time_scale,
        "--unisock-time-budget": args.time_budget,
        "--unisock-drain-command": args.drain_command,
        "--unisock-reset-command": args.reset_command,
        "--unisock-outage-command": args.outage_command,
        "--unisock-recover-command": args.recover_command,
        "--unisock-coalescing-channel": args.coalescing_channel,
        "--unisock-issuer": args.issuer,
        "--unisock-audience": args.audience,
    }
    argv += [f"{name}={value}" for name, value in optional.items() if value is not None]
    argv += [f"--unisock-header={header}" for header in args.header]
    argv += [f"--unisock-node-url={url}" for url in args.node_url]
    if args.any_origin:
        argv.append("--unisock-any-origin")
    if args.require_complete:
        argv.append("--unisock-require-complete")
    if args.example_event_types:
        argv.append("--unisock-example-event-types")
    if args.keyword:
        argv += ["-k", args.keyword]
    return argv


def run_server_suite(args: argparse.Namespace) -> int:
    """Run the suite; returns the exit status (0 = every MUST that ran passed)."""
    if args.secret is None and args.token_command is None and not os.environ.get("UNISOCK_SECRET"):
        print(
            "unisock conformance server: give --secret, $UNISOCK_SECRET or --token-command",
            file=sys.stderr,
        )
        return EXIT_USAGE
    import pytest  # imported here so that building the `unisock` parser stays cheap

    code = int(pytest.main(pytest_args(args)))
    # pytest's own statuses for what is not a verdict: a usage error, an internal error.
    return {
        int(pytest.ExitCode.USAGE_ERROR): EXIT_USAGE,
        int(pytest.ExitCode.INTERNAL_ERROR): EXIT_INTERNAL,
        int(pytest.ExitCode.INTERRUPTED): 130,
    }.get(code, code)


def build_parser() -> argparse.ArgumentParser:
    """``python -m unisock_conformance.runner server URL ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m unisock_conformance.runner",
        description="Unisock conformance suite.",
    )
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    add_server_parser(targets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.conformance_handler(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
