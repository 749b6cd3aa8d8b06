"""Hugging Face sequence-classification reward models (Skywork-Reward, ArmoRM style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from align_chains.errors import InvalidInputError, ModelLoadError
from align_chains.models.chat import Conversation, as_conversation
from align_chains.rewards.base import Prompt, RewardModel, count_tokens_read
from align_chains.rewards.soft import CausalSoftScorer, SoftScorer, split_template
from align_chains.rewards.vocab_bridge import vocabulary_bridge
from align_chains.settings import resolve_device, resolve_dtype


class ClassifierReward(RewardModel):
    """Scores the chat-templated conversation (prompt + response) with a classifier head.

    The reward is ``logits[:, label_index]``, or the ``score`` output of models that expose
    one (ArmoRM's preference score). Load one from a directory or Hub id with
    ``ClassifierReward.from_pretrained(path)`` or ``load_reward(path)``.

    Args:
        model: A loaded transformers sequence-classification model (Skywork-Reward style).
        tokenizer: Its tokenizer, with the chat template the reward model was trained on.
        name: How the reward is named in metadata and errors (default: the model's path).
        batch_size: Conversations per forward pass (default 8).
        label_index: Which logit is the reward when the head has several (default 0).

    Examples:
        >>> from align_chains import ClassifierReward
        >>> rm = ClassifierReward.from_pretrained("./models/Skywork-Reward-V2-Qwen3-0.6B")  # doctest: +SKIP
        >>> rm.score(["Give me a tip for sleep."], ["Keep a fixed bedtime."])  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        batch_size: int = 8,
        label_index: int = 0,
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}.")
        num_labels = getattr(model.config, "num_labels", 1)
        if not 0 <= label_index < num_labels:
            raise InvalidInputError(
                f"label_index={label_index} but the reward model has {num_labels} label(s)."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.label_index = label_index
        self.name = name or getattr(model.config, "name_or_path", None) or "classifier"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> ClassifierReward:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        resolved = resolve_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForSequenceClassification.from_pretrained(
                path, dtype=resolve_dtype(dtype, resolved)
            ).to(resolved)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Cannot load reward model from {path} as a sequence classifier: {exc}"
            ) from exc
        return cls(model, tokenizer, **kwargs)

    def _texts(self, prompts: list[Conversation], responses: list[str]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [
                self.tokenizer.apply_chat_template(
                    [*conv, {"role": "assistant", "content": resp}], tokenize=False
                )
                for conv, resp in zip(prompts, responses, strict=True)
            ]
        return [
            "\n\n".join(m["content"] for m in conv) + "\n\n" + resp
            for conv, resp in zip(prompts, responses, strict=True)
        ]

    def prefix_ids(self, prompt: Conversation) -> list[int]:
        """Token ids of the prompt with the assistant turn opened: what a partial response follows.

        Token-level guidance (ARGS) scores ``prefix_ids + response tokens`` incrementally.
        """
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(m["content"] for m in prompt) + "\n\n"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _score(self, prompts: list[Conversation], responses: list[str]) -> Sequence[float]:
        texts = self._texts(prompts, responses)
        device = self.model.get_input_embeddings().weight.device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                out = self.model(**enc)
            count_tokens_read(enc["attention_mask"].sum(dim=1).tolist(), offset=start)
            values = getattr(out, "score", None)
            if values is None:
                values = out.logits[:, self.label_index]
            scores.extend(values.float().reshape(len(enc["input_ids"]), -1)[:, 0].tolist())
        return scores

    def _around_response(self, conversation: Conversation) -> tuple[str, str]:
        return split_template(lambda text: self._texts([conversation], [text])[0])

    def soft_scorer(self, prompts: Sequence[Prompt], rows: Sequence[int], policy: Any) -> SoftScorer:
        """Score relaxed responses: the templated prompt is prefilled once, the response is soft.

        Exact when the classifier shares the policy's vocabulary, else through the sparse
        vocabulary bridge. Needs a decoder-only classifier with a ``score`` head (Llama, Qwen,
        Mistral, Gemma and most reward models built on them).
        """
        head = getattr(self.model, "score", None)
        if not isinstance(head, torch.nn.Module) or not hasattr(self.model, "base_model"):
            raise InvalidInputError(
                f"Reward {self.name!r} ({type(self.model).__name__}) has no decoder `score` head, "
                "which soft scoring (SEA) needs. Use a Llama/Qwen/Mistral-style sequence classifier, "
                "a JudgeReward, or a strategy that only needs scores (best-of-n, darwin)."
            )
        parts = [self._around_response(as_conversation(p)) for p in prompts]
        suffixes = {after for _, after in parts}
        if len(suffixes) != 1:
            raise InvalidInputError(
                f"Reward {self.name!r}: its template puts different text after each response, "
                "which soft scoring does not support."
            )
        encode = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        label = self.label_index
        return CausalSoftScorer(
            self.model,
            prefixes=[encode(before) for before, _ in parts],
            suffix=encode(suffixes.pop()),
            rows=rows,
            bridge=vocabulary_bridge(policy.tokenizer, self.tokenizer),
            head=lambda hidden: head(hidden)[:, label],
            pad_token_id=self.tokenizer.pad_token_id,
        )
