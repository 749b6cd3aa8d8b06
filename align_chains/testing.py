"""Tiny random models for tests of packages built on align_chains (the integrations).

The same recipe as the core suite's fixtures: SmolLM2's real tokenizer (from the embedded
package or its converted cache, nothing downloaded) and a 2-layer random Llama built from a
config. Fast enough for unit tests, useless for quality.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from align_chains.models.embedded import gguf_path
from align_chains.models.policy import Policy
from align_chains.settings import cache_dir


@lru_cache(maxsize=1)
def smol_tokenizer() -> Any:
    """SmolLM2's tokenizer and chat template."""
    from transformers import AutoTokenizer

    models = cache_dir() / "models"
    converted = (
        next(models.glob("smollm2-135m-instruct-v*/tokenizer.json"), None) if models.is_dir() else None
    )
    if converted is not None:
        return AutoTokenizer.from_pretrained(str(converted.parent))
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def tiny_llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """A 2-layer, 32-wide Llama config on ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig

    values: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def tiny_policy(seed: int = 0, name: str = "tiny-llama") -> Policy:
    """A random tiny Llama policy with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = smol_tokenizer()
    torch.manual_seed(seed)
    return Policy(model=LlamaForCausalLM(tiny_llama_config(tokenizer)), tokenizer=tokenizer, name=name)


def taught_policy(
    lessons: list[tuple[list[int], str]],
    *,
    steps: int = 300,
    lr: float = 3e-3,
    seed: int = 0,
    name: str = "taught-tiny-llama",
) -> Policy:
    """A tiny Llama trained, here and now, to answer each rendered prompt with its response.

    ``lessons`` are ``(prompt_token_ids, response_text)`` pairs; the loss covers the response
    and its end-of-turn token only. Greedy decoding then reproduces the responses: a policy
    whose choices are its own weights', made deterministic for tests of tool calls and agents.
    """
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = smol_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, hidden_size=64, intermediate_size=128))
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    sequences, targets = [], []
    for prompt_ids, response in lessons:
        answer = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
        sequences.append(prompt_ids + answer)
        targets.append([-100] * len(prompt_ids) + answer)  # loss on the response only
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    labels = torch.tensor([t + [-100] * (width - len(t)) for t in targets])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):  # one padded batch of every lesson per step
        optimiser.zero_grad()
        hidden = model.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).last_hidden_state
        scored = labels[:, 1:] != -100  # the vocabulary projection runs on response positions only
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[scored]), labels[:, 1:][scored])
        loss.backward()
        optimiser.step()
    model.eval()
    model.generation_config.eos_token_id = end
    return Policy(model=model, tokenizer=tokenizer, name=name)
