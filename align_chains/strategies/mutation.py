"""DARWIN's mutation step: ask the policy to rewrite an instruction, parse its list robustly.

The one-shot request is a plain conversation (user, assistant, user) rendered by the policy's
own chat template, so it works for any chat model; nothing here knows a model family. The
parser accepts numbered lists ("1.", "1)", "(1)", "1:", "Instruction 1:") and bullets, drops
empty, junk and duplicate items, and pads a short list with the instruction it was asked to
rewrite, so a garbled answer never stops the search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from align_chains.models.chat import Conversation

# One worked example; the request shows as many of these rewrites as mutations are asked for.
_EXAMPLE_INSTRUCTION = "Give me some tips for studying."
_EXAMPLE_REWRITES = (
    "What are some effective study techniques I can use to learn faster?",
    "Share practical, step-by-step advice that will help me study more efficiently.",
    "List a few habits that improve focus and memory when preparing for exams.",
    "Explain how I can organise my study time and materials better, with concrete examples.",
    "Recommend proven methods for studying, and say briefly why each one works.",
    "I want to get better at studying: what should I start doing, and what should I stop doing?",
    "Suggest simple strategies a student can use to understand and remember new material.",
    "Give me detailed guidance on studying well, covering planning, focus and revision.",
)

_MARKER = re.compile(
    r"""^\s*(?:
        (?:\(?\d{1,2}[.):\]]|\[\d{1,2}\])       # 1.  1)  (1)  1:  [1]
      | (?:instruction|rewrite|version|variant|option)\s*\#?\d{1,2}\s*[.:)\-]   # Instruction 1:
      | [-*\u2022\u2023\u25e6\u2043\u2219]       # bullets
    )\s*(?P<item>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_LABEL = re.compile(r"^(?:rewritten\s+)?(?:instruction|rewrite|version|variant)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"
MAX_ITEM_CHARS = 1000


def mutation_request_tokens(n: int) -> int:
    """Tokens ``mutation_request`` adds around the instruction (for memory estimates): about 120
    of fixed text and template, and one worked rewrite of about 20 per mutation asked, up to the 8
    examples it shows (counted on SmolLM2's template: n=1 137, n=3 180, n=8 275)."""
    return 120 + 20 * min(n, 8)


def mutation_request(instruction: str, n: int) -> Conversation:
    """The one-shot conversation asking for ``n`` rewrites of ``instruction``."""
    shown = max(1, min(n, len(_EXAMPLE_REWRITES)))
    example = "\n".join(f"{i}. {text}" for i, text in enumerate(_EXAMPLE_REWRITES[:shown], 1))
    return [
        {"role": "user", "content": _ask(_EXAMPLE_INSTRUCTION, shown)},
        {"role": "assistant", "content": example},
        {"role": "user", "content": _ask(instruction, n)},
    ]


def _ask(instruction: str, n: int) -> str:
    ways = "way" if n == 1 else f"{n} different ways"
    return (
        f"Rewrite the instruction below in {ways}. Every rewrite must ask for the same thing as "
        "the original, in other words or with more detail about what a good answer contains. "
        "Reply with a numbered list only, one rewrite per line.\n\n"
        f"Instruction: {instruction}"
    )


@dataclass(frozen=True)
class ParsedMutations:
    """``instructions`` always has exactly n items; ``parsed`` of them came from the model's list."""

    instructions: list[str]
    parsed: int

    @property
    def fell_back(self) -> bool:
        return self.parsed < len(self.instructions)


def parse_mutations(text: str, n: int, fallback: str) -> ParsedMutations:
    """Up to ``n`` distinct list items of ``text``; missing ones are ``fallback`` (the parent).

    Only lines with a list marker count: free prose, one-word junk and items without letters
    are ignored, so an unparseable answer yields ``n`` copies of ``fallback``.
    """
    items: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        match = _MARKER.match(line)
        if match is None:
            continue
        item = _clean(match.group("item"))
        key = " ".join(item.lower().split())
        if not _usable(item) or key in seen:
            continue
        seen.add(key)
        items.append(item)
        if len(items) == n:
            break
    return ParsedMutations(instructions=items + [fallback] * (n - len(items)), parsed=len(items))


def list_complete(text: str, n: int) -> bool:
    """True once ``text`` holds ``n`` usable list items and the last one's line has ended.

    Lets the mutation decode stop as soon as the list is there, instead of sampling the
    pleasantries a chat model adds after it.
    """
    complete_lines = text.splitlines()[:-1] if not text.endswith("\n") else text.splitlines()
    return parse_mutations("\n".join(complete_lines), n, "").parsed >= n


def _clean(item: str) -> str:
    item = item.strip()
    item = re.sub(r"^\*\*(.*?)\*\*:?\s*", r"\1 ", item).strip()  # **bold** lead-ins
    item = item.replace("**", "")
    item = _LABEL.sub("", item).strip()
    if len(item) >= 2 and item[0] in _QUOTES and item[-1] in _QUOTES:
        item = item[1:-1].strip()
    return item


def _usable(item: str) -> bool:
    letters = sum(ch.isalpha() for ch in item)
    return letters >= 3 and len(item.split()) >= 2 and len(item) <= MAX_ITEM_CHARS


def with_instruction(conversation: Conversation, instruction: str) -> Conversation:
    """The conversation with its last user turn replaced by ``instruction`` (system turns kept)."""
    out = [dict(m) for m in conversation]
    for message in reversed(out):
        if message["role"] == "user":
            message["content"] = instruction
            return out
    return [*out, {"role": "user", "content": instruction}]


# -- keeping the user's constraint (``Darwin(mutation_mode="guard" | "restate")``) ----------------
#: how a mutation reaches DARWIN's candidates: "rewrite" (the paper's), "guard" or "restate"
MutationMode = Literal["rewrite", "guard", "restate"]
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_QUOTED = re.compile(r"\"([^\"\n]+)\"|\u201c([^\u201d\n]+)\u201d|(?<!\w)'([^'\n]+)'(?!\w)")
_AFTER_COLON = re.compile(r":\s*([^.:;!?\n]+)")
_LIST_SPLIT = re.compile(r"\s*,\s*(?:and\s+|or\s+)?|\s+(?:and|or)\s+")
_LIST_ITEM_WORDS = 3


def constraint_terms(instruction: str) -> list[str]:
    """The terms a faithful rewrite of ``instruction`` must keep, by a generic rule (no task
    knowledge): every number, every quoted text, and every item of a list after a colon
    (two or more comma-separated items of at most three words: "use these words: rain, moon").
    Terms without a letter or digit (a quoted "- ") are not checked. Lower-cased, in order."""
    terms = [m.group(0) for m in _NUMBER.finditer(instruction)]
    terms += [next(g for g in m.groups() if g is not None) for m in _QUOTED.finditer(instruction)]
    for match in _AFTER_COLON.finditer(instruction):
        items = [item.strip(" \"'\u201c\u201d") for item in _LIST_SPLIT.split(match.group(1).strip())]
        if len(items) >= 2 and all(item and len(item.split()) <= _LIST_ITEM_WORDS for item in items):
            terms += items
    kept = (" ".join(t.lower().split()) for t in terms)
    return list(dict.fromkeys(t for t in kept if any(ch.isalnum() for ch in t)))


def keeps_terms(text: str, terms: list[str]) -> bool:
    """Whether ``text`` contains every term as a whole word or phrase (case-insensitive)."""
    lowered = " ".join(text.lower().split())
    return all(re.search(rf"(?<!\w){re.escape(term)}(?!\w)", lowered) for term in terms)


def guard_mutations(
    parsed: ParsedMutations, original: str, parent: str
) -> tuple[ParsedMutations, list[str | None]]:
    """``parsed`` with every parsed rewrite that drops a term of ``original`` (``constraint_terms``)
    replaced by ``parent``, as the parser's own fallback does; and, per item, the rewrite dropped
    there (None where none was).

    The terms come from the user's original instruction, not the parent, so a chain of
    rewrites cannot lose a term one step at a time."""
    terms = constraint_terms(original)
    kept: list[str] = []
    dropped: list[str | None] = []
    for i, item in enumerate(parsed.instructions):
        lost = i < parsed.parsed and not keeps_terms(item, terms)
        dropped.append(item if lost else None)
        kept.append(parent if lost else item)
    return ParsedMutations(instructions=kept, parsed=parsed.parsed), dropped


def restated(original: str, guidance: str) -> str:
    """The instruction a candidate answers in ``restate`` mode: the user's ``original``
    verbatim, then the mutation as added guidance (just ``original`` when they are the same)."""
    if " ".join(guidance.lower().split()) == " ".join(original.lower().split()):
        return original
    return f"{original}\n\n{guidance}"
