"""The built-in task families (see ``tasks/base.py`` for what each part means).

Parameters are drawn from small fixed pools, so instances are everyday requests the embedded
135M policy meets only sometimes: there is room to improve and room to fail.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar

from align_chains.errors import InvalidInputError
from align_chains.tasks.base import Surrogate, TaskFamily, uses_word, words
from align_chains.tasks.surrogate import KeywordPresence

# common nouns that are one token after a space in SmolLM2's vocabulary (tests/test_tasks.py)
KEYWORDS = (
    "dog", "river", "bread", "window", "garden", "music", "candle", "train", "market", "bridge",
    "forest", "coffee", "letter", "mountain", "child", "rain", "lamp", "boat", "shadow", "kitchen",
    "winter", "horse", "street", "paper", "clock", "island", "stone", "cloud", "fire", "book",
    "night", "ocean", "song", "tree", "road", "moon", "bell", "field", "bird", "door",
)  # fmt: skip
TOPICS = (
    "a rainy morning", "your favourite food", "a trip to the sea", "learning to cook", "an old library",
    "a city at night", "a day in the mountains", "a new job", "a birthday party", "a quiet village",
    "winter holidays", "a long train journey", "a school garden", "a football match", "a family dinner",
)  # fmt: skip
# topics with the words an answer about them would naturally use (avoidance); a banned word also
# bans the words it starts ("water" bans "waterfall"), so none is the start of a common unrelated word
AVOID = (
    ("the beach", ("sand", "ocean", "water")), ("a kitchen", ("food", "cook", "oven")),
    ("the night sky", ("moon", "dark", "night")), ("a forest", ("tree", "green", "wood")),
    ("a winter day", ("snow", "cold", "ice")), ("a school", ("student", "teacher", "class")),
    ("a farm", ("animal", "cow", "field")), ("the ocean", ("water", "fish", "wave")),
    ("a library", ("book", "shelf", "quiet")), ("a city", ("street", "building", "traffic")),
    ("a garden", ("flower", "plant", "green")), ("breakfast", ("egg", "coffee", "bread")),
)  # fmt: skip
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S")


def _fraction_used(params_words: list[str], text: str) -> float:
    return sum(uses_word(text, w) for w in params_words) / len(params_words)


class Keywords(TaskFamily):
    name: ClassVar[str] = "keywords"
    description: ClassVar[str] = "write about a scene using every given word (CommonGen-style)"
    prefix_rule: ClassVar[str] = (
        "words used so far, plus half a word for each missing word that still fits in the budget "
        "(about 4 tokens a word): optimistic while there is room, the full reward at the end"
    )
    surrogate_rule: ClassVar[str] = "mean soft presence of each word (exact on one-hot inputs)"

    def generate(self, rng: random.Random) -> dict[str, Any]:
        return {"words": rng.sample(KEYWORDS, rng.choice((3, 4)))}

    def prompt(self, params: dict[str, Any]) -> str:
        listed = ", ".join(params["words"])
        return f"Write one or two sentences describing a scene that uses all of these words: {listed}."

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"words": self.word_list(params)}

    def reward(self, params: dict[str, Any], text: str) -> float:
        return _fraction_used(params["words"], text)

    def success(self, params: dict[str, Any], text: str) -> bool:
        return self.reward(params, text) == 1.0

    def prefix(self, params: dict[str, Any], text: str, remaining: int) -> float:
        needed = params["words"]
        used = sum(uses_word(text, w) for w in needed)
        fits = min(len(needed) - used, remaining // 4)
        return (used + 0.5 * fits) / len(needed)

    def surrogate(self, params: dict[str, Any], tokenizer: Any) -> Surrogate | None:
        presence = KeywordPresence(tokenizer, params["words"])
        return lambda probs: presence(probs).mean(-1)


class Length(TaskFamily):
    name: ClassVar[str] = "length"
    description: ClassVar[str] = "answer in exactly N words"
    prefix_rule: ClassVar[str] = (
        "1 while the answer is not over N words and the remaining budget can still reach N "
        "(a token a word); else the full reward"
    )
    surrogate_rule: ClassVar[str] = "none (a word count is not a smooth function of tokens): SEA n/a"

    def generate(self, rng: random.Random) -> dict[str, Any]:
        return {"n": rng.randint(8, 20), "topic": rng.choice(TOPICS)}

    def prompt(self, params: dict[str, Any]) -> str:
        return f"Describe {params['topic']} in exactly {params['n']} words."

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        n = self.need(params, "n", int, '"n": 12')
        if not 1 <= n <= 200:
            raise InvalidInputError(f'task family "length": "n" must be 1..200; got {n}.')
        return {"n": n, "topic": str(params.get("topic", ""))}

    def reward(self, params: dict[str, Any], text: str) -> float:
        n = params["n"]
        return max(0.0, 1.0 - abs(len(words(text)) - n) / n)

    def success(self, params: dict[str, Any], text: str) -> bool:
        return len(words(text)) == params["n"]

    def prefix(self, params: dict[str, Any], text: str, remaining: int) -> float:
        count = len(words(text))
        if remaining > 0 and count <= params["n"] and params["n"] - count <= remaining:
            return 1.0
        return self.reward(params, text)


def _format_parts(text: str) -> tuple[bool, int, bool]:
    """(title line present, bullet count, a non-bullet line after the bullets began)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return False, 0, False
    title = not BULLET.match(lines[0]) and len(words(lines[0])) <= 10 and len(words(lines[0])) >= 1
    bullets = [bool(BULLET.match(line)) for line in lines[1:]]
    stray = any(not b for b in bullets[bullets.index(True) :]) if True in bullets else False
    return title, sum(bullets), stray


