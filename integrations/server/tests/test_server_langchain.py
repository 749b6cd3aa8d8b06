"""langchain-openai's ChatOpenAI pointed at the server: a drop-in aligned model for LangChain apps."""

from __future__ import annotations

from langchain_openai import ChatOpenAI


def test_chat_openai_invoke_and_stream(server):
    llm = ChatOpenAI(
        model="best-of-n",
        base_url=server.base_url,
        api_key="unused",
        seed=7,
        max_tokens=6,
        max_retries=0,
        extra_body={"align_chains": {"n": 2}},
        stream_usage=True,
    )
    message = llm.invoke("Say hello.")
    assert isinstance(message.content, str) and message.content
    usage = message.usage_metadata  # ChatOpenAI reads completion_tokens_details.reasoning_tokens
    assert usage["output_tokens"] - usage["output_token_details"]["reasoning"] <= 6  # the answer
    assert message.usage_metadata["output_tokens"] <= 2 * (6 + 1)  # both candidates are counted
    chunks = list(llm.stream("Say hello."))
    assert "".join(c.content for c in chunks) == message.content  # same seed, same chosen answer
    assert (
        sum((c.usage_metadata or {}).get("output_tokens", 0) for c in chunks)
        == message.usage_metadata["output_tokens"]
    )
