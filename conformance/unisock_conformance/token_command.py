"""A ready token command for deployments that verify RS256, ES256 or EdDSA tokens.

``python -m unisock_conformance.token_command --key private.pem --alg RS256 [--kid KID]``
speaks the token command protocol (spec section 14.6): it reads one request per line on
standard input and signs the request's claims, exactly as given, with the private key; it
writes ``{"token": ...}`` per request, or ``{"error": ...}`` for a request it cannot sign.
Give it to the suite as ``--token-command``; keep the key to a test deployment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

__all__ = ["ALGORITHMS", "build_parser", "main", "serve"]

ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m unisock_conformance.token_command",
        description="Sign the conformance suite's claims with a PEM private key "
        "(the token command protocol: JSON requests in, tokens out, one per line).",
    )
    parser.add_argument("--key", type=Path, required=True, help="PEM private key file")
    parser.add_argument("--alg", choices=ALGORITHMS, required=True, help="JWS algorithm")
    parser.add_argument("--kid", help="key id to put in every token's header")
    return parser


def _load_key(path: Path, alg: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(path.read_bytes(), password=None)
    fits = {
        "RS256": isinstance(key, rsa.RSAPrivateKey),
        "ES256": isinstance(key, ec.EllipticCurvePrivateKey)
        and isinstance(key.curve, ec.SECP256R1),
        "EdDSA": isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey),
    }
    if not fits[alg]:
        raise ValueError(f"{path} is not a {alg} private key")
    return key


def _reply(line: str, key: Any, alg: str, headers: dict[str, Any]) -> dict[str, str]:
    import jwt

    try:
        request = json.loads(line)
    except ValueError:
        return {"error": "the request is not JSON"}
    claims = request.get("claims") if isinstance(request, dict) else None
    if not isinstance(claims, dict):
        return {"error": 'the request has no "claims" object'}
    try:
        return {"token": jwt.encode(claims, key, algorithm=alg, headers=headers or None)}
    except (TypeError, ValueError) as error:
        return {"error": f"cannot sign these claims: {error}"}


def serve(stdin: TextIO, stdout: TextIO, key: Any, alg: str, kid: str | None = None) -> None:
    """Answer every request line of ``stdin`` on ``stdout`` until end of input."""
    headers: dict[str, Any] = {"kid": kid} if kid else {}
    for line in stdin:
        if not line.strip():
            continue
        stdout.write(json.dumps(_reply(line, key, alg, headers)) + "\n")
        stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        key = _load_key(args.key, args.alg)
    except (OSError, ValueError, TypeError) as error:
        print(f"token command: {error}", file=sys.stderr)
        return 2
    serve(sys.stdin, sys.stdout, key, args.alg, args.kid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
