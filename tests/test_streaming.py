"""The streaming room on its own: text pieces at token boundaries, and a live stream whose reader
stops early stops the strategy (its next commit raises ``StreamClosed``)."""

from __future__ import annotations

import threading

import pytest

from align_chains.chat_models.streaming import StreamClosed, live_pieces, text_pieces


@pytest.mark.parametrize("text", ["Sleep well: dim the lights.", "Café ☕ naïve 日本語 🙂 done"])
def test_text_pieces_concatenate_to_the_answer(tiny_policy, text):
    ids = tiny_policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = list(text_pieces(tiny_policy, ids, text))
    assert "".join(pieces) == text
    assert len(pieces) > 1 and all(pieces)
    assert not any("\ufffd" in p for p in pieces)  # never half a multi-byte character


def test_a_reader_that_stops_early_stops_the_strategy(tiny_policy):
    ids = tiny_policy.tokenizer(" one two three four", add_special_tokens=False)["input_ids"]
    reader_left, finished, outcome = threading.Event(), threading.Event(), []

    def run(on_commit):
        try:
            on_commit(0, ids[:2])
            reader_left.wait(timeout=30)
            on_commit(0, ids[2:])
            outcome.append("kept running")
        except StreamClosed:
            outcome.append("closed")
            raise
        finally:
            finished.set()
        raise AssertionError("a closed stream's strategy must not finish")

    pieces, holder = live_pieces(run, tiny_policy, stops=[])
    first = next(pieces)
    assert tiny_policy.decode(ids[:2]).startswith(first)
    pieces.close()  # the consumer stops reading
    reader_left.set()
    assert finished.wait(timeout=30)
    assert outcome == ["closed"]
    assert holder == []  # no result: the run was abandoned
