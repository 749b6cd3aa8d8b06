"""A sparse map from the policy's vocabulary to a reward model's, for soft (differentiable) scoring.

SEA optimises a distribution over the *policy's* tokens at each response position. A reward
model with another tokenizer needs those distributions in *its* vocabulary. The authors' code
multiplies by a dense V_policy x V_reward 0/1 matrix (about 16 GB for 128k x 32k); here the map
is two index vectors, ``sources -> targets``, one entry per policy token whose string has an
equal in the reward vocabulary. Soft embeddings are then ``probs[..., sources] @ E[targets]``:
a gather and a matmul, never a V x V matrix. Probability on policy tokens with no match shows
as the reward's unknown token (its ``[UNK]`` embedding) and gets no gradient from the reward;
``coverage`` says how many policy tokens matched. On sampled SmolLM2 answers, scoring one-hot
responses through the bridge into MiniLM correlates at 0.996 with scoring their text.

Token strings are compared after normalisation: a word-initial piece (BPE ``Ġword``,
SentencePiece ``▁word``, WordPiece ``word``) and a continuation piece (BPE ``ing``, WordPiece
``##ing``) only match their own kind, except that unspaced punctuation, digits and capitalised
pieces prefer a word-initial match (WordPiece always splits punctuation off, and an unspaced
capitalised piece usually starts a line). Case and accents are folded when the reward tokenizer lowercases.
"""

from __future__ import annotations

import threading
import unicodedata
import weakref
from dataclasses import dataclass
from typing import Any

import torch

_WORD, _CONT = "word", "cont"


@dataclass(frozen=True)
class VocabularyBridge:
    """Policy token ``sources[i]`` stands for reward token ``targets[i]``."""

    sources: torch.Tensor  # [n] long, policy token ids
    targets: torch.Tensor  # [n] long, reward token ids
    coverage: float  # matched policy tokens / non-special policy tokens
    exact: bool  # the two tokenizers share one vocabulary
    fill_id: int | None = None  # reward token standing in for unmatched mass (its [UNK])

    @property
    def size(self) -> int:
        return int(self.sources.numel())

    def embed(self, probs: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        """Expected reward-model input embeddings ``[..., d]`` of policy distributions ``[..., V_policy]``."""
        weight = embedding_weight
        if self.exact:
            return probs.to(weight.dtype) @ weight[: probs.shape[-1]]
        matched = probs[..., self.sources.to(probs.device)]
        embeds = matched.to(weight.dtype) @ weight[self.targets.to(weight.device)]
        if self.fill_id is not None:
            # mass on unmatched tokens shows as the reward's unknown token, not as a zero vector
            # (which no text ever produces); it still sends no gradient to those tokens
            rest = (1.0 - matched.sum(-1, keepdim=True)).clamp(min=0.0)
            embeds = embeds + rest.to(weight.dtype) * weight[self.fill_id]
        return embeds


_BRIDGES: weakref.WeakKeyDictionary[Any, weakref.WeakKeyDictionary[Any, VocabularyBridge]] = (
    weakref.WeakKeyDictionary()
)
_LOCK = threading.Lock()


def vocabulary_bridge(policy_tokenizer: Any, reward_tokenizer: Any) -> VocabularyBridge:
    """The bridge between two tokenizers (built once per pair, cached while both are alive)."""
    with _LOCK:
        per_policy = _BRIDGES.setdefault(policy_tokenizer, weakref.WeakKeyDictionary())
        bridge = per_policy.get(reward_tokenizer)
        if bridge is None:
            bridge = _build(policy_tokenizer, reward_tokenizer)
            per_policy[reward_tokenizer] = bridge
        return bridge


def same_vocabulary(a: Any, b: Any) -> bool:
    """True when two tokenizers map every token string to the same id."""
    return a is b or a.get_vocab() == b.get_vocab()


def _build(policy_tokenizer: Any, reward_tokenizer: Any) -> VocabularyBridge:
    policy_special = set(policy_tokenizer.all_special_ids)
    if same_vocabulary(policy_tokenizer, reward_tokenizer):
        ids = torch.tensor(sorted(policy_tokenizer.get_vocab().values()), dtype=torch.long)
        return VocabularyBridge(sources=ids, targets=ids.clone(), coverage=1.0, exact=True)

    fold = _lowercases(reward_tokenizer)
    wordpiece = any(tok.startswith("##") for tok in reward_tokenizer.get_vocab())
    reward_special = set(reward_tokenizer.all_special_ids)
    index: dict[tuple[str, str], int] = {}
    for token, rid in reward_tokenizer.get_vocab().items():
        if rid in reward_special:
            continue
        key = _reward_key(reward_tokenizer, token, wordpiece, fold)
        if key is not None:
            index.setdefault(key, rid)

    sources: list[int] = []
    targets: list[int] = []
    candidates = 0
    for token, pid in policy_tokenizer.get_vocab().items():
        if pid in policy_special:
            continue
        candidates += 1
        key = _piece_key(policy_tokenizer, token, fold)
        if key is None:
            continue
        if key[0] == _CONT and not token[:1].islower():
            # an unspaced piece that is punctuation, a digit or capitalised is most often a word
            # of its own (after a newline, or punctuation, which WordPiece always splits off)
            rid = index.get((_WORD, key[1]), index.get(key))
        else:
            rid = index.get(key)
        if rid is not None:
            sources.append(pid)
            targets.append(rid)
    order = sorted(range(len(sources)), key=sources.__getitem__)
    return VocabularyBridge(
        sources=torch.tensor([sources[i] for i in order], dtype=torch.long),
        targets=torch.tensor([targets[i] for i in order], dtype=torch.long),
        coverage=len(sources) / max(candidates, 1),
        exact=False,
        fill_id=getattr(reward_tokenizer, "unk_token_id", None),
    )


def _lowercases(tokenizer: Any) -> bool:
    if getattr(tokenizer, "do_lower_case", False):
        return True
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    return "lowercase=True" in repr(normalizer) or "Lowercase" in repr(normalizer)


def _normalise(text: str, fold: bool) -> str:
    if not fold:
        return text
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def _piece_key(tokenizer: Any, token: str, fold: bool) -> tuple[str, str] | None:
    """(word|cont, string) of a BPE or SentencePiece token."""
    text = tokenizer.convert_tokens_to_string([token])
    core = text.strip()
    if not core or "\ufffd" in core:
        return None  # whitespace, or a partial UTF-8 byte
    initial = text[:1].isspace() or token.startswith(("▁", "Ġ"))
    return (_WORD if initial else _CONT, _normalise(core, fold))


def _reward_key(tokenizer: Any, token: str, wordpiece: bool, fold: bool) -> tuple[str, str] | None:
    if wordpiece:
        if token.startswith("##"):
            core = token[2:]
            return (_CONT, _normalise(core, fold)) if core else None
        return (_WORD, _normalise(token, fold))
    return _piece_key(tokenizer, token, fold)
