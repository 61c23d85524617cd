"""The session state machine table and the diagram rendered from it (UNI-LC)."""

from __future__ import annotations

import pytest

from unisock.errors import IllegalTransition, LocalError
from unisock.state import TRANSITIONS, Input, State, mermaid_diagram, next_state


def test_valid_hello_opens_the_session() -> None:
    assert next_state(State.AWAITING_HELLO, Input.HELLO_OK) is State.OPEN


@pytest.mark.parametrize("event", [Input.HELLO_BAD, Input.AUTH_TIMEOUT, Input.CLOSE, Input.DRAIN])
def test_session_closes_before_hello_on(event: Input) -> None:
    assert next_state(State.AWAITING_HELLO, event) is State.CLOSED


def test_requests_keep_open_and_draining_sessions_in_their_state() -> None:
    assert next_state(State.OPEN, Input.REQUEST) is State.OPEN
    assert next_state(State.DRAINING, Input.REQUEST) is State.DRAINING


def test_drain_moves_open_to_draining_and_the_window_end_closes() -> None:
    assert next_state(State.OPEN, Input.DRAIN) is State.DRAINING
    assert next_state(State.DRAINING, Input.DRAIN_TIMEOUT) is State.CLOSED


@pytest.mark.parametrize("state", [State.OPEN, State.DRAINING])
@pytest.mark.parametrize("event", [Input.TOKEN_EXPIRED, Input.HEARTBEAT_TIMEOUT, Input.CLOSE])
def test_authenticated_session_closes_on(state: State, event: Input) -> None:
    assert next_state(state, event) is State.CLOSED


@pytest.mark.parametrize("event", list(Input))
def test_closed_session_has_no_transition(event: Input) -> None:
    with pytest.raises(IllegalTransition):
        next_state(State.CLOSED, event)


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.AWAITING_HELLO, Input.REQUEST),
        (State.AWAITING_HELLO, Input.TOKEN_EXPIRED),
        (State.OPEN, Input.HELLO_OK),
        (State.OPEN, Input.DRAIN_TIMEOUT),
        (State.DRAINING, Input.DRAIN),
        (State.DRAINING, Input.HELLO_BAD),
    ],
)
def test_illegal_transition_raises_a_local_error(state: State, event: Input) -> None:
    with pytest.raises(LocalError, match=state.value):
        next_state(state, event)


def test_every_state_is_reachable_from_awaiting_hello() -> None:
    reached = {State.AWAITING_HELLO}
    frontier = [State.AWAITING_HELLO]
    while frontier:
        source = frontier.pop()
        for (state, _), target in TRANSITIONS.items():
            if state is source and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(State)


def test_every_input_appears_in_the_table() -> None:
    assert {event for _, event in TRANSITIONS} == set(Input)


def test_mermaid_diagram_renders_every_state_and_input() -> None:
    text = mermaid_diagram()
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert "    [*] --> awaiting_hello" in lines
    assert "    closed --> [*]" in lines
    for state in State:
        assert state.value in text
    for event in Input:
        assert event.value in text


def test_mermaid_diagram_has_one_arrow_per_state_pair() -> None:
    arrows = [line for line in mermaid_diagram().splitlines() if ": " in line]
    pairs = {(s, t) for (s, _), t in TRANSITIONS.items()}
    assert len(arrows) == len(pairs)
    assert "    awaiting_hello --> open: valid hello" in arrows
    assert any(
        line.startswith("    open --> closed: ") and "token expired" in line for line in arrows
    )


def test_mermaid_diagram_is_deterministic() -> None:
    assert mermaid_diagram() == mermaid_diagram()
    assert mermaid_diagram().endswith("\n")
