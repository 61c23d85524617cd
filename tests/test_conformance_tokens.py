"""The token command protocol (spec 14.6): the suite's side, the shipped command, and a run
against an RS256 deployment that requires an issuer and an audience."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest

from suite_runs import SCALE, Served, run_suite, write_key_pair
from unisock_conformance.signer import TokenCommand, TokenCommandError, TokenRefused

SECRET = "token-command-test-secret-0123456789abcdef"
SUITE_TIMEOUT_S = 600 * SCALE
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
            'neither a string "token"',
        ),
        (
            'import sys\nfor line in sys.stdin:\n    print(\'{"token": "abc"}\', flush=True)\n',
            "not a JWS",
        ),
    ],
    ids=["exits", "bare-token", "number", "not-a-jws"],
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


def _config(folder: Path, auth: str) -> Path:
    # Timers the suite answers in time on a loaded machine: scaled like every wait.
    config = folder / "server.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            heartbeat_interval_ms = {int(1000 * SCALE)}
            heartbeat_timeout_ms = {int(1000 * SCALE)}
            auth_timeout_ms = {int(1000 * SCALE)}
            refresh_warning_ms = 2000
            history_max_count = 50
            drain_window_ms = 1000
            coalescing_channels = ["coal.>"]

            [auth]
            """
        )
        + auth,
        "utf-8",
    )
    return config


def _run(folder: Path, auth: str, *options: str) -> tuple[int, dict[str, int], dict[str, str]]:
    folder.mkdir()
    served = Served(_config(folder, auth), SECRET, folder / "server.log")
    try:
        run = run_suite(
            served.url,
            folder / "report",
            "--seed",
            "7",
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            "--coalescing-channel",
            "coal.test",
            "--reset-command",
            f"kill -HUP {served.pid}",
            *options,
            timeout=SUITE_TIMEOUT_S,
        )
    finally:
        served.stop()
    assert run.exit_code == 0, run.output
    return run.exit_code, run.must_counts(), run.not_run_checks()


@pytest.mark.slow
def test_rs256_deployment_with_a_token_command_runs_as_many_checks_as_a_secret(
    tmp_path: Path,
) -> None:
    """The same deployment settings, once verifying HS256 with a secret the suite holds and
    once RS256 with a key only the shipped token command holds: the same MUSTs are run."""
    private, public = write_key_pair(tmp_path, "RS256")
    issuer = f'issuer = "{ISSUER}"\naudience = "{AUDIENCE}"\n'
    command = f"{sys.executable} -m unisock_conformance.token_command --key {private} --alg RS256"
    with ThreadPoolExecutor(max_workers=2) as pool:
        secret = pool.submit(_run, tmp_path / "hs256", issuer, "--secret", SECRET)
        rs256 = pool.submit(
            _run,
            tmp_path / "rs256",
            issuer + f'public_keys = [{{alg = "RS256", file = "{public}"}}]\n',
            "--token-command",
            command,
        )
        _, secret_counts, secret_not_run = secret.result()
        _, rs256_counts, rs256_not_run = rs256.result()
    assert secret_counts.get("fail", 0) == rs256_counts.get("fail", 0) == 0
    # Only the token command's own rules differ: not applicable without one.
    assert rs256_counts["pass"] == secret_counts["pass"] + 3, (rs256_counts, secret_counts)
    assert rs256_counts.get("not-run", 0) == secret_counts.get("not-run", 0), sorted(
        set(rs256_not_run) - set(secret_not_run)
    )
    residual = set(rs256_not_run) - set(secret_not_run)
    # Payloads that are no JSON object, or no UTF-8, cannot be asked of a token command; the
    # requirements they belong to are still run by the other cases of the same checks.
    assert residual == {
        "test_server_rejects_token_whose_claims_violate_the_schema[claims-not-object]",
        "test_server_rejects_a_signed_token_outside_the_json_limits[raw-surrogate-octets]",
        "test_server_rejects_a_signed_token_outside_the_json_limits[not-utf8]",
    }, residual
