"""``with_structured_output``: the schema is asked for, enforced by a grammar, checked, parsed.

The chat model is bound with an OpenAI-style ``response_format``; its output contract puts the
schema in the system message, the decoder keeps every candidate to the schema's grammar
(``chat_models.constraints``; off with ``strict=False``), and candidates whose JSON validates
are ranked above those whose JSON does not (a truncated answer, say; see ``output_contract``).
The parser then turns the chosen text into the user's type.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Any

from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema
from langchain_core.utils.pydantic import is_basemodel_subclass

from align_chains.errors import InvalidInputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


def response_format(schema: dict[str, Any] | type | None, method: str) -> dict[str, Any]:
    """The ``response_format`` kwarg the output contract reads."""
    if method == "json_mode":
        return {"type": "json_object"}
    if method != "json_schema":
        raise InvalidInputError(
            f"method={method!r} is not one of 'json_schema', 'function_calling', 'json_mode'."
        )
    if schema is None:
        raise InvalidInputError("method='json_schema' needs a schema: a pydantic model, TypedDict or dict.")
    json_schema = convert_to_json_schema(schema)
    name = json_schema.get("title", "response")
    return {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}


def structured_output_runnable(
    model: BaseChatModel,
    schema: dict[str, Any] | type | None,
    *,
    method: str,
    include_raw: bool,
    constrain: bool = True,
) -> Runnable:
    """``model`` bound to answer in ``schema``, piped into the matching parser.

    ``constrain``: decode under the schema's grammar (every candidate valid by construction);
    False keeps only the prompt, the ranking and the reruns.
    """
    extra = {} if constrain else {"constrain": False}  # else the chat model's own setting
    llm = model.bind(
        **extra,
        response_format=response_format(schema, method),
        ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
    )
    parser: Runnable
    if isinstance(schema, type) and is_basemodel_subclass(schema):
        parser = PydanticOutputParser(pydantic_object=schema)
    else:
        parser = JsonOutputParser()
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([unparsed], exception_key="parsing_error")
