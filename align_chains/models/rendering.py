"""Chat templates tokenised so that message content is always text, never control tokens.

A user who writes ``<|im_end|><|im_start|>system`` in a message must not close their own turn
and open a system turn. The template's own markers stay special; the strings a caller supplies
(every message's content, tool-call names and arguments, tool results, tool descriptions) are
tokenised with ``split_special_tokens=True``, as OpenAI's API and careful servers do.

How: the template is rendered twice, once as usual and once with each supplied string replaced
by a placeholder (private-use code points, with the string's leading and trailing whitespace kept
outside it, so ``| trim`` acts alike). The placeholder render gives the template's own text; the
real render is walked piece by piece to find where each string landed (as is, or JSON-escaped
by ``tojson``). A conversation whose strings hold no control token (nor a piece of one at either
end) is rendered once and tokenised in one call, exactly as before; one that does is tokenised
span by span. A template that rewrites content beyond
trimming and JSON escaping cannot be aligned: then the supplied strings are inserted as text
into the template's own text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use code points: no template or tokenizer marks them
_PLACEHOLDER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")


@dataclass
class _Masker:
    """Replaces supplied strings by placeholders, one per distinct string (so equality still holds)."""

    cores: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def mask(self, value: str) -> str:
        core = value.strip()
        if not core:  # empty or blank: no control token fits, and truthiness must not change
            return value
        start = value.index(core)
        if core not in self.index:
            self.index[core] = len(self.cores)
            self.cores.append(core)
        return f"{value[:start]}{_OPEN}{self.index[core]}{_CLOSE}{value[start + len(core) :]}"

    def leaves(self, value: Any) -> Any:
        """Every string inside ``value`` (dict values, list items) masked; keys kept."""
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, Mapping):
            return {k: self.leaves(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.leaves(v) for v in value]
        return value


def _mask_message(message: Mapping[str, Any], masker: _Masker) -> dict[str, Any]:
    out = dict(message)
    for key in ("content", "name"):
        if isinstance(out.get(key), str):
            out[key] = masker.mask(out[key])
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {**call, "function": masker.leaves(call["function"])} if "function" in call else call
            for call in out["tool_calls"]
        ]
    return out


def _mask_descriptions(value: Any, masker: _Masker) -> Any:
    """Tool specs with every ``description`` masked (names and JSON-schema types stay as written)."""
    if isinstance(value, Mapping):
        return {
            k: masker.mask(v) if k == "description" and isinstance(v, str) else _mask_descriptions(v, masker)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_descriptions(v, masker) for v in value]
    return value


def _variants(core: str) -> list[str]:
    """How a string may appear in a render: as is, or escaped by ``tojson``."""
    return list(dict.fromkeys([core, json.dumps(core, ensure_ascii=False)[1:-1], json.dumps(core)[1:-1]]))


def _align(skeleton: str, text: str, cores: list[str]) -> list[tuple[int, int]] | None:
    """(start, end) in ``text`` of every supplied string the skeleton holds, or None if it cannot align."""
    pieces = _PLACEHOLDER.split(skeleton)  # template text, index, template text, index, ...
    if not text.startswith(pieces[0]):
        return None
    pos, spans = len(pieces[0]), []
    for k in range(1, len(pieces), 2):
        after = pieces[k + 1]
        for variant in _variants(cores[int(pieces[k])]):
            if text.startswith(variant, pos) and text.startswith(after, pos + len(variant)):
                spans.append((pos, pos + len(variant)))
                pos += len(variant) + len(after)
                break
        else:
            return None
    return spans if pos == len(text) else None


class ContentTokenizer:
    """Tokenises rendered chats of one tokenizer with supplied strings as text (see module doc)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        specials = sorted(
            (str(t) for t in tokenizer.added_tokens_decoder.values() if getattr(t, "special", False)),
            key=len,
            reverse=True,
        )
        self.specials = specials
        self._pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
        # pieces of a control token a string could start or end with, to complete it with the template's text
        self._heads = {t[:k] for t in specials for k in range(1, len(t))}
        self._tails = {t[-k:] for t in specials for k in range(1, len(t))}
        self._longest = max((len(t) for t in specials), default=0)

    def _ids(self, text: str, *, as_text: bool) -> list[int]:
        kwargs = {"split_special_tokens": True} if as_text else {}
        return list(self.tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"])

    def _has_special(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def _may_forge(self, core: str) -> bool:
        """Whether a supplied string (or its JSON escape) holds a control token, or part of one at an end."""
        for v in _variants(core):
            if self._has_special(v):
                return True
            ends = range(1, min(len(v), self._longest) + 1)
            if any(v[-k:] in self._heads or v[:k] in self._tails for k in ends):
                return True
        return False

    def tokenize(self, render: Render, messages: list[dict[str, Any]], tools: list | None) -> list[int]:
        """Token ids of ``render(messages, tools)`` with the supplied strings tokenised as text."""
        text = render(messages, tools)
        if self._pattern is None:
            return self._ids(text, as_text=False)
        masker = _Masker()
        masked = [_mask_message(m, masker) for m in messages]
        masked_tools = _mask_descriptions(tools, masker) if tools else tools
        if not any(self._may_forge(core) for core in masker.cores):
            return self._ids(text, as_text=False)  # nothing to forge: the render as it is
        skeleton = render(masked, masked_tools)
        spans = _align(skeleton, text, masker.cores)
        if spans is None:
            return self._from_skeleton(skeleton, masker.cores)
        return self._from_spans(text, spans)

    def _from_spans(self, text: str, spans: list[tuple[int, int]]) -> list[int]:
        """Template markers outside the spans stay special; every other character is text."""
        assert self._pattern is not None
        markers = [
            m
            for m in self._pattern.finditer(text)
            if not any(m.start() < e and s < m.end() for s, e in spans)
        ]
        if len(markers) == len(self._pattern.findall(text)):
            return self._ids(text, as_text=False)  # no control token in (or across) any span
        ids: list[int] = []
        pos = 0
        for marker in markers:
            if marker.start() > pos:
                ids += self._ids(text[pos : marker.start()], as_text=True)
            ids.append(int(self.tokenizer.convert_tokens_to_ids(marker.group())))
            pos = marker.end()
        if pos < len(text):
            ids += self._ids(text[pos:], as_text=True)
        return ids

    def _from_skeleton(self, skeleton: str, cores: list[str]) -> list[int]:
        """The template's text with the supplied strings inserted as text (a template we cannot align)."""
        ids: list[int] = []
        pieces = _PLACEHOLDER.split(skeleton)
        for k, piece in enumerate(pieces):
            if k % 2:
                ids += self._ids(cores[int(piece)], as_text=True)
            elif piece:
                ids += self._ids(piece, as_text=False)
        return ids
