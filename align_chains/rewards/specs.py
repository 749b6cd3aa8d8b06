"""One parser for reward specs: whatever names a reward becomes a small typed description.

``load_reward``, ``align-chains eval``, the server and the memory estimator all call
``parse_reward_spec``, so a spec means the same thing everywhere and a bad one fails here, with
a message naming the bad part and the fix, before any model loads. Nothing here loads weights:
only a ``python:`` spec imports its module (to check the function exists).

Strings:

- ``"minilm"`` / ``"all-minilm-l6-v2"``: the embedded MiniLM embedding reward;
- ``"judge"``: the policy as an LLM judge; ``"judge:<model>"``: another causal LM as the judge;
- ``"judge-principle:<sentence>"``: the policy as a judge of that principle;
- ``"python:package.module:function"``: your ``fn(prompt, response) -> float``
  (the one syntax for a function; the older bare ``package.module:function`` still works, with
  a ``FutureWarning`` saying what to write instead);
- ``"rule:distinct"``: distinct word bigrams (penalises repetition);
- ``"lexicon:w1,w2,..."``: the fraction of the listed words the answer uses;
- ``"http://host:port/score"`` (``/classify``, ``/rerank``): a reward model served on its own,
  through vLLM's score or classify API or TEI's rerank API, read from the path
  (``align_chains.rewards.served``);
- anything else: a local directory or Hub id (a sentence-transformers model becomes an
  embedding reward, anything else a sequence-classification reward).

Objects: a ``RewardModel`` or a callable is taken as given; a list of ``(spec, weight)`` pairs
is a weighted sum of each parsed spec.
"""

from __future__ import annotations

import importlib
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align_chains.errors import InvalidInputError
from align_chains.models.embedded import REWARD_ALIASES
from align_chains.rewards.base import RewardModel
from align_chains.rewards.rules import RULES, lexicon_words
from align_chains.rewards.served import api_for_url

FUNCTION_PREFIX = "python:"
_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_KINDS = (
    "'minilm', 'judge', 'judge:<model>', 'judge-principle:<sentence>', "
    "'python:package.module:function', 'rule:distinct', 'lexicon:w1,w2', "
    "'http://host:port/score' (a served reward), a model directory or Hub id"
)


@dataclass(frozen=True)
class EmbeddedSpec:
    """The embedded MiniLM embedding reward, by one of its aliases."""

    alias: str


@dataclass(frozen=True)
class JudgeSpec:
    """An LLM judge: ``model`` None is the policy passed to ``load_reward``."""

    model: str | None = None
    principle: str | None = None


@dataclass(frozen=True)
class FunctionSpec:
    """A Python function ``fn(prompt, response) -> float``, imported and checked callable."""

    target: str  # "package.module:function"
    function: Callable[..., Any]

    @property
    def text(self) -> str:
        return f"{FUNCTION_PREFIX}{self.target}"


@dataclass(frozen=True)
class RuleSpec:
    """A built-in rule of ``align_chains.rewards.rules.RULES``."""

    name: str


@dataclass(frozen=True)
class LexiconSpec:
    """The fraction of these words an answer uses."""

    words: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A local directory or Hub id: embedding or classifier, decided when it is loaded."""

    source: str


@dataclass(frozen=True)
class ServedSpec:
    """A reward model behind an HTTP endpoint; ``api`` read from the URL's path when None."""

    url: str
    api: str | None = None


@dataclass(frozen=True)
class GivenSpec:
    """A RewardModel or a callable passed as an object."""

    value: Any


@dataclass(frozen=True)
class WeightedSpec:
    """A weighted sum of rewards: ``(term, weight)`` pairs."""

    terms: tuple[tuple[ParsedReward, float], ...]


ParsedReward = (
    EmbeddedSpec
    | JudgeSpec
    | FunctionSpec
    | RuleSpec
    | LexiconSpec
    | ModelSpec
    | ServedSpec
    | GivenSpec
    | WeightedSpec
)