def _bullet_score(k: int, count: int, stray: bool) -> float:
    """1 for exactly k bullets, falling linearly with the miss; halved by a stray line among them."""
    return max(0.0, 1.0 - abs(count - k) / k) * (0.5 if stray else 1.0)


class Format(TaskFamily):
    name: ClassVar[str] = "format"
    description: ClassVar[str] = "a title line, then exactly K bullet points"
    prefix_rule: ClassVar[str] = (
        "the title part as far as it goes (an unfinished first line counts as a title) and 1 for "
        "the bullets while there are at most K; else the full reward"
    )
    surrogate_rule: ClassVar[str] = "none (line structure is not a smooth function of tokens): SEA n/a"

    def generate(self, rng: random.Random) -> dict[str, Any]:
        return {"k": rng.choice((2, 3, 4)), "topic": rng.choice(TOPICS)}

    def prompt(self, params: dict[str, Any]) -> str:
        return (
            f"Write a title line about {params['topic']}, then exactly {params['k']} short bullet "
            "points starting with '- '. Nothing else."
        )

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        k = self.need(params, "k", int, '"k": 3')
        if not 1 <= k <= 20:
            raise InvalidInputError(f'task family "format": "k" must be 1..20; got {k}.')
        return {"k": k, "topic": str(params.get("topic", ""))}

    def reward(self, params: dict[str, Any], text: str) -> float:
        title, count, stray = _format_parts(text)
        return 0.5 * title + 0.5 * _bullet_score(params["k"], count, stray)

    def success(self, params: dict[str, Any], text: str) -> bool:
        title, count, stray = _format_parts(text)
        return title and count == params["k"] and not stray

    def prefix(self, params: dict[str, Any], text: str, remaining: int) -> float:
        if remaining == 0:
            return self.reward(params, text)
        title, count, stray = _format_parts(text)
        first_line_open = "\n" not in text.strip()
        title_part = 1.0 if first_line_open and not BULLET.match(text) else float(title)
        on_track = count <= params["k"] and not stray
        return 0.5 * title_part + 0.5 * (1.0 if on_track else _bullet_score(params["k"], count, stray))


class Sentiment(TaskFamily):
    name: ClassVar[str] = "sentiment"
    description: ClassVar[str] = "write with a clearly positive or negative tone (VADER compound score)"
    prefix_rule: ClassVar[str] = "VADER on the text so far (a lexicon sum: informative on prefixes)"
    surrogate_rule: ClassVar[str] = "none (VADER's rules read words, not distributions): SEA n/a"

    def generate(self, rng: random.Random) -> dict[str, Any]:
        return {"tone": rng.choice(("positive", "negative")), "topic": rng.choice(TOPICS)}

    def prompt(self, params: dict[str, Any]) -> str:
        return f"Write two sentences about {params['topic']} in a clearly {params['tone']} tone."

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        tone = params.get("tone")
        if tone not in ("positive", "negative"):
            raise InvalidInputError(
                f'task family "sentiment" needs "tone": "positive" or "negative"; got {tone!r}.'
            )
        _vader()  # a missing dependency fails here, before any model loads
        return {"tone": tone, "topic": str(params.get("topic", ""))}

    def compound(self, params: dict[str, Any], text: str) -> float:
        sign = 1.0 if params["tone"] == "positive" else -1.0
        return sign * _vader().polarity_scores(text)["compound"]

    def reward(self, params: dict[str, Any], text: str) -> float:
        return (1.0 + self.compound(params, text)) / 2.0

    def success(self, params: dict[str, Any], text: str) -> bool:
        return self.compound(params, text) >= 0.5


