"""DARWIN's trace events, typed: one dataclass per event, written and read in one place.

The DARWIN search (``darwin_driver.py``, on a local policy or over a wrapped chat model) records
these events, and ``plots.py`` reads them back. A result keeps its
trace as flat JSON-ready dicts (``record()``: ``{"event": ..., <fields in order>}``), so what a
user stores or compares stays plain data; ``from_record`` turns such a dict back into its event.

Events, in the order a search emits them:

- ``Seed``: the first answer s0 and its reward, which seeds the archive;
- ``ArchiveEntry``: each archive instruction at a cycle's start (``parent``: the one drawn);
- ``Mutation``: each of the cycle's n instructions (``parsed``: False where the parent stood in);
- ``Score``: each candidate at each scoring (every m tokens), and whether it made the top k;
- ``Replace``: a candidate outside the top k turned into a copy of a top-k one;
- ``Winner``: the cycle's (up to) two most frequent top-k mutations, and whether the archive took it;
- ``CycleEnd``: the cycle's best reward and the best of all cycles so far.

Over an API, calls can fail after their retries: ``MutationFailed`` (the parent stands in for the
list) and ``CallFailed`` (a candidate dropped) say so; the local search never emits them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from align_chains.errors import InvalidInputError
from align_chains.strategies.mutation import ParsedMutations

Record = dict[str, Any]
_Event = TypeVar("_Event", bound="TraceEvent")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TraceEvent:
    """One trace event; ``record()`` is its flat dict form, ``from_record`` reads one back."""

    event: ClassVar[str]
    cycle: int

    def record(self) -> Record:
        """``{"event": <name>, <each field in declaration order>}``."""
        return {"event": self.event, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_record(cls: type[_Event], record: Mapping[str, Any]) -> _Event:
        """The event a flat record describes (``prompt``, added to batched traces, is ignored)."""
        if record.get("event") != cls.event:
            got = record.get("event")
            raise InvalidInputError(f"Expected a {cls.event!r} trace record, got event={got!r}.")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in record and _required(f))
        if missing:
            raise InvalidInputError(
                f"This {cls.event!r} trace record lacks {', '.join(missing)}; pass the records of a DARWIN "
                "result's trace (StrategyResult.trace, or response_metadata['trace'] of RerankChatModel)."
            )
        return cls(**{key: value for key, value in record.items() if key in names})


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seed(TraceEvent):
    """s0 and its reward; over an API a failed s0 has ``reward=None`` and ``failed`` instead of
    ``tokens``/``finished`` (the instruction then enters the archive unscored)."""

    event: ClassVar[str] = "seed"
    instruction: str
    reward: float | None
    tokens: int | None = None
    finished: bool | None = None
    failed: str | None = None

    def record(self) -> Record:
        record = super().record()
        for key in ("tokens", "finished") if self.failed is not None else ("failed",):
            del record[key]
        return record


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArchiveEntry(TraceEvent):
    """One archive instruction at a cycle's start (``reward`` None: the unscored seed)."""

    event: ClassVar[str] = "archive"
    instruction: str
    reward: float | None
    parent: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class MutationFailed(TraceEvent):
    """Over an API: the call for the cycle's list of rewrites failed; the parent stands in."""

    event: ClassVar[str] = "mutation_failed"
    parent_instruction: str
    error: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mutation(TraceEvent):
    """One of the cycle's n instructions (``parsed`` False: the list fell short, the parent stands
    in; ``dropped``: the rewrite ``mutation_mode="guard"`` replaced by the parent, as it lost a term
    of the original instruction; absent from the record when nothing was dropped)."""

    event: ClassVar[str] = "mutation"
    mutation: int
    instruction: str
    parent_instruction: str
    parsed: bool
    dropped: str | None = None

    def record(self) -> Record:
        record = super().record()
        if self.dropped is None:
            del record["dropped"]
        return record


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallFailed(TraceEvent):
    """Over an API: a candidate's call failed after its retries; the candidate is dropped."""

    event: ClassVar[str] = "call_failed"
    segment: int
    row: int
    mutation: int
    error: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Score(TraceEvent):
    """A candidate at a scoring (segment s: after s * m tokens)."""

    event: ClassVar[str] = "score"
    segment: int
    row: int
    mutation: int
    reward: float | None
    tokens: int
    finished: bool
    top_k: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class Replace(TraceEvent):
    """Row ``row`` (outside the top k) became a copy of top-k row ``source``."""

    event: ClassVar[str] = "replace"
    segment: int
    row: int
    source: int
    reward: float | None
    source_reward: float | None
    mutation: int
    source_mutation: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Winner(TraceEvent):
    """One of the cycle's two most frequent top-k mutations; ``added``: it beat the parent."""

    event: ClassVar[str] = "winner"
    mutation: int
    instruction: str
    wins: int
    reward: float | None
    parent_reward: float | None
    added: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class CycleEnd(TraceEvent):
    """The cycle's best final reward and the best reward of all candidates so far."""

    event: ClassVar[str] = "cycle_end"
    reward: float | None
    best_reward: float | None


#: every event class by its ``event`` name
EVENTS: dict[str, type[TraceEvent]] = {
    cls.event: cls
    for cls in (Seed, ArchiveEntry, MutationFailed, Mutation, CallFailed, Score, Replace, Winner, CycleEnd)
}


def read(record: Mapping[str, Any]) -> TraceEvent:
    """The event a flat trace record describes, whichever it is."""
    cls = EVENTS.get(record.get("event"))  # type: ignore[arg-type]
    if cls is None:
        raise InvalidInputError(
            f"Unknown DARWIN trace event {record.get('event')!r}; known: {sorted(EVENTS)}."
        )
    return cls.from_record(record)


def records(events: list[TraceEvent], **extra: Any) -> list[Record]:
    """The flat records of ``events``, each led by ``extra`` (e.g. ``prompt=p`` in a batch)."""
    return [{**extra, **event.record()} for event in events]


def finite(value: float) -> float | None:
    """An archive reward as recorded: None for an unscored instruction (-inf in the archive)."""
    return None if value == -math.inf else value


def archive_events(archive: Mapping[str, float], cycle: int, parent: str) -> list[ArchiveEntry]:
    """The archive at a cycle's start, marking the drawn parent."""
    return [
        ArchiveEntry(cycle=cycle, instruction=text, reward=finite(value), parent=text == parent)
        for text, value in archive.items()
    ]


def mutation_events(
    cycle: int, parent: str, parsed: ParsedMutations, dropped: list[str | None] | None = None
) -> list[Mutation]:
    """The cycle's n instructions as parsed from the policy's list of rewrites; ``dropped``: per
    item, the rewrite the guard dropped there (``guard_mutations``), None where none was."""
    lost = dropped or [None] * len(parsed.instructions)
    return [
        Mutation(cycle=cycle, mutation=i, instruction=instruction, parent_instruction=parent,
                 parsed=i < parsed.parsed, dropped=lost[i])
        for i, instruction in enumerate(parsed.instructions)
    ]  # fmt: skip
