"""An LLM judge as a reward: log P(yes) - log P(no) that a response meets a principle.

Any causal LM can judge, the policy itself included, so the embedded default has a reward
with a meaning ("is this answer helpful and harmless?") and no second model. When the judge
shares the policy's vocabulary, its soft scoring is exact, which gives SEA a gradient path
with no vocabulary bridge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from align_chains.engine.forward import prefill_left_padded
from align_chains.errors import InvalidInputError
from align_chains.models.chat import Conversation, as_conversation, last_user_text
from align_chains.models.embedded import EMBEDDED_POLICY
from align_chains.models.policy import Policy, load_policy
from align_chains.rewards.base import Prompt, RewardModel, count_tokens_read
from align_chains.rewards.soft import CausalSoftScorer, SoftScorer, split_template
from align_chains.rewards.vocab_bridge import vocabulary_bridge

DEFAULT_PRINCIPLE = "The response is helpful, accurate and harmless."

JUDGE_PROMPT = (
    "Here is a question and a response.\n\n"
    "Question: {question}\n\n"
    "Response:\n{response}\n\n"
    'Does the response meet this principle: "{principle}"? Answer yes or no.'
)

# The response sits on its own lines so that, for BPE tokenizers, the tokens of the text around
# it are the same whether the whole prompt is tokenized at once (hard scoring) or in parts
# around a relaxed response (soft scoring).
_YES = ("yes", "Yes", " yes", " Yes", "YES")
_NO = ("no", "No", " no", " No", "NO")


def answer_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Ids of the single-token spellings of ``words``."""
    ids = {tuple(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in words}
    return sorted(t[0] for t in ids if len(t) == 1)


class JudgeReward(RewardModel):
    """Asks a causal LM whether the response meets ``principle``; reward = log P(yes) - log P(no).

    ``judge`` is a loaded Policy or a spec for ``load_policy`` (loads are shared: judging with
    the policy's own spec reuses its weights). The question shown to the judge is the last
    user message. It has an exact soft path for SEA when it shares the policy's vocabulary.

    Args:
        judge: The judging LM: a loaded Policy or a spec (default: the embedded SmolLM2).
        principle: The sentence the judge checks (default: "The response is helpful, accurate
            and harmless.").
        batch_size: Conversations per forward pass (default 8).
        device: ``"cpu"``, ``"cuda"``, ... (automatic when None).
        dtype: ``"bf16"``, ``"fp32"``, ... (automatic when None).

    Examples:
        >>> from align_chains import JudgeReward, load_policy
        >>> judge = JudgeReward(load_policy(), principle="The answer is concise.")  # doctest: +SKIP
        >>> judge.score(["Name a fruit."], ["Apple."])  # doctest: +SKIP
    """

    def __init__(
        self,
        judge: str | Policy = EMBEDDED_POLICY,
        *,
        principle: str = DEFAULT_PRINCIPLE,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        if not isinstance(principle, str) or not principle.strip():
            raise InvalidInputError("principle is empty: pass the sentence the judge should check.")
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
        self.judge = load_policy(judge, device=device, dtype=dtype)
        self.principle = principle.strip()
        self.batch_size = batch_size
        tokenizer = self.judge.tokenizer
        self.yes_ids = answer_token_ids(tokenizer, _YES)
        self.no_ids = answer_token_ids(tokenizer, _NO)
        if not self.yes_ids or not self.no_ids:
            raise InvalidInputError(
                f"The judge {self.judge.name!r} has no single-token 'yes'/'no' in its vocabulary; "
                "use another judge model."
            )
        self.name = f"judge:{self.judge.name}"

    def judge_text(self, conversation: Conversation, response: str) -> str:
        """The judge's full input: its chat template around the question, response and principle."""
        content = JUDGE_PROMPT.format(
            question=last_user_text(conversation), response=response, principle=self.principle
        )
        return self.judge.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.judge.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    def _log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        """log P(yes) - log P(no) from next-token logits ``[rows, V]`` in any dtype.

        The softmax's normaliser cancels in the difference, so only the answer columns are read,
        in fp32: a bf16 judge never needs a fp32 copy of its whole ``[rows, V]`` logits.
        """
        yes = torch.logsumexp(logits[:, self.yes_ids].float(), dim=-1)
        no = torch.logsumexp(logits[:, self.no_ids].float(), dim=-1)
        return yes - no

    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        tokenizer, model = self.judge.tokenizer, self.judge.model
        device = self.judge.device
        encoded = [
            tokenizer(self.judge_text(c, r), add_special_tokens=False)["input_ids"]
            for c, r in zip(prompts, responses, strict=True)
        ]
        count_tokens_read([len(ids) for ids in encoded])
        scores: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            out = prefill_left_padded(model, chunk, self.judge.pad_token_id, device, logits_to_keep=1)
            scores.extend(self._log_odds(out.logits[:, -1]).tolist())
        return scores

    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        """Exact when the judge shares the policy's vocabulary (the policy judging itself), else bridged."""
        tokenizer = self.judge.tokenizer
        parts = [
            split_template(lambda text, c=c: self.judge_text(c, text))
            for c in (as_conversation(p) for p in prompts)
        ]
        suffixes = {after for _, after in parts}
        assert len(suffixes) == 1, "the judge prompt ends the same way for every question"
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        lm_head = self.judge.model.get_output_embeddings()
        return CausalSoftScorer(
            self.judge.model,
            prefixes=[encode(before) for before, _ in parts],
            suffix=encode(suffixes.pop()),
            rows=rows,
            bridge=vocabulary_bridge(policy.tokenizer, tokenizer),
            head=lambda hidden: self._log_odds(lm_head(hidden)),
            pad_token_id=self.judge.pad_token_id,
        )
