"""Grammar-constrained decoding: which tokens each row may sample next, by llguidance.

A ``Grammar`` says what a response must look like (a JSON schema, any JSON object, a Lark
grammar, a regex). ``compile_grammar`` checks it against a policy's tokenizer once and caches
the result per (tokenizer, grammar); ``GrammarRows`` holds one matcher per row of a decoding
batch and turns their states into one bitmask ``[rows, ceil(vocab / 32)]`` per step, applied to
the logits with one vectorised op.

Why llguidance (measured, see docs/structured_output.md): a 3 MB wheel with no dependencies
(xgrammar pulls triton and apache-tvm-ffi), matchers that fork in microseconds
(``deep_copy``, needed when a strategy duplicates rows), a batched mask fill that runs all
rows in Rust threads (no Python loop per row for the masks), and Lark grammars natively.

The one per-row Python loop left is feeding each row's sampled token to its matcher (a
few microseconds a row); llguidance's parallel consume is slower than that for small batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from align_chains.errors import InvalidInputError

_BITS = torch.arange(32, dtype=torch.int32)
# JSON laid out as json.dumps writes it (and as prompts show it): '{"a": 1, "b": [2, 3]}'. No
# other whitespace, so a policy cannot pad an answer with runs of blank tokens.
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class Grammar:
    """What every response must match, as an llguidance grammar (``text``) plus a description."""

    text: str
    description: str

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any]) -> Grammar:
        """A JSON value that validates against ``schema``, laid out as ``json.dumps`` writes it."""
        import llguidance

        if not isinstance(schema, Mapping):
            raise InvalidInputError(
                f"A JSON schema must be a JSON object (a dict), not {type(schema).__name__}."
            )
        try:
            text = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(dict(schema)),
                defaults=JSON_LAYOUT,  # type: ignore[arg-type]
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidInputError(f"The JSON schema cannot be turned into a grammar: {exc}") from exc
        return cls(text, "JSON schema " + _short(json.dumps(dict(schema), sort_keys=True)))

    @classmethod
    def any_json_object(cls) -> Grammar:
        """Any JSON object (``response_format={"type": "json_object"}``)."""
        return cls.json_schema({"type": "object"})

    @classmethod
    def lark(cls, source: str) -> Grammar:
        """A Lark grammar (llguidance's dialect: ``start`` rule, regexes in ``/.../``, %json)."""
        import llguidance

        if not isinstance(source, str) or not source.strip():
            raise InvalidInputError("grammar= needs a non-empty Lark grammar with a 'start' rule.")
        try:
            text = llguidance.LLMatcher.grammar_from_lark(source)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidInputError(f"The Lark grammar does not parse: {exc}") from exc
        return cls(text, "Lark grammar " + _short(source))

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """Text that fully matches ``pattern`` (Rust regex syntax, anchored at both ends)."""
        import llguidance

        if not isinstance(pattern, str) or not pattern:
            raise InvalidInputError("regex= needs a non-empty regular expression.")
        try:
            text = llguidance.LLMatcher.grammar_from_regex(pattern)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise InvalidInputError(f"The regex does not compile: {exc}") from exc
        return cls(text, "regex " + _short(pattern))

    @classmethod
    def any_of(cls, grammars: Sequence[Grammar], description: str) -> Grammar:
        """One of several grammars (llguidance's JSON grammar list, with ``start: g1 | g2``)."""
        parts = [json.loads(g.text)["grammars"] for g in grammars]
        if any(len(p) != 1 for p in parts):
            raise InvalidInputError("Grammar.any_of() combines single-grammar alternatives only.")
        names = [f"alt{i}" for i in range(len(parts))]
        subs = [{**p[0], "name": n} for p, n in zip(parts, names, strict=True)]
        start = {"name": "start", "lark_grammar": "start: " + " | ".join(f"@{n}" for n in names)}
        return cls(json.dumps({"grammars": [start, *subs]}), description)


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# -- compiling: tokenizers and grammars are cached ------------------------------------------
_lock = threading.Lock()
_tokenizer_keys: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_tokenizers: dict[tuple[str, int, tuple[int, ...]], Any] = {}
_compiled: dict[tuple[Any, str], CompiledGrammar] = {}
_MAX_COMPILED = 64


def _tokenizer_key(tokenizer: Any) -> str:
    """A content key for a Hugging Face tokenizer, remembered per tokenizer object."""
    try:
        return _tokenizer_keys[tokenizer]
    except (KeyError, TypeError):
        pass
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InvalidInputError(
            f"Grammar-constrained decoding needs a fast (Rust) Hugging Face tokenizer; "
            f"{type(tokenizer).__name__} is not one. Load the policy with use_fast=True."
        )
    key = hashlib.sha256(backend.to_str().encode()).hexdigest()
    with contextlib.suppress(TypeError):  # tokenizers that cannot be weakly referenced
        _tokenizer_keys[tokenizer] = key
    return key


def ll_tokenizer(tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> Any:
    """llguidance's view of a HF tokenizer (built once per tokenizer: ~2-5 s for a 49k vocab)."""
    import llguidance.hf

    key = (_tokenizer_key(tokenizer), vocab_size, tuple(eos_token_ids))
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = llguidance.hf.from_tokenizer(
                tokenizer, n_vocab=vocab_size, eos_token=list(eos_token_ids) or None
            )
        return _tokenizers[key]


@dataclass(eq=False)
class CompiledGrammar:
    """A grammar checked against one tokenizer: a fresh matcher to copy for every row."""

    grammar: Grammar
    vocab_size: int
    prototype: Any  # llguidance.LLMatcher in its start state; rows get deep copies

    def matcher(self) -> Any:
        return self.prototype.deep_copy()


def compile_grammar(
    grammar: Grammar, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]
) -> CompiledGrammar:
    """Check ``grammar`` against the tokenizer and build its start state, once per pair.

    Raises InvalidInputError (before any decoding) when the grammar does not compile.
    """
    import llguidance

    if not eos_token_ids:
        raise InvalidInputError(
            "Grammar-constrained decoding needs the policy's end-of-sequence token (the tokenizer has none)."
        )
    ll_tok = ll_tokenizer(tokenizer, vocab_size, eos_token_ids)
    key = (id(ll_tok), grammar.text)
    with _lock:
        cached = _compiled.get(key)
    if cached is not None:
        return cached
    matcher = llguidance.LLMatcher(ll_tok, grammar.text, log_level=0)
    if matcher.is_error():
        raise InvalidInputError(f"The {grammar.description} does not compile: {matcher.get_error()}")
    compiled = CompiledGrammar(grammar, vocab_size, matcher)
    with _lock:
        if len(_compiled) >= _MAX_COMPILED:
            _compiled.pop(next(iter(_compiled)))
        _compiled[key] = compiled
    return compiled


# -- per-row state --------------------------------------------------------------------------
_executor: Any = None


def _shared_executor() -> Any:
    global _executor
    if _executor is None:
        import llguidance

        _executor = llguidance.LLExecutor()
    return _executor


class GrammarRows:
    """One matcher per batch row; rows are copied, dropped and reordered with ``select``."""

    def __init__(self, compiled: CompiledGrammar, matchers: list[Any]) -> None:
        self.compiled = compiled
        self.matchers = matchers
        self.dead_end = torch.zeros(len(matchers), dtype=torch.bool)
        self.mask_seconds = 0.0  # time spent computing and applying masks
        self.mask_steps = 0

    @classmethod
    def fresh(cls, compiled: CompiledGrammar, rows: int) -> GrammarRows:
        return cls(compiled, [compiled.matcher() for _ in range(rows)])

    def select(self, index: Sequence[int]) -> None:
        """Keep rows ``index`` in that order; a row taken twice is forked (deep copy)."""
        seen: set[int] = set()
        matchers = []
        for i in index:
            m = self.matchers[i]
            matchers.append(m if i not in seen else m.deep_copy())
            seen.add(i)
        self.matchers = matchers
        self.dead_end = self.dead_end[torch.as_tensor(list(index), dtype=torch.long)]

    def subset(self, index: Sequence[int]) -> GrammarRows:
        """Rows ``index`` (distinct) as a new ``GrammarRows`` sharing their matchers (no copy)."""
        sub = GrammarRows(self.compiled, [self.matchers[i] for i in index])
        sub.dead_end = self.dead_end[torch.as_tensor(list(index), dtype=torch.long)]
        return sub

    def absorb(self, sub: GrammarRows, index: Sequence[int]) -> None:
        """Take back the flags and timings of ``sub = self.subset(index)`` (the matchers are shared)."""
        self.dead_end[torch.as_tensor(list(index), dtype=torch.long)] = sub.dead_end
        self.mask_seconds += sub.mask_seconds
        self.mask_steps += sub.mask_steps

    def allowed(self, vocab: int) -> torch.Tensor:
        """``[rows, vocab]`` bool: the tokens each row's grammar allows next (EOS once complete)."""
        import llguidance.torch as llt

        words = (self.compiled.vocab_size + 31) // 32
        bitmask = torch.zeros((len(self.matchers), words), dtype=torch.int32)
        llt.fill_next_token_bitmask_par(
            _shared_executor(), [(m, i) for i, m in enumerate(self.matchers)], bitmask
        )
        bits = (bitmask[:, :, None] >> _BITS) & 1
        allowed = bits.view(len(self.matchers), words * 32)[:, :vocab].bool()
        if allowed.shape[1] < vocab:
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
        return allowed

    def consume(self, tokens: Sequence[int], alive: Sequence[bool]) -> None:
        """Advance every live row's matcher by its sampled token; a refused token is a dead end."""
        for i, (m, token, live) in enumerate(zip(self.matchers, tokens, alive, strict=True)):
            if live and not m.is_stopped() and not m.consume_token(token):
                self.dead_end[i] = True
