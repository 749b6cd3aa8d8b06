"""Agent middleware that makes small local models use their tools: force a call, then let them answer.

``langchain.agents.create_agent`` binds tools with ``tool_choice="auto"`` on every model call, so
the model decides between a call and prose. Under align_chains' grammar-constrained decoding both
are valid by construction, and a small policy such as SmolLM2-135M usually picks prose: no tool
ever runs. :class:`ForceToolCallMiddleware` sets ``tool_choice`` per model call instead: the first
call(s) of each turn must call a tool, the calls after a tool result get ``then`` ("none" by
default: answer in text). The number of forced calls is bounded, so the loop always ends.

``langchain`` (the agent runtime) is an optional dependency; this module imports it, and
``align_chains`` imports this module only when ``ForceToolCallMiddleware`` is first used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage

from align_chains.errors import InvalidInputError

_FORCING = ("any", "required")
_FREE = ("auto", "none")


def model_calls_this_turn(messages: Sequence[AnyMessage]) -> int:
    """How many model answers (AIMessages) follow the last human message: 0 at the start of a turn."""
    answers = 0
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            break
        answers += isinstance(message, AIMessage)
    return answers


def _tool_name(tool: Any) -> str | None:
    """A bound tool's name: a BaseTool's ``name``, or an OpenAI/LangChain dict's."""
    if isinstance(tool, dict):
        return (tool.get("function") or {}).get("name") or tool.get("name")
    return getattr(tool, "name", None)


class ForceToolCallMiddleware(AgentMiddleware):
    """Force a tool call at the start of each agent turn, then let the model answer.

    For ``create_agent`` on small local models, which pick prose over a tool when the choice
    is theirs. The first ``forced_calls`` model calls after each human message are made with
    ``tool_choice=tool_choice`` (under align_chains' grammar-constrained decoding the answer is
    then a schema-valid call by construction); the model calls after that are made with
    ``tool_choice=then``. With ``then="none"`` (the default) the model must answer in text after
    its tool results, so the loop runs ``forced_calls`` tool rounds and ends; ``then="auto"``
    lets it call more tools if it chooses (bound the loop with the agent's ``recursion_limit``).
    Works with any chat model whose ``bind_tools`` accepts ``tool_choice``. A model call with no
    tools bound is passed through unchanged.

    Args:
        tool_choice: The choice for the forced calls: ``"any"`` (or ``"required"``) for a call to
            any bound tool, or the name of one bound tool.
        then: The choice for the calls after the forced ones: ``"none"`` (answer in text),
            ``"auto"`` (the model decides), ``"any"``/``"required"`` or a tool name.
        forced_calls: How many model calls per turn are forced (at least 1).

    Examples:
        >>> from align_chains import ForceToolCallMiddleware
        >>> middleware = ForceToolCallMiddleware(tool_choice="get_weather", then="none")
        >>> middleware.choice_for([])  # no model answer yet this turn: forced
        'get_weather'
        >>> from langchain.agents import create_agent
        >>> from align_chains import BestOfNChatModel
        >>> model = BestOfNChatModel(n=2, max_tokens=48)  # cheap: the policy loads on first use
        >>> agent = create_agent(model, [get_weather], middleware=[middleware])  # doctest: +SKIP
    """

    def __init__(self, tool_choice: str = "any", then: str = "none", forced_calls: int = 1) -> None:
        super().__init__()
        for name, value in (("tool_choice", tool_choice), ("then", then)):
            if not isinstance(value, str) or not value:
                raise InvalidInputError(
                    f"ForceToolCallMiddleware({name}={value!r}): give 'any', 'required', a tool's name"
                    + (" or 'auto'/'none'." if name == "then" else ".")
                )
        if tool_choice in _FREE:
            raise InvalidInputError(
                f"ForceToolCallMiddleware(tool_choice={tool_choice!r}) would not force a call: use 'any', "
                "'required' or the name of a bound tool (and then='auto'/'none' for the calls after it)."
            )
        if not isinstance(forced_calls, int) or forced_calls < 1:
            raise InvalidInputError(
                f"ForceToolCallMiddleware(forced_calls={forced_calls!r}): give an integer >= 1 (the number "
                "of model calls per turn that must call a tool)."
            )
        self.tool_choice = tool_choice
        self.then = then
        self.forced_calls = forced_calls

    def choice_for(self, messages: Sequence[AnyMessage]) -> str:
        """The ``tool_choice`` for a model call that sees ``messages`` (the agent's history)."""
        return self.tool_choice if model_calls_this_turn(messages) < self.forced_calls else self.then

    def _request_for(self, request: ModelRequest) -> ModelRequest:
        """The request with this call's ``tool_choice``; unchanged when no tools are bound."""
        if not request.tools:
            return request
        choice = self.choice_for(request.messages)
        names = [name for name in map(_tool_name, request.tools) if name]
        if choice not in _FORCING + _FREE and choice not in names:
            raise InvalidInputError(
                f"ForceToolCallMiddleware: tool_choice {choice!r} names no tool of this agent. Bound tools: "
                f"{', '.join(names) or '(none)'}; use one of them or 'any'."
            )
        return request.override(tool_choice=choice)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        """Run the model call with the ``tool_choice`` this point of the turn calls for."""
        return handler(self._request_for(request))

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        """Async version of :meth:`wrap_model_call`."""
        return await handler(self._request_for(request))
