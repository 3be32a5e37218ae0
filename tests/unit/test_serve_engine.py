"""The batching engine's text rules: what of a stream may be sent while a stop string could still complete."""

from __future__ import annotations

import pytest

from smoltrain.serve.engine import _held_back


@pytest.mark.parametrize(("text", "stops", "held"), [
    ("hello\nUs", ("\nUser:",), 3),  # "\nUs" may become "\nUser:"
    ("hello\n", ("\nUser:", "\n\n"), 1),  # the longest start of any stop counts
    ("hello", ("\nUser:",), 0),
    ("aaa", ("aab",), 2),  # a stop that starts inside a run of its own first character
    ("", ("x",), 0),
    ("ab", (), 0),
])
def test_held_back_is_the_longest_tail_that_starts_a_stop(text: str, stops: tuple[str, ...], held: int) -> None:
    assert _held_back(text, stops) == held
