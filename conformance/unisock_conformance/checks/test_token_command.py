"""The deployment's token command (spec 14.6): it signs exactly the claims it is sent.

Every other check trusts the tokens the command returns to carry the claims the suite asked
for; these checks make that trust explicit. A run with a shared secret has no token command,
and the rules do not apply to it.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from unisock_conformance.checks.conftest import Connect
from unisock_conformance.deployment import Deployment, Names, not_applicable, not_run
from unisock_conformance.signer import TokenCommand, TokenRefused


def _signer(deployment: Deployment) -> TokenCommand:
    if deployment.token_command is None:
        not_applicable("the run signs with --secret: there is no token command (--token-command)")
    return deployment.signer()


def _payload(token: str) -> Any:
    parts = token.split(".")
    assert len(parts) == 3, f"not a compact JWS: {len(parts)} parts"
    return json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))


def _request(signer: TokenCommand, message: dict[str, Any]) -> str:
    try:
        return signer.request(message)
    except TokenRefused as refusal:
        not_run(f"the token command refused an ordinary claim set: {refusal}")


@pytest.mark.requirement("UNI-TOK-2", "UNI-TOK-1")
def test_token_command_signs_exactly_the_claims_it_is_sent(
    deployment: Deployment, names: Names, connect: Connect
) -> None:
    signer = _signer(deployment)
    tokens = []
    for i in range(3):
        claims = deployment.claims(names.tenant(), names.user(i), subscribe=(">",))
        claims["jti"] = f"{names.hex}-{i}"
        claims["x-conformance"] = {"text": "é\u2028ü", "list": [1, None, True], "n": i}
        tokens.append((claims, _request(signer, {"claims": claims})))
    for claims, token in tokens:
        assert _payload(token) == claims, "the token's payload is not the claims sent"
        welcome = connect(token).welcome
        assert welcome is not None and welcome["session"]["sub"] == claims["sub"], welcome


@pytest.mark.requirement("UNI-TOK-3", "UNI-TOK-1")
def test_token_command_ignores_request_members_it_does_not_know(
    deployment: Deployment, names: Names
) -> None:
    signer = _signer(deployment)
    claims = deployment.claims(names.tenant(), names.user())
    token = _request(signer, {"claims": claims, "x-later-member": {"version": 2}})
    assert _payload(token) == claims, "the token's payload is not the claims sent"