_VADER: list[Any] = []


def _vader() -> Any:
    """VADER's analyser, built once (it reads its lexicon file)."""
    if not _VADER:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise InvalidInputError(
                'The "sentiment" task family needs vaderSentiment: pip install "align-chains[tasks]".'
            ) from None
        _VADER.append(SentimentIntensityAnalyzer())
    return _VADER[0]


class Avoidance(TaskFamily):
    name: ClassVar[str] = "avoidance"
    description: ClassVar[str] = "describe a topic without the words it would naturally use (10+ words)"
    prefix_rule: ClassVar[str] = (
        "share of the banned words not used so far (the length part waits for the end)"
    )
    surrogate_rule: ClassVar[str] = (
        "1 - mean soft presence of the banned words (exact on one-hot inputs of 10+ words)"
    )
    min_words: ClassVar[int] = 10

    def generate(self, rng: random.Random) -> dict[str, Any]:
        topic, banned = rng.choice(AVOID)
        return {"topic": topic, "words": list(banned)}

    def prompt(self, params: dict[str, Any]) -> str:
        listed = ", ".join(f'"{w}"' for w in params["words"])
        return f"Describe {params['topic']} in one or two sentences without using the words {listed}."

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"words": self.word_list(params), "topic": str(params.get("topic", ""))}

    def reward(self, params: dict[str, Any], text: str) -> float:
        long_enough = min(1.0, len(words(text)) / self.min_words)
        return (1.0 - _fraction_used(params["words"], text)) * long_enough

    def success(self, params: dict[str, Any], text: str) -> bool:
        clean = not any(uses_word(text, w) for w in params["words"])
        return clean and len(words(text)) >= self.min_words

    def prefix(self, params: dict[str, Any], text: str, remaining: int) -> float:
        if remaining == 0:
            return self.reward(params, text)
        return 1.0 - _fraction_used(params["words"], text)

    def surrogate(self, params: dict[str, Any], tokenizer: Any) -> Surrogate | None:
        presence = KeywordPresence(tokenizer, params["words"])
        return lambda probs: 1.0 - presence(probs).mean(-1)


class KeywordsInLength(TaskFamily):
    name: ClassVar[str] = "keywords-length"
    description: ClassVar[str] = "composite: use the given words in exactly N words"
    prefix_rule: ClassVar[str] = "mean of the keywords and length prefix rules"
    surrogate_rule: ClassVar[str] = "none (the length half has none): SEA n/a"

    def generate(self, rng: random.Random) -> dict[str, Any]:
        return {"words": rng.sample(KEYWORDS, 2), "n": rng.randint(10, 16)}

    def prompt(self, params: dict[str, Any]) -> str:
        listed = ", ".join(params["words"])
        return f"Write a sentence of exactly {params['n']} words that uses these words: {listed}."

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**Keywords().check(params), "n": Length().check(params)["n"]}

    def reward(self, params: dict[str, Any], text: str) -> float:
        return 0.5 * Keywords().reward(params, text) + 0.5 * Length().reward(params, text)

    def success(self, params: dict[str, Any], text: str) -> bool:
        return Keywords().success(params, text) and Length().success(params, text)

    def prefix(self, params: dict[str, Any], text: str, remaining: int) -> float:
        keywords = Keywords().prefix(params, text, remaining)
        return 0.5 * keywords + 0.5 * Length().prefix(params, text, remaining)


FAMILIES: dict[str, TaskFamily] = {
    f.name: f for f in (Keywords(), Length(), Format(), Sentiment(), Avoidance(), KeywordsInLength())
}
