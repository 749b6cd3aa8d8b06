"""The implicit (DPO) reward: beta * [log pi_tuned(y|x) - log pi_untuned(y|x)].

Two ways to get the pair:

- two language models sharing a vocabulary, e.g. a DPO model and its SFT reference:
  ``ImplicitReward(tuned="org/dpo-model", untuned="org/sft-model")``;
- one model, offline, classifier-free-guidance style: the policy with and without a principle
  in its system prompt: ``ImplicitReward(policy, principle="Answer concisely and politely")``.

As a RewardModel it scores text (the response is tokenised with the tuned model's tokenizer and
both models read prompt + response in one batched forward each), so every strategy can use it.
Guided decoders get more: ``views`` exposes the pair as lockstep decoding views so value-guided
decoding reuses the log-probabilities it already computes, and ``branch_scorer`` gives ARGS an
incremental scorer that needs no forward pass for the k candidates at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.forward import left_pad, run
from align_chains.engine.lockstep import Lockstep, View
from align_chains.engine.sampling import SamplingParams
from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation
from align_chains.models.policy import Policy, load_policy
from align_chains.rewards.base import RewardModel
from align_chains.rewards.incremental import BranchScorer, same_vocabulary


def with_principle(conversation: Conversation, principle: str) -> Conversation:
    """The conversation with ``principle`` added to its system prompt (or as the system prompt)."""
    messages = [dict(m) for m in conversation]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{principle}"
        return messages
    return [{"role": "system", "content": principle}, *messages]


def check_shared_vocabulary(base: Policy, other: Policy, why: str) -> None:
    """Raise a clear error when ``other`` does not share ``base``'s vocabulary."""
    if not same_vocabulary(base.tokenizer, other.tokenizer):
        raise InvalidInputError(
            f"{why} needs models that share one vocabulary, but {other.name!r} "
            f"({len(other.tokenizer)} tokens) and {base.name!r} ({len(base.tokenizer)} tokens) have "
            "different tokenizers, so their next-token distributions cannot be combined token by "
            "token. Use a tuned/untuned pair from the policy's model family, or principle=... to "
            "guide the policy with itself."
        )


class ImplicitReward(RewardModel):
    """``beta * (sum log pi_tuned(y|x') - sum log pi_untuned(y|x))`` summed over response tokens.

    With ``principle``, the tuned side reads the prompt with the principle in its system prompt
    and both sides are the same model (weights shared). It also gives ARGS a fast token-level
    scorer (``branch_scorer``) and IVG its guide.

    Args:
        tuned: The tuned LM (e.g. a DPO model): a loaded Policy or a ``load_policy`` spec.
        untuned: Its untuned reference (e.g. the SFT model), on the same vocabulary. Pass
            either this or ``principle``.
        principle: Compare ``tuned`` with and without this sentence in its system prompt
            instead of against a second model.
        beta: Scale of the log-ratio (default 1).
        name: How the reward is named in metadata and errors.
        device: ``"cpu"``, ``"cuda"``, ... for models loaded from specs (automatic when None).

    Examples:
        >>> from align_chains import ImplicitReward
        >>> polite = ImplicitReward("smollm2-135m-instruct", principle="Answer politely.")  # doctest: +SKIP
        >>> dpo = ImplicitReward("./models/small-dpo", "./models/small-sft")  # doctest: +SKIP
        >>> polite.score(["Hi"], ["Hello! How can I help?"])  # doctest: +SKIP
    """

    def __init__(
        self,
        tuned: Policy | str,
        untuned: Policy | str | None = None,
        *,
        principle: str | None = None,
        beta: float = 1.0,
        name: str | None = None,
        device: str | None = None,
    ) -> None:
        if principle is not None and not principle.strip():
            raise InvalidInputError("principle is empty: pass a sentence the answers should follow.")
        if principle is None and untuned is None:
            raise InvalidInputError(
                "ImplicitReward needs an untuned reference model (untuned=...) or a principle "
                "(principle=...) to compare the tuned model against."
            )
        if principle is not None and untuned is not None:
            raise InvalidInputError("Pass either untuned=... or principle=..., not both.")
        if not isinstance(beta, int | float) or isinstance(beta, bool) or not beta > 0:
            raise InvalidInputError(f"beta must be a positive number; got {beta!r}.")
        self.tuned = load_policy(tuned, device=device)
        self.untuned = self.tuned if untuned is None else load_policy(untuned, device=device)
        if self.untuned is not self.tuned:
            check_shared_vocabulary(self.tuned, self.untuned, "The implicit reward")
        self.principle = principle
        self.beta = float(beta)
        self.name = name or (
            f"implicit({self.tuned.name} | principle)"
            if principle
            else f"implicit({self.tuned.name} vs {self.untuned.name})"
        )

    def tuned_prompt(self, conversation: Conversation) -> Conversation:
        return with_principle(conversation, self.principle) if self.principle else list(conversation)

    def views(self, conversations: Sequence[Conversation]) -> tuple[View, View]:
        """The (tuned, untuned) decoding views of these prompts."""
        return (
            View(self.tuned, [self.tuned.render(self.tuned_prompt(c)) for c in conversations]),
            View(self.untuned, [self.untuned.render(list(c)) for c in conversations]),
        )

    # -- scoring text ----------------------------------------------------------------------
    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        tuned, untuned = self.views(prompts)
        answers = [self.tuned.tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
        difference = _response_logprob(tuned, answers) - _response_logprob(untuned, answers)
        return (self.beta * difference).tolist()

    # -- scoring branches (ARGS) -------------------------------------------------------------
    def branch_scorer(self, policy: Policy, counters: ComputeCounters) -> BranchScorer | None:
        """Incremental scoring on ``policy``'s tokens, or None when the vocabularies differ."""
        if not same_vocabulary(policy.tokenizer, self.tuned.tokenizer):
            return None
        return ImplicitBranchScorer(self, counters)


def _response_logprob(view: View, answers: list[list[int]]) -> torch.Tensor:
    """Sum of log pi(answer | prompt) per row, one left-padded forward over prompt + answer."""
    policy = view.policy
    device = policy.device
    sequences = [[*p, *a] for p, a in zip(view.prompts, answers, strict=True)]
    # Responses are right-aligned: only the last (longest answer + 1) positions predict answer
    # tokens, so only their logits are computed and read in fp32, not [rows, width, V].
    tail = max(len(a) for a in answers) + 1
    ids, mask = left_pad(sequences, policy.pad_token_id, device)
    logits = run(policy.model, ids, new_mask=mask, logits_to_keep=tail).logits
    assert logits is not None
    logits = logits[:, -tail:]
    scored = torch.zeros(ids.shape, dtype=torch.bool, device=device)
    for r, answer in enumerate(answers):  # marks the answer columns, not a decode step
        if answer:
            scored[r, ids.shape[1] - len(answer) :] = True
    ids, scored = ids[:, -tail:], scored[:, -tail:]
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logprobs * scored[:, 1:]).sum(-1).cpu()


