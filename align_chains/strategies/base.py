"""The strategy interface: plain Python, no LangChain.

A strategy takes chat prompts, a policy, a reward and sampling settings, and returns one
StrategyResult per prompt: the final text and its reward, every candidate with its reward,
the compute counters, and a trace fit for plotting.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError, RewardError, UnknownStrategyError
from align_chains.models.chat import Conversation, as_conversation
from align_chains.models.policy import Policy, RenderedPrompt
from align_chains.progress import NullProgress, Progress
from align_chains.rewards.base import Prompt, RewardModel
from align_chains.strategies.card import StrategyCard
from align_chains.strategies.declarations import (
    Bound,
    Cost,
    MemoryPlan,
    MemoryRequest,
    NoCostModel,
    missing_cost_message,
)

#: a streaming strategy's callback: (prompt index, the tokens it just committed for it)
OnCommit = Callable[[int, list[int]], None]


@dataclass
class Candidate:
    """One response a strategy considered."""

    text: str
    reward: float | None
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        """Tokens of the answer itself; the EOS that ended it is counted in the compute counters only."""
        return len(self.token_ids)


@dataclass
class StrategyResult:
    """What a strategy returns for one prompt.

    Args:
        strategy: The strategy's registered name.
        text: The chosen answer.
        reward: Its reward (None when the reward failed and the result is partial).
        candidates: Every answer considered, with its reward, tokens and finish reason.
        best_index: Index of the chosen answer in ``candidates``.
        prompt_tokens: Tokens of the rendered prompt.
        counters: The compute the run used (``ComputeCounters``; shared by a batch).
        trace: Flat records, one per event (``pandas.DataFrame(result.trace)`` works).
        flags: Conditions worth a look, e.g. ``{"budget_exhausted": "time_budget_s"}``.
        details: Strategy-specific facts, e.g. DARWIN's ``archive``, SEA's ``reward_path``.

    Examples:
        >>> from align_chains import BestOfN, SamplingParams, load_policy, load_reward
        >>> result = BestOfN(n=4).run("Name a fruit.", load_policy(), load_reward())  # doctest: +SKIP
        >>> result.text == result.best.text, result.finish_reason  # doctest: +SKIP
    """

    strategy: str
    text: str
    reward: float | None
    candidates: list[Candidate]
    best_index: int
    prompt_tokens: int
    counters: ComputeCounters
    trace: list[dict[str, Any]] = field(default_factory=list)  # one flat record per event
    flags: dict[str, Any] = field(default_factory=dict)  # e.g. {"budget_exhausted": True}
    details: dict[str, Any] = field(default_factory=dict)  # strategy-specific, e.g. {"samples": 8}

    @property
    def best(self) -> Candidate:
        return self.candidates[self.best_index]

    @property
    def finish_reason(self) -> str:
        return self.best.finish_reason


@dataclass
class SearchRun:
    """What ``Strategy.run_batch`` hands a strategy's ``_search``: validated prompts, models, settings.

    ``counters`` are timed around the whole search. A search that has work to show when its
    reward fails sets ``partial`` to a function returning that work; ``run_batch`` attaches it
    to the ``RewardError`` it re-raises.
    """

    conversations: list[Conversation]
    token_ids: list[list[int]]
    policy: Policy
    reward: RewardModel
    params: SamplingParams
    progress: Progress
    counters: ComputeCounters
    partial: Callable[[], Any] | None = None

    @property
    def num_prompts(self) -> int:
        return len(self.conversations)


class Strategy(BaseModel, ABC):
    """Settings plus the algorithm. Settings are validated when the strategy is built.

    A subclass names itself (``name``, and ``aliases`` users may type), says what it needs
    (``needs_policy_internals``: why it cannot run over a chat API, or None when it can) and
    implements ``_search``; ``run_batch`` does the common opening and closing. Decorate it
    with ``@register_strategy`` to make it reachable by name from ``get_strategy``, the chat
    models (``chat_model_class``), the CLI and the server. To be served it declares its work
    (``cost``) and the settings that multiply it (``work_bounds``); its memory (``memory``) and
    its batching (``batch_key``) have defaults (``strategies/declarations.py``).

    Examples:
        >>> from align_chains import BestOfN, get_strategy
        >>> get_strategy("bon") is BestOfN
        True
        >>> BestOfN(n=0)
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for BestOfN
        ...
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    streams: ClassVar[bool] = False  # commits tokens as it goes (``on_commit``)
    needs_policy_internals: ClassVar[str | None] = None  # e.g. "the policy's next-token logits"
    one_prompt_chat_model: ClassVar[bool] = True  # False: only meaningful across a batch of prompts
    follows_grammar: ClassVar[bool] = True  # False: its search cannot keep to SamplingParams.grammar
    runs_on_llama_cpp: ClassVar[bool] = False  # True: it only samples, so a llama.cpp policy serves it
    card: ClassVar[StrategyCard | None] = None  # its row in the docs' strategy tables (``card.py``)
    work_bounds: ClassVar[tuple[Bound, ...]] = ()  # settings that multiply its work, a server's default limit

    # -- what it declares about its work (read by the server, the estimator and the docs) -----
    def cost(self, params: SamplingParams) -> Cost:
        """An upper bound of one prompt's work with these settings and ``params``.

        Every strategy a server runs declares one: the server admits or refuses a request on it,
        and refuses to serve a strategy without one (``NoCostModel`` says what to add).
        """
        raise NoCostModel(missing_cost_message(type(self)))

    @classmethod
    def declares_cost(cls) -> bool:
        """Whether the class declares its own ``cost`` (a server serves only those)."""
        return cls.cost is not Strategy.cost

    def memory(self, request: MemoryRequest) -> MemoryPlan:
        """The phases of one ``run_batch`` call and what each holds on the policy's device.

        By default: the engine's decoding of ``Cost.rows`` rows per prompt, from one prefill per
        prompt, and one reward call over them. Override it for tensors or caches of its own
        (SEA's backward, DARWIN's candidates, a reward cache kept across steps).
        """
        rows = request.prompts * self.cost(request.params).rows
        return MemoryPlan(rows, request.decoding(rows, request.prompts), request.reward_scoring(rows))

    def batch_key(self) -> str | None:
        """What two requests must share to run as one batched run (their prompts decoded side by
        side): by default every setting. None: a request of it always runs alone (its answer for
        one prompt would depend on the others of a batch)."""
        return json.dumps([self.name, self.model_dump()], sort_keys=True, default=repr)

    @classmethod
    def default_params(cls) -> SamplingParams:
        """The sampling settings used when ``run_batch`` gets none."""
        return SamplingParams()

    def run(
        self,
        prompt: Prompt | RenderedPrompt,
        policy: Policy,
        reward: RewardModel,
        params: SamplingParams | None = None,
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> StrategyResult:
        """Run on one prompt (a string or a list of role/content messages)."""
        return self.run_batch([prompt], policy, reward, params, progress=progress, **options)[0]

    def run_batch(
        self,
        prompts: Sequence[Prompt | RenderedPrompt],
        policy: Policy,
        reward: RewardModel,
        params: SamplingParams | None = None,
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> list[StrategyResult]:
        """Run on several prompts, batching the work across them where the method allows.

        Validates and renders the prompts before any model work (a ``RenderedPrompt`` of this
        policy is both already), times the search (every result
        reports the whole run's seconds, shared by the batch), closes the progress display, and
        on a reward failure re-raises with the work done so far attached.
        ``options`` go to ``_search`` (e.g. ``on_commit`` for a streaming strategy).
        """
        params = params or self.default_params()
        check_llama_cpp_support(type(self), policy)
        check_grammar_support(type(self), params)
        progress = progress or NullProgress()
        conversations, token_ids = prepare_prompts(prompts, policy, params)
        run = SearchRun(
            conversations=conversations,
            token_ids=token_ids,
            policy=policy,
            reward=reward,
            params=params,
            progress=progress,
            counters=ComputeCounters(batch_size=len(conversations)),
        )
        try:
            with run.counters.timed():
                results = self._search(run, **options)
        except RewardError as exc:
            raise attach_partial(exc, run.partial() if run.partial is not None else None) from exc
        finally:
            progress.close()
        for result in results:  # the batch shares the run's wall time, now that it is known
            result.counters.seconds = run.counters.seconds
        return results

    @abstractmethod
    def _search(self, run: SearchRun, **options: Any) -> list[StrategyResult]:
        """The strategy's own search over ``run``'s prompts: one result per prompt, in order."""


# canonical name -> class of every registered strategy (live: registering adds to it)
STRATEGIES: dict[str, type[Strategy]] = {}
_ALIASES: dict[str, str] = {}


def check_grammar_support(cls: type[Strategy], params: SamplingParams) -> None:
    """Refuse a grammar (tools, a schema, grammar=/regex=) a strategy cannot keep to, before any work."""
    if params.grammar is None or cls.follows_grammar:
        return
    able = sorted(name for name, other in STRATEGIES.items() if other.follows_grammar)
    raise InvalidInputError(
        f"Strategy {cls.name!r} cannot keep to a grammar ({params.grammar.description}): its search "
        "does not decode token by token. Strategies that can: " + ", ".join(able) + ". Or pass "
        "constrain=False to rank candidates by the output contract only."
    )


def check_llama_cpp_support(cls: type[Strategy], policy: Policy) -> None:
    """Refuse a llama.cpp policy for a strategy that needs more than batched sampling."""
    if getattr(policy, "runs_in_llama_cpp", False) and not cls.runs_on_llama_cpp:
        needs = cls.needs_policy_internals or "the engine's KV cache (its rows copied, cut and resumed)"
        raise InvalidInputError(
            f"Strategy {cls.name!r} needs {needs}, which a llama.cpp policy does not expose: it serves "
            "only the sampling strategies (best-of-n, adaptive-best-of-n). Load the policy with "
            "load_policy(...) (transformers) for this strategy."
        )


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make ``cls`` reachable by its ``name`` and ``aliases`` (a class decorator).

    Adding a strategy is one module that defines a ``Strategy`` subclass decorated with this,
    imported once (the built-in ones are imported by ``align_chains.strategies``).
    """
    for key in (cls.name, *cls.aliases):
        key = key.strip().lower()
        owner = STRATEGIES.get(key) or STRATEGIES.get(_ALIASES.get(key, ""))
        if owner is not None and owner is not cls:
            raise ValueError(f"Strategy name {key!r} is taken by {owner.__name__}; pick another name.")
    STRATEGIES[cls.name] = cls
    _ALIASES.update({alias.strip().lower(): cls.name for alias in cls.aliases})
    return cls


def unregister_strategy(cls: type[Strategy]) -> None:
    """Undo ``register_strategy`` (a plugin unloading, a test cleaning up)."""
    if STRATEGIES.get(cls.name) is cls:
        del STRATEGIES[cls.name]
    for alias in [a for a, owner in _ALIASES.items() if owner == cls.name]:
        del _ALIASES[alias]


def canonical_strategy_name(name: str) -> str:
    """The registered name for ``name`` or one of its aliases (raises UnknownStrategyError)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise UnknownStrategyError(f"Unknown strategy {name!r}. Available: {', '.join(sorted(STRATEGIES))}.")
    return key


def prepare_prompts(
    prompts: Sequence[Prompt | RenderedPrompt], policy: Policy, params: SamplingParams
) -> tuple[list[Conversation], list[list[int]]]:
    """Validate and render prompts; raises before any model work if one cannot run.

    A ``RenderedPrompt`` of this policy is taken as it is: validated and rendered already.
    """
    if isinstance(prompts, str):
        raise InvalidInputError("run_batch() takes a list of prompts; use run() for one prompt.")
    if not prompts:
        raise InvalidInputError("No prompts given: pass at least one.")
    conversations, token_ids = [], []
    for prompt in prompts:
        if isinstance(prompt, RenderedPrompt) and prompt.policy is policy:
            conversation, ids = [dict(m) for m in prompt.conversation], list(prompt.token_ids)
        else:
            raw = prompt.conversation if isinstance(prompt, RenderedPrompt) else prompt
            conversation = as_conversation(raw)
            ids = policy.render(conversation)
        policy.check_fits(len(ids), params.max_new_tokens)
        conversations.append(conversation)
        token_ids.append(ids)
    return conversations, token_ids


def score_texts(
    reward: RewardModel,
    conversations: Sequence[Conversation],
    texts: Sequence[str],
    counters: ComputeCounters,
    progress: Progress | None = None,
    tokens_read: list[int] | None = None,
) -> list[float]:
    """One batched reward call, counted; ``tokens_read``, if given, is extended with the tokens the
    reward model read for each text (per text, so a batch's strategy can give each prompt its own)."""
    (progress or NullProgress()).stage("scoring", total=len(texts))
    counters.reward_calls += 1
    counters.reward_items += len(texts)
    scores, read = reward.score_counted(list(conversations), list(texts))
    if tokens_read is not None:
        tokens_read.extend(read)
    (progress or NullProgress()).advance(len(texts))
    return scores


def score_completions(
    reward: RewardModel,
    conversations: Sequence[Conversation],
    completions: Sequence[Any],
    counters: ComputeCounters,
    progress: Progress | None = None,
) -> tuple[list[float], list[int]]:
    """``score_texts`` over engine completions (each answering ``conversations[c.prompt_index]``):
    (their scores, the tokens the reward model read for each)."""
    read: list[int] = []
    convs = [conversations[c.prompt_index] for c in completions]
    scores = score_texts(reward, convs, [c.text for c in completions], counters, progress, tokens_read=read)
    return scores, read


def attach_partial(error: RewardError, partial: Any) -> RewardError:
    """Keep the work done so far on a reward failure, so the caller can still use it."""
    if error.partial is None:
        error.partial = partial
    return error
