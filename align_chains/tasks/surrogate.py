"""Keyword presence from relaxed token distributions: SEA's exact surrogate for word-list tasks.

``uses_word(text, w)`` asks whether some word of the text starts with ``w``. On tokens, that is:
a token whose text is a space (or newline) followed by ``w...``, or a bare ``w...`` token at
the very start or right after a token ending in a non-alphanumeric character. With token
distributions ``p[t]`` the chance position ``t`` starts the word is

    s[t] = p[t](spaced) + p[t](bare) * q[t-1],   q[t-1] = p[t-1](ends in non-alphanumeric), q[-1] = 1

and the word is present with probability ``1 - prod_t (1 - s[t])``. On one-hot inputs this is
exactly ``uses_word`` of the decoded text (for texts tokenised the usual way: a word split
across tokens mid-way is not seen, as the tokenizer never produces that for the words in our
pools). Token sets are built once per tokenizer and word.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch


@lru_cache(maxsize=8)
def _token_texts(tokenizer: Any) -> tuple[str, ...]:
    ids = list(range(len(tokenizer)))
    return tuple(tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids))


def _cached_texts(tokenizer: Any) -> tuple[str, ...]:
    try:
        return _token_texts(tokenizer)
    except TypeError:  # an unhashable tokenizer: no cache
        return _token_texts.__wrapped__(tokenizer)


def word_token_sets(tokenizer: Any, word: str) -> tuple[list[int], list[int]]:
    """Ids of tokens starting ``word`` after whitespace ("spaced"), and bare ones ("bare")."""
    word = word.lower()
    spaced, bare = [], []
    for i, text in enumerate(_cached_texts(tokenizer)):
        low = text.lower()
        if low[:1].isspace() and low.lstrip().startswith(word) and low.strip():
            spaced.append(i)
        elif low.startswith(word):
            bare.append(i)
    return spaced, bare


def boundary_tokens(tokenizer: Any) -> list[int]:
    """Ids of tokens whose text ends in a non-alphanumeric character (a word may start after them)."""
    return [i for i, t in enumerate(_cached_texts(tokenizer)) if t and not t[-1].isalnum()]


class KeywordPresence:
    """``probs [rows, L, V] -> [rows, n_words]``: soft presence of each word (see module docstring)."""

    def __init__(self, tokenizer: Any, word_list: list[str]) -> None:
        size = len(tokenizer)
        self.spaced = torch.zeros((size, len(word_list)))
        self.bare = torch.zeros((size, len(word_list)))
        for j, word in enumerate(word_list):
            spaced, bare = word_token_sets(tokenizer, word)
            self.spaced[spaced, j] = 1.0
            self.bare[bare, j] = 1.0
        self.boundary = torch.zeros(size)
        self.boundary[boundary_tokens(tokenizer)] = 1.0

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        vocab = min(probs.shape[-1], self.spaced.shape[0])
        p = probs[..., :vocab].float()
        spaced = p @ self.spaced[:vocab].to(p.device)  # [rows, L, n]
        bare = p @ self.bare[:vocab].to(p.device)
        after = p @ self.boundary[:vocab].to(p.device)  # [rows, L]
        before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=1)
        starts = (spaced + bare * before[..., None]).clamp(0.0, 1.0)
        return 1.0 - torch.prod(1.0 - starts, dim=1)
