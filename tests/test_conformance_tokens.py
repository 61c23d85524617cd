"""The token command protocol (spec 14.6): the suite's side and the shipped command.

A whole run against an RS256 deployment through the shipped command is part of the
configuration matrix (``tests/test_conformance_matrix.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jwt
import pytest

from suite_runs import SCALE, write_key_pair
from unisock import schemas
from unisock_conformance.signer import TokenCommand, TokenCommandError, TokenRefused

SECRET = "token-command-test-secret-0123456789abcdef"
ISSUER = "https://id.tokens.test"
AUDIENCE = "unisock-tokens"
CLAIMS = {"sub": "u1", "tenant": "t1", "exp": 4_000_000_000, "grants": {"subscribe": [">"]}}


def _script(tmp_path: Path, body: str) -> str:
    """A token command written as a small Python program; returns its command line."""
    path = tmp_path / "command.py"
    path.write_text(textwrap.dedent(body), "utf-8")
    return f"{sys.executable} {path}"


ECHO = """
    import json, sys
    for line in sys.stdin:
        request = json.loads(line)
        claims = request["claims"]
        if claims.get("sub") == "refuse":
            print(json.dumps({"error": "not this one"}), flush=True)
        else:
            print(json.dumps({"token": "h." + claims["sub"] + ".s"}), flush=True)
"""


def test_token_command_answers_requests_in_order_and_reports_a_refusal(tmp_path: Path) -> None:
    signer = TokenCommand(_script(tmp_path, ECHO), timeout_s=10 * SCALE)
    try:
        assert signer.sign({"sub": "a"}) == "h.a.s"
        with pytest.raises(TokenRefused, match="not this one"):
            signer.sign({"sub": "refuse"})
        assert signer.request({"claims": {"sub": "b"}, "later": 1}) == "h.b.s"
    finally:
        signer.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys\nsys.exit(3)\n", "exited with status 3"),
        ("import sys\nfor line in sys.stdin:\n    print('eyJ.x.y', flush=True)\n", "not JSON"),
        (
            "import sys\nfor line in sys.stdin:\n    print('{\"token\": 7}', flush=True)\n",
            "/token: 7 is not of type 'string'",
        ),
        (
            'import sys\nfor line in sys.stdin:\n    print(\'{"token": "abc"}\', flush=True)\n',
            "/token: 'abc' does not match",
        ),
        (
            "import sys\nfor line in sys.stdin:\n"
            '    print(\'{"token": "a.b.c", "error": "x"}\', flush=True)\n',
            "breaks token-command/reply.json",
        ),
    ],
    ids=["exits", "bare-token", "number", "not-a-jws", "token-and-error"],
)
def test_a_broken_token_command_is_a_setup_error_and_stays_one(
    tmp_path: Path, body: str, message: str
) -> None:
    signer = TokenCommand(_script(tmp_path, body), timeout_s=10 * SCALE)
    try:
        with pytest.raises(TokenCommandError, match=message):
            signer.sign(CLAIMS)
        with pytest.raises(TokenCommandError, match=message):
            signer.sign(CLAIMS)  # every later request fails the same way, at once
    finally:
        signer.close()


def test_a_silent_token_command_times_out(tmp_path: Path) -> None:
    body = "import sys, time\nfor line in sys.stdin:\n    time.sleep(60)\n"
    signer = TokenCommand(_script(tmp_path, body), timeout_s=0.5)
    try:
        with pytest.raises(TokenCommandError, match="did not answer within"):
            signer.sign(CLAIMS)
    finally:
        signer.close()


def test_a_missing_token_command_is_a_setup_error(tmp_path: Path) -> None:
    signer = TokenCommand(str(tmp_path / "no-such-command"), timeout_s=5)
    with pytest.raises(TokenCommandError, match="could not be started"):
        signer.sign(CLAIMS)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_shipped_token_command_signs_the_claims_unchanged(tmp_path: Path, alg: str) -> None:
    private, public = write_key_pair(tmp_path, alg)
    odd = {**CLAIMS, "iss": ISSUER, "aud": AUDIENCE, "x": {"é": [1, None]}, "exp": "soon"}
    requests = [{"claims": CLAIMS}, {"claims": odd, "unknown": True}, {"claims": [1]}, "text"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unisock_conformance.token_command",
            "--key",
            str(private),
            "--alg",
            alg,
            "--kid",
            "k1",
        ],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=60 * SCALE,
        check=True,
    )
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(replies) == 4
    key = public.read_text()
    for reply, claims in zip(replies[:2], (CLAIMS, odd), strict=True):
        token = reply["token"]
        assert jwt.get_unverified_header(token) == {"alg": alg, "kid": "k1", "typ": "JWT"}
        assert json.loads(jwt.api_jws.decode(token, key, algorithms=[alg])) == claims
    assert set(replies[2]) == {"error"} and set(replies[3]) == {"error"}


def test_shipped_token_command_refuses_a_key_of_another_algorithm(tmp_path: Path) -> None:
    private, _ = write_key_pair(tmp_path, "ES256")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unisock_conformance.token_command",
            "--key",
            str(private),
            "--alg",
            "RS256",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=60 * SCALE,
        check=False,
    )
    assert result.returncode == 2 and "not a RS256 private key" in result.stderr


TOKEN_COMMAND_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "v1" / "token-command"


@pytest.mark.parametrize("kind", ["request", "reply"])
def test_token_command_schema_examples_validate_as_documented(kind: str) -> None:
    examples = json.loads((TOKEN_COMMAND_SCHEMAS / "examples" / f"{kind}.json").read_text("utf-8"))
    validator = schemas.validator_for(f"token-command/{kind}")
    assert [m for m in examples["valid"] if schemas.format_errors(validator, m)] == []
    for case in examples["invalid"]:
        assert case["description"].endswith(" is rejected")
        assert schemas.format_errors(validator, case["message"]) != []
