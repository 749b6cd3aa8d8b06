"""Usage counts what was spent: every generated token, with the chosen answer's as a detail.

Cost trackers (LangSmith, Langfuse, LangChain's own callback counter) read ``usage_metadata``;
a Best-of-8 answer must be billed for its eight candidates, not for the one returned.
"""

from __future__ import annotations

from langchain_core.callbacks import UsageMetadataCallbackHandler

from align_chains import BestOfNChatModel
from align_chains.chat_models import chat_model_class
from align_chains.rewards import ClassifierReward


def test_a_callback_token_counter_over_best_of_8_counts_every_generated_token(tiny_policy, length_reward):
    model = BestOfNChatModel(
        policy=tiny_policy, reward=length_reward, n=8, max_tokens=12, temperature=1.0, seed=0
    )
    counter = UsageMetadataCallbackHandler()
    message = model.invoke("Name a fruit.", config={"callbacks": [counter]})
    compute = message.response_metadata["compute"]
    counted = counter.usage_metadata[model.model_name]
    candidates = message.response_metadata["candidates"]
    chosen = next(
        c
        for c in candidates
        if c["text"] == message.content and c["reward"] == max(x["reward"] for x in candidates)
    )
    assert counted["output_tokens"] == compute["generated_tokens"] >= sum(c["tokens"] for c in candidates)
    assert counted["output_tokens"] > 4 * chosen["tokens"] > 0  # not the chosen answer's count
    assert counted["output_token_details"]["answer"] == chosen["tokens"]
    assert (
        counted["output_token_details"]["reasoning"]
        == counted["output_tokens"] - counted["output_token_details"]["answer"]
    )
    assert counted["input_tokens"] == compute["prompt_tokens"]  # one prefill, shared by the 8 rows
    assert counted["input_token_details"]["extra_prefill"] == 0
    assert counted["total_tokens"] == counted["input_tokens"] + counted["output_tokens"]

    model.invoke("Name a colour.", config={"callbacks": [counter]})  # a second call adds up
    assert counter.usage_metadata[model.model_name]["output_tokens"] > counted["output_tokens"]


def test_streaming_reports_the_same_usage(tiny_policy, length_reward):
    model = BestOfNChatModel(
        policy=tiny_policy, reward=length_reward, n=4, max_tokens=8, temperature=1.0, seed=3
    )
    whole = model.invoke("Hi")
    chunks = list(model.stream("Hi"))
    streamed = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert streamed[-1]["output_tokens"] == whole.usage_metadata["output_tokens"]
    assert streamed[-1]["output_token_details"] == whole.usage_metadata["output_token_details"]


def test_rejected_rows_and_reward_model_tokens_are_counted(tiny_policy, tiny_classifier, smol_tokenizer):
    reward = ClassifierReward(tiny_classifier.float(), smol_tokenizer, name="tiny-rm")
    model = chat_model_class("early-rejection")(
        policy=tiny_policy, reward=reward, n=4, max_tokens=8, temperature=1.0, seed=1
    )
    message = model.invoke("Name a fruit.")
    usage, compute = message.usage_metadata, message.response_metadata["compute"]
    assert usage["output_tokens"] == compute["generated_tokens"]  # rejected rows' tokens included
    # the classifier read prompt + answer for each finished candidate it scored at the end
    scored = [c for c in message.response_metadata["candidates"] if c["reward"] is not None]
    assert usage["input_token_details"]["reward_model"] == compute["reward_tokens"] > 0
    assert compute["reward_tokens"] > sum(c["tokens"] for c in scored)  # each answer, with its prompt
