"""The policy: a causal LM, its tokenizer and its chat template, loaded once per process."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from align_chains.errors import InvalidInputError, ModelLoadError
from align_chains.models.chat import CONTINUE_FINAL, Conversation, validate_conversation
from align_chains.models.embedded import EMBEDDED_POLICY, POLICY_ALIASES, converted_policy_dir
from align_chains.models.hub import resolve_model_dir
from align_chains.models.rendering import ContentTokenizer
from align_chains.models.tool_calls import template_takes_tools
from align_chains.models.tool_formats import (
    DEFAULT_TOOL_FORMAT,
    call_markers,
    detect_tool_format,
    template_messages,
)
from align_chains.settings import resolve_device, resolve_dtype
from align_chains.turns import TurnLock


@dataclass(eq=False)
class Policy:
    """A loaded causal LM ready for the decoding engine.

    ``lock`` serialises generation on this model: concurrent requests from several threads
    or tasks queue instead of fighting over the same cores or GPU memory (a ``TurnLock``:
    requests the scheduler runs side by side hand it to each other between forward passes). Build one with
    ``load_policy``; pass it to several chat models to share one load.

    Args:
        model: The transformers causal LM (``PreTrainedModel``).
        tokenizer: Its tokenizer.
        name: The spec it was loaded from (reported as ``model_name``).
        chat_template: A Jinja chat template overriding the tokenizer's (default: the
            tokenizer's own; a policy without any fails with a clear error).
        content_special_tokens: Read special-token strings inside message content as control
            tokens (default False: content is always tokenised as text, so a message cannot
            forge a turn; see docs/tool_calling.md). Only for trusted input that needs raw tokens.
        lock: The lock that serialises generation (one per policy; reentrant, taken in turns).
        scheduler: The worker that batches concurrent chat-model calls on this policy (set on
            first use by ``chat_models.concurrent_calls``).

    Examples:
        >>> from align_chains import BestOfNChatModel, load_policy
        >>> policy = load_policy()  # doctest: +SKIP
        >>> policy.name, policy.device, policy.model.dtype  # doctest: +SKIP
        >>> a, b = BestOfNChatModel(policy=policy), BestOfNChatModel(policy=policy, n=8)  # doctest: +SKIP
    """

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    name: str
    chat_template: str | None = None
    content_special_tokens: bool = False
    lock: TurnLock = field(default_factory=TurnLock, repr=False)
    scheduler: Any = field(default=None, repr=False)  # chat_models.concurrent_calls, on first use

    def __post_init__(self) -> None:
        self.model.eval()
        if self.chat_template is None:
            self.chat_template = getattr(self.tokenizer, "chat_template", None)
        if self.chat_template is None:
            raise ModelLoadError(
                f"Policy {self.name!r} has no chat template: pass chat_template=... to "
                "load_policy (a Jinja template as used by tokenizer.apply_chat_template)."
            )

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def context_length(self) -> int:
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(getattr(self.tokenizer, "model_max_length", 2048))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every token that ends a response: the generation config's EOS ids and the tokenizer's."""
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if source is None:
                continue
            ids.update([source] if isinstance(source, int) else source)
        return tuple(sorted(ids))

    @property
    def pad_token_id(self) -> int:
        for candidate in (
            self.tokenizer.pad_token_id,
            self.model.generation_config.pad_token_id,
            self.eos_token_ids[0] if self.eos_token_ids else None,
        ):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def takes_tools(self) -> bool:
        """Whether the chat template renders tools itself (else the system-prompt fallback is used)."""
        return template_takes_tools(self.chat_template)

    @property
    def tool_format(self) -> str:
        """The tool-call family of the chat template (``models.tool_formats``); a template without
        tools gets the system-prompt fallback, which asks for the Hermes format."""
        return detect_tool_format(self.chat_template) if self.takes_tools else DEFAULT_TOOL_FORMAT

    def call_marker_tokens(self, tool_format: str) -> tuple[tuple[str, int], ...]:
        """``(marker, token id)`` for each of ``tool_format``'s call markers that the tokenizer holds
        as one added token (Mistral's ``[TOOL_CALLS]``, Qwen's ``<tool_call>``): the grammar then
        asks for that token, as the model was trained, not for the marker spelled in text pieces."""
        added = {t.content: i for i, t in self.tokenizer.added_tokens_decoder.items()}
        return tuple((m, added[m]) for m in call_markers(tool_format) if m in added)

    def render(self, messages: Conversation, *, add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the chat-templated conversation, ready to prefill."""
        validate_conversation(messages)
        from jinja2 import TemplateError

        templated, tools = template_messages(messages, self.takes_tools, self.tool_format)
        # a final assistant message marked CONTINUE_FINAL is left open for the model to go on writing
        # (vLLM's continue_final_message), instead of being closed and followed by a new turn
        extend = bool(templated[-1].pop(CONTINUE_FINAL, False)) and templated[-1]["role"] == "assistant"

        def render_text(conversation: list[dict[str, Any]], tool_specs: list | None) -> str:
            return self.tokenizer.apply_chat_template(
                conversation,
                tools=tool_specs,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt and not extend,
                **({"continue_final_message": True} if extend else {}),
            )

        try:
            if self.content_special_tokens:  # the documented opt-out: content may hold control tokens
                return self.tokenizer(render_text(templated, tools), add_special_tokens=False)["input_ids"]
            return self._content_tokenizer().tokenize(render_text, templated, tools)
        except TemplateError as exc:
            roles = sorted({m["role"] for m in messages})
            raise InvalidInputError(
                f"The chat template of {self.name!r} rejected this conversation (roles {roles}): "
                f"{exc}. Remove or merge the messages with roles it cannot take."
            ) from exc

    def _content_tokenizer(self) -> ContentTokenizer:
        """The tokenizer's special tokens, read once per policy (and again if the tokenizer changes)."""
        cached = self.__dict__.get("_content_tokens")
        if cached is None or cached.tokenizer is not self.tokenizer:
            cached = self.__dict__["_content_tokens"] = ContentTokenizer(self.tokenizer)
        return cached

    def render_prompt(self, messages: Conversation, *, prepared_for: Any = None) -> RenderedPrompt:
        """``render`` kept with its conversation, so a run on this policy does not render it again."""
        return RenderedPrompt(messages, tuple(self.render(messages)), self, prepared_for)

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise before generation when prompt plus response cannot fit the context window."""
        limit = self.context_length
        if prompt_tokens + max_new_tokens > limit:
            raise InvalidInputError(
                f"The prompt has {prompt_tokens} tokens and up to {max_new_tokens} new tokens "
                f"were requested, but {self.name!r} has a context of {limit} tokens. Shorten the "
                "prompt or lower max_tokens."
            )

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)


@dataclass(frozen=True, eq=False)
class RenderedPrompt:
    """A conversation validated and chat-templated once by ``policy``, with its token ids.

    A strategy run on the same policy takes the ids as they are (``strategies.base.prepare_prompts``)
    instead of validating and rendering the conversation again: the server renders a request
    once, when it admits it, and carries the ids to the run. On another policy it is rendered anew.
    """

    conversation: Conversation
    token_ids: tuple[int, ...]
    policy: Policy
    prepared_for: Any = None  # the output contract already applied to the conversation, if any


_LOADED: weakref.WeakValueDictionary[tuple, Policy] = weakref.WeakValueDictionary()
_LOAD_LOCK = threading.Lock()


def load_policy(
    spec: str | Policy = EMBEDDED_POLICY,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    device_map: str | dict | None = None,
    chat_template: str | None = None,
    content_special_tokens: bool = False,
) -> Policy:
    """Load a policy from a Hugging Face id, a local directory or the embedded default name.

    Loading the same spec twice in a process returns the first load. ``device_map='auto'``
    spreads a large model over the available GPUs through accelerate. Offline first: an id
    that is neither a directory nor in the local Hugging Face cache fails at once with a
    ``ModelLoadError`` that says how to get a local copy, unless the Hub is reachable.

    Args:
        spec: A Hugging Face id, a local model directory, ``"smollm2-135m-instruct"`` (the
            embedded default), or a loaded Policy (returned as is).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (default: CUDA when present, else CPU).
        dtype: ``"bf16"``, ``"fp16"``, ``"fp32"`` or a torch dtype (default: bf16 on a GPU
            that supports it, else fp32).
        device_map: ``"auto"`` or an accelerate device map, to shard a large model.
        chat_template: A Jinja chat template for models whose tokenizer has none.
        content_special_tokens: Tokenise special-token strings inside message content as
            control tokens (the opt-out of the default, which reads all content as text).

    Returns:
        The loaded ``Policy``.

    Examples:
        >>> from align_chains import load_policy
        >>> policy = load_policy()  # doctest: +SKIP
        >>> local = load_policy("./models/Qwen2.5-0.5B-Instruct", dtype="bf16")  # doctest: +SKIP
        >>> big = load_policy("meta-llama/Llama-3.1-70B-Instruct", device_map="auto")  # doctest: +SKIP
    """
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInputError(
            f"Policy spec must be a model id, a directory or {EMBEDDED_POLICY!r}; got {spec!r}."
        )
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    key = (
        spec,
        str(resolved_device),
        str(resolved_dtype),
        repr(device_map),
        chat_template,
        content_special_tokens,
    )
    with _LOAD_LOCK:
        cached = _LOADED.get(key)
        if cached is not None:
            return cached
        policy = _load(spec, resolved_device, resolved_dtype, device_map, chat_template)
        policy.content_special_tokens = content_special_tokens
        _LOADED[key] = policy
        return policy


def _load(
    spec: str,
    device: torch.device,
    dtype: torch.dtype,
    device_map: str | dict | None,
    chat_template: str | None,
) -> Policy:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.lower() in POLICY_ALIASES:
        path, name = converted_policy_dir(), EMBEDDED_POLICY
    else:
        path, name = resolve_model_dir(spec, what="policy"), spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot load policy {spec!r} from {path}: {exc}") from exc
    if device_map is None:
        model.to(device)
    return Policy(model=model, tokenizer=tokenizer, name=name, chat_template=chat_template)
