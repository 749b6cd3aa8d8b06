"""DARWIN's typed trace events: both searches' records read back as their events; bad ones fail clearly."""

from __future__ import annotations

import pytest

import align_chains.strategies.darwin_driver as darwin_module
from align_chains.errors import InvalidInputError
from align_chains.strategies.darwin import Darwin
from align_chains.strategies.darwin_trace import EVENTS, Score, Seed, read
from align_chains.strategies.mutation import ParsedMutations
from tests.test_darwin import PARAMS, SMALL, hash_reward
from tests.test_rerank_darwin import VersionWriter, continued


def test_local_trace_records_read_back_as_their_events(tiny_policy, monkeypatch):
    def distinct(text: str, n: int, fallback: str) -> ParsedMutations:
        return ParsedMutations([f"{fallback} Variant {i}:{' more' * i}" for i in range(n)], n)

    monkeypatch.setattr(darwin_module, "parse_mutations", distinct)
    (result,) = Darwin(**SMALL).run_batch(["Tell me a story."], tiny_policy, hash_reward(), PARAMS)
    assert {r["event"] for r in result.trace} == set(EVENTS) - {"mutation_failed", "call_failed"}
    for record in result.trace:
        assert {"prompt": 0, **read(record).record()} == record
        assert list(read(record).record()) == [key for key in record if key != "prompt"]  # same key order


def test_remote_trace_with_failures_reads_back_as_its_events():
    failures = {
        "Sleep tips": [TimeoutError("slow")] * 3,  # s0 fails after its retries: an unscored seed
        "mutation": [ValueError("bad list")],  # cycle 1's list fails: the parent stands in
        "Sleep tips v1": [ValueError("refused")],  # cycle 2: one candidate's first call fails
    }
    chat = VersionWriter(failures=failures)
    message = continued(chat, cycles=2, retry_attempts=3).invoke("Sleep tips")
    trace = message.response_metadata["trace"]
    events = [read(record) for record in trace]
    assert [event.record() for event in events] == trace
    assert {type(event) for event in events} == set(EVENTS.values())  # all nine kinds, failures too
    seeds = [event for event in events if isinstance(event, Seed)]
    assert seeds == [Seed(cycle=0, instruction="Sleep tips", reward=None, failed="TimeoutError: slow")]
    assert "tokens" not in trace[0] and trace[0]["failed"] == "TimeoutError: slow"


def test_a_record_missing_fields_names_them():
    with pytest.raises(InvalidInputError, match=r"'score' trace record lacks finished, mutation, reward"):
        Score.from_record({"event": "score", "cycle": 1, "segment": 1, "row": 0, "tokens": 3, "top_k": True})
    with pytest.raises(InvalidInputError, match="Unknown DARWIN trace event 'scored'"):
        read({"event": "scored", "cycle": 1})