class ImplicitBranchScorer(BranchScorer):
    """ARGS branches under the implicit reward: the tuned and untuned views decode the response
    in lockstep, so a candidate's reward is the running sum plus one log-prob difference read
    from logits already computed. No forward pass per candidate."""

    def __init__(self, reward: ImplicitReward, counters: ComputeCounters) -> None:
        self.reward = reward
        self.counters = counters
        self.lockstep: Lockstep | None = None
        self.total: torch.Tensor | None = None
        self._difference: torch.Tensor | None = None

    def start(
        self, conversations: Sequence[Conversation], prompt_of_row: Sequence[int], max_new_tokens: int
    ) -> None:
        rows = torch.bincount(torch.as_tensor(list(prompt_of_row)), minlength=len(conversations)).tolist()
        params = SamplingParams(max_new_tokens=max_new_tokens)
        # the guide's forwards are reward work: counted as reward calls, not policy forward passes
        self.lockstep = Lockstep(self.reward.views(conversations), rows, params, ComputeCounters())
        self.counters.reward_calls += 1
        self.counters.reward_items += self.lockstep.size
        self.total = torch.zeros(self.lockstep.size)

    def _step_difference(self) -> torch.Tensor:
        """``beta * (log pi_tuned - log pi_untuned)`` over the vocabulary for the next token of every row."""
        assert self.lockstep is not None
        if self._difference is None:
            tuned = torch.log_softmax(self.lockstep.logits(0), dim=-1)
            untuned = torch.log_softmax(self.lockstep.logits(1), dim=-1)
            vocab = min(tuned.shape[-1], untuned.shape[-1])
            self._difference = self.reward.beta * (tuned[:, :vocab] - untuned[:, :vocab].to(tuned.device))
        return self._difference

    def score(self, candidates: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        assert self.total is not None
        step = self._step_difference().gather(-1, candidates.to(self.reward.tuned.device)).cpu()
        self.counters.reward_calls += 1
        self.counters.reward_items += int(candidates.numel())
        return (self.total[:, None] + step).to(candidates.device)

    def commit(self, column: torch.Tensor, tokens: torch.Tensor) -> None:
        assert self.lockstep is not None and self.total is not None
        step = self._step_difference().gather(-1, tokens.to(self.reward.tuned.device)[:, None])
        self.total = self.total + step.squeeze(-1).cpu()
        self._difference = None
        if not self.lockstep.done:
            self.lockstep.append(tokens)
