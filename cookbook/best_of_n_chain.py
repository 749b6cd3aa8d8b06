"""Best-of-N in an LCEL chain, with a reward built from a principle and a plain rule.

Run:  python cookbook/best_of_n_chain.py

Everything runs offline on the embedded defaults. The script prints, for each question, every
candidate with its reward, then the one the chain returned and what it cost.
"""

from __future__ import annotations

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from align_chains import BestOfNChatModel, load_reward

PRINCIPLE = "The answer gives concrete, practical steps in a friendly tone."


def brevity(prompt: str, answer: str) -> float:
    """A rule reward: 1 for answers of 40 words or fewer, falling off linearly after."""
    words = len(answer.split())
    return 1.0 if words <= 40 else max(0.0, 1.0 - (words - 40) / 80)


def main() -> None:
    reward = 0.8 * load_reward("minilm", principle=PRINCIPLE) + 0.2 * load_reward(brevity)
    model = BestOfNChatModel(reward=reward, n=4, max_tokens=96, seed=0)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a helpful coach."), ("human", "{question}")]
    )
    questions = ["How can I focus better when working from home?", "How do I start running?"]

    # prompt | model gives AIMessages; their metadata carries every candidate and the compute
    messages = (prompt | model).batch([{"question": q} for q in questions])
    for question, message in zip(questions, messages, strict=True):
        meta = message.response_metadata
        print(f"\n## {question}")
        for candidate in meta["candidates"]:
            mark = "*" if candidate["text"] == message.content else " "
            print(f" {mark} [{candidate['reward']:.3f}] {candidate['text'][:90]!r}")
        compute = meta["compute"]
        print(
            f"   chose reward {meta['reward']:.3f}; {compute['generated_tokens']} tokens, "
            f"{compute['forward_passes']} forward passes for the whole batch of {compute['batch_size']}, "
            f"{compute['seconds']:.1f} s"
        )

    # the same model as a plain text chain
    chain = prompt | model | StrOutputParser()
    print("\n" + chain.invoke({"question": "Give me one tip for better sleep."}))


if __name__ == "__main__":
    main()
