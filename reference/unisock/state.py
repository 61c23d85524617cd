"""The session state machine, as one table (UNI-LC).

:data:`TRANSITIONS` is the only place where session transitions live. The session core asks
:func:`next_state` for every step, and the spec's state diagram is rendered from the same
table by :func:`mermaid_diagram`, so the code and the diagram cannot drift apart.
"""

from __future__ import annotations

from enum import Enum

from unisock.errors import IllegalTransition

__all__ = ["TRANSITIONS", "Input", "State", "mermaid_diagram", "next_state"]


class State(Enum):
    """Session states; the values are the names the spec uses (UNI-LC)."""

    AWAITING_HELLO = "awaiting_hello"
    OPEN = "open"
    DRAINING = "draining"
    CLOSED = "closed"


class Input(Enum):
    """What can happen to a session; each value is the label shown in the state diagram."""

    HELLO_OK = "valid hello"
    HELLO_BAD = "invalid hello / auth failed"
    AUTH_TIMEOUT = "auth timeout"
    REQUEST = "request"
    DRAIN = "drain"
    DRAIN_TIMEOUT = "drain window over"
    TOKEN_EXPIRED = "token expired"
    HEARTBEAT_TIMEOUT = "heartbeat timeout"
    CLOSE = "close / connection lost"


_S = State
_I = Input

TRANSITIONS: dict[tuple[State, Input], State] = {
    # UNI-LC: only a valid hello opens the session; anything else, or silence, closes it.
    (_S.AWAITING_HELLO, _I.HELLO_OK): _S.OPEN,
    (_S.AWAITING_HELLO, _I.HELLO_BAD): _S.CLOSED,
    (_S.AWAITING_HELLO, _I.AUTH_TIMEOUT): _S.CLOSED,
    (_S.AWAITING_HELLO, _I.DRAIN): _S.CLOSED,
    (_S.AWAITING_HELLO, _I.CLOSE): _S.CLOSED,
    # Open: requests keep the session open; drain starts the drain window.
    (_S.OPEN, _I.REQUEST): _S.OPEN,
    (_S.OPEN, _I.DRAIN): _S.DRAINING,
    (_S.OPEN, _I.TOKEN_EXPIRED): _S.CLOSED,
    (_S.OPEN, _I.HEARTBEAT_TIMEOUT): _S.CLOSED,
    (_S.OPEN, _I.CLOSE): _S.CLOSED,
    # Draining keeps serving and delivering until the window is over (UNI-CLOSE drain).
    (_S.DRAINING, _I.REQUEST): _S.DRAINING,
    (_S.DRAINING, _I.DRAIN_TIMEOUT): _S.CLOSED,
    (_S.DRAINING, _I.TOKEN_EXPIRED): _S.CLOSED,
    (_S.DRAINING, _I.HEARTBEAT_TIMEOUT): _S.CLOSED,
    (_S.DRAINING, _I.CLOSE): _S.CLOSED,
}


def next_state(state: State, event: Input) -> State:
    """The state after ``event`` in ``state``; raises :class:`IllegalTransition` if none."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.value} on {event.name}") from None


def mermaid_diagram() -> str:
    """Render :data:`TRANSITIONS` as a mermaid ``stateDiagram-v2`` (for spec/02-lifecycle.md).

    Inputs that lead from the same state to the same state share one arrow, in table order,
    so the output is deterministic.
    """
    edges: dict[tuple[State, State], list[str]] = {}
    for (source, event), target in TRANSITIONS.items():
        edges.setdefault((source, target), []).append(event.value)
    lines = ["stateDiagram-v2", f"    [*] --> {State.AWAITING_HELLO.value}"]
    for (source, target), labels in edges.items():
        lines.append(f"    {source.value} --> {target.value}: {', '.join(labels)}")
    lines.append(f"    {State.CLOSED.value} --> [*]")
    return "\n".join(lines) + "\n"