def parse_reward_spec(spec: Any) -> ParsedReward:
    """The typed description of a reward spec (see the module docstring); bad specs raise
    ``InvalidInputError`` naming the bad part and what to write instead."""
    if isinstance(spec, RewardModel) or (callable(spec) and not isinstance(spec, str)):
        return GivenSpec(spec)
    if isinstance(spec, str):
        return _parse_text(spec)
    if isinstance(spec, Sequence) and spec and all(isinstance(t, tuple) and len(t) == 2 for t in spec):
        return WeightedSpec(tuple((parse_reward_spec(s), _weight(w, s)) for s, w in spec))
    raise InvalidInputError(
        f"Cannot build a reward from {spec!r}: pass a RewardModel, a function (prompt, response) -> "
        f"float, a list of (spec, weight) pairs, or a string: {_KINDS}."
    )


def _weight(weight: Any, spec: Any) -> float:
    try:
        value = float(weight)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(weight, bool) or not math.isfinite(value):
        raise InvalidInputError(
            f"Weighted reward term {spec!r} has weight {weight!r}: weights are finite numbers, "
            "e.g. [('minilm', 0.7), ('rule:distinct', 0.3)]."
        )
    return value


def _parse_text(spec: str) -> ParsedReward:
    text = spec.strip()
    if not text:
        raise InvalidInputError(f"Reward spec is empty: pass one of {_KINDS}.")
    if text.lower().startswith(("http://", "https://")):
        api_for_url(text)  # fails here, naming the fix, when the path names no API
        return ServedSpec(text)
    kind, colon, rest = text.partition(":")
    kind = kind.lower()
    if kind == "judge":
        return JudgeSpec(model=rest.strip() or None)
    if kind == "judge-principle":
        if not rest.strip():
            raise InvalidInputError(
                "judge-principle: needs a sentence, e.g. judge-principle:The answer is concise."
            )
        return JudgeSpec(principle=rest.strip())
    if kind == "python":
        if not _MODULE_FUNCTION.match(rest.strip()):
            raise InvalidInputError(
                f"Reward {spec!r}: python: needs package.module:function, e.g. python:my_rewards:brevity."
            )
        return _function(rest.strip(), spec)
    if kind == "rule":
        if rest.strip() not in RULES:
            raise InvalidInputError(f"Unknown rule {rest.strip()!r} in {spec!r}; available: {sorted(RULES)}.")
        return RuleSpec(rest.strip())
    if kind == "lexicon":
        return LexiconSpec(lexicon_words(rest.split(",")))
    if text.lower() in REWARD_ALIASES:
        return EmbeddedSpec(text)
    if colon and _MODULE_FUNCTION.match(text) and not Path(text).exists():
        warnings.warn(
            f"Reward {spec!r}: the bare 'module:function' form is deprecated; write "
            f"'{FUNCTION_PREFIX}{text}' (the one syntax for a Python function reward).",
            FutureWarning,
            stacklevel=3,
        )
        return _function(text, spec)
    return ModelSpec(text)


def _function(target: str, spec: str) -> FunctionSpec:
    module_name, _, name = target.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(
            f"Reward {spec!r}: cannot import module {module_name!r} ({exc}); check it is on PYTHONPATH."
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InvalidInputError(
            f"Reward {spec!r}: {module_name} has no callable {name!r}; name a function "
            "fn(prompt, response) -> float."
        )
    return FunctionSpec(target, function)


def describe(parsed: ParsedReward) -> str:
    """The canonical text of a parsed spec (a given object: its repr)."""
    if isinstance(parsed, EmbeddedSpec):
        return parsed.alias
    if isinstance(parsed, JudgeSpec):
        if parsed.principle is not None:
            return f"judge-principle:{parsed.principle}"
        return f"judge:{parsed.model}" if parsed.model else "judge"
    if isinstance(parsed, FunctionSpec):
        return parsed.text
    if isinstance(parsed, RuleSpec):
        return f"rule:{parsed.name}"
    if isinstance(parsed, LexiconSpec):
        return f"lexicon:{','.join(parsed.words)}"
    if isinstance(parsed, ModelSpec):
        return parsed.source
    if isinstance(parsed, ServedSpec):
        return parsed.url
    if isinstance(parsed, WeightedSpec):
        return " + ".join(f"{w:g} * {describe(term)}" for term, w in parsed.terms)
    return repr(parsed.value)
