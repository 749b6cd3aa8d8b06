"""``batch()`` as ONE underlying run with LangChain callbacks per input.

LangChain's default ``batch`` calls ``invoke`` once per input, which would decode (or sample
and score) each prompt on its own. Chat models here take ``BatchInOneRun``, whose ``batch``
uses ``batch_with_callbacks``: every input gets its own ``on_chat_model_start``/``on_llm_end``/
``on_llm_error``, while the work is one call of ``run`` over all inputs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManager, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult, LLMResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import get_config_list, run_in_executor
from langchain_core.utils.function_calling import convert_to_json_schema

from align_chains.models.messages import to_conversation

#: the inputs of one run: (messages, LangChain run manager or None) each
Requests = Sequence[tuple[list[BaseMessage], Any]]
#: runs every accepted input at once: (messages, run manager) pairs -> one result or error each
BatchRun = Callable[[Requests, "list[str] | None"], "list[ChatResult | Exception]"]


def _structured_output_option(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``with_structured_output``'s tracing kwarg into the run's options, as ``invoke`` does.

    It is for callbacks (LangSmith shows the schema), not for the model: left in ``kwargs`` it would
    reach the strategy as an unknown setting.
    """
    fmt = kwargs.pop("ls_structured_output_format", None)
    fmt = kwargs.pop("structured_output_format", None) or fmt
    if not fmt:
        return {}
    try:
        schema = convert_to_json_schema(fmt["schema"])
    except ValueError:
        return {}
    return {"ls_structured_output_format": {"kwargs": fmt.get("kwargs", {}), "schema": schema}}


def batch_with_callbacks(
    model: BaseChatModel,
    inputs: list[LanguageModelInput],
    config: RunnableConfig | list[RunnableConfig] | None,
    return_exceptions: bool,
    kwargs: dict[str, Any],
    run: BatchRun,
) -> list[Any]:
    """Start a callback run per input, check each input, ``run`` the valid ones together, end each run.

    An input whose messages cannot be converted fails alone, before any model work. An exception
    from ``run`` itself fails every input; a per-input exception in its results fails that input.
    With ``return_exceptions`` errors are returned in place, else the first one is raised.
    """
    if not inputs:
        return []
    configs = get_config_list(config, len(inputs))
    stop = kwargs.pop("stop", None)
    options = {"stop": stop, **_structured_output_option(kwargs)}
    outputs: list[Any] = [None] * len(inputs)
    runs: list[tuple[int, list[BaseMessage], Any]] = []
    invocation_params = {**model._identifying_params, "stop": stop, **kwargs}
    for i, (value, cfg) in enumerate(zip(inputs, configs, strict=True)):
        messages = model._convert_input(value).to_messages()
        manager = CallbackManager.configure(
            cfg.get("callbacks"), model.callbacks, model.verbose,
            cfg.get("tags"), model.tags, cfg.get("metadata"), model.metadata,
        )  # fmt: skip
        (run_manager,) = manager.on_chat_model_start(
            model._serialized,
            [messages],
            invocation_params=invocation_params,
            options=options,
            name=cfg.get("run_name"),
            run_id=cfg.get("run_id"),
            batch_size=len(inputs),
        )
        try:
            to_conversation(messages)  # a bad input fails alone, before any model work
        except Exception as exc:
            run_manager.on_llm_error(exc)
            if not return_exceptions:
                raise
            outputs[i] = exc
        else:
            runs.append((i, messages, run_manager))
    if not runs:
        return outputs
    try:
        results = run([(messages, run_manager) for _, messages, run_manager in runs], stop)
    except Exception as exc:
        for i, _, run_manager in runs:
            run_manager.on_llm_error(exc)
            outputs[i] = exc
        if not return_exceptions:
            raise
        return outputs
    for (i, _, run_manager), result in zip(runs, results, strict=True):
        if isinstance(result, Exception):
            run_manager.on_llm_error(result)
            if not return_exceptions:
                raise result
            outputs[i] = result
            continue
        result.generations[0].message.id = f"lc_run--{run_manager.run_id}"
        run_manager.on_llm_end(LLMResult(generations=[result.generations], llm_output=result.llm_output))
        outputs[i] = result.generations[0].message
    return outputs


class BatchInOneRun:
    """Mixin for chat models whose work over several inputs is ONE underlying run.

    A subclass writes ``_run_requests`` (every (messages, run manager) pair at once -> one
    ``ChatResult`` or exception each); ``_generate`` is that run on one input, ``batch`` on all
    inputs with callbacks per input (``batch_with_callbacks``), and ``abatch`` runs that ``batch``
    in a worker thread (LangChain's default would ``ainvoke`` input by input, losing the shared run).
    """

    @abstractmethod
    def _run_requests(
        self, requests: Requests, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> list[ChatResult | Exception]:
        """Every request in one run: per request its result, or the error that ended it."""

    def _queued(
        self, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> Callable[[], ChatResult] | None:
        """How to run this call together with concurrent ones, or None to run it on its own here."""
        return None

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        queued = self._queued(messages, stop, run_manager, kwargs)
        if queued is not None:
            return queued()
        (result,) = self._run_requests([(messages, run_manager)], stop, kwargs)
        if isinstance(result, Exception):
            raise result
        return result

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        """Every input in one run; each input keeps its own callbacks."""
        model: Any = self  # a BaseChatModel: the mixin comes first in its bases

        def run(requests: Requests, stop: list[str] | None) -> list[Any]:
            return self._run_requests(requests, stop, kwargs)

        return batch_with_callbacks(model, inputs, config, return_exceptions, kwargs, run)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[BaseMessage]:
        first = config[0] if isinstance(config, list) and config else config
        return await run_in_executor(
            first, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs
        )
