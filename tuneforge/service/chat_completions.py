"""A chat.completions request -> the inference process's request, and its answer -> OpenAI's shapes.

Pure functions and one small stream assembler, free of HTTP (routes/chat.py is the shell around them):

    inference_request(body, base, adapter)     checks what pydantic cannot (APIError 400 naming the field)
    completion(body, result, ...)              the chat.completion object
    ChunkAssembler(body, ...).piece(message)   chat.completion.chunk objects as OpenAI streams them

Tool calls: with `tools` and tool_choice other than "none", each choice's text is read by
tuneforge/tool_calls.py; calls found become `message.tool_calls` (ids call_..., arguments a JSON string)
with finish_reason "tool_calls". tool_choice "required" or a named function is enforced in the inference
process by a grammar (tuneforge/constrained.py, response_format {"type": "tool_calls"}), so the answer is
a call; "auto" leaves the choice to the model.
"""

from __future__ import annotations

from tuneforge.json_schema_subset import unsupported_keywords
from tuneforge.service.api_error import APIError
from tuneforge.service.schemas import ChatCompletionCreate
from tuneforge.tool_calls import ToolCall, ToolCallStream, new_call_id, parse_tool_calls

DEFAULT_MAX_TOKENS = 256


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, code="invalid_request", param=param)


def tools_in_play(body: ChatCompletionCreate) -> bool:
    return bool(body.tools) and body.tool_choice != "none"


def tool_names(body: ChatCompletionCreate) -> set[str]:
    return {tool.function.name for tool in body.tools or []}


def _forced_tools(body: ChatCompletionCreate) -> list[dict] | None:
    """The tools a grammar must hold the answer to (tool_choice required or named), else None."""
    choice = body.tool_choice
    if choice is None or choice in ("none", "auto"):
        return None
    tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
    if choice != "required":
        tools = [tool for tool in tools if tool["function"]["name"] == choice.function.name]
    return tools


def _check(body: ChatCompletionCreate) -> None:
    if body.top_logprobs is not None and not body.logprobs:
        raise _bad("top_logprobs needs logprobs: true.", "top_logprobs")
    if body.tool_choice not in (None, "none", "auto") and not body.tools:
        raise _bad("tool_choice needs tools.", "tool_choice")
    if body.parallel_tool_calls is not None and not body.tools:
        raise _bad("parallel_tool_calls is only allowed when tools are specified.", "parallel_tool_calls")
    if body.tools:
        names = [tool.function.name for tool in body.tools]
        if len(set(names)) != len(names):
            raise _bad("Each tool needs its own name.", "tools")
    choice = body.tool_choice
    if choice not in (None, "none", "auto", "required") and choice.function.name not in tool_names(body):
        raise _bad(f"tool_choice names {choice.function.name!r}, which is not one of the tools.", "tool_choice")
    forced = _forced_tools(body)
    if forced is not None:
        if body.response_format is not None and body.response_format.type != "text":
            raise _bad("response_format cannot be combined with a forced tool_choice.", "response_format")
        for index, tool in enumerate(body.tools):
            if tool.function.name not in {t["function"]["name"] for t in forced}:
                continue
            problems = unsupported_keywords(tool.function.parameters or {})
            if problems:
                raise _bad(
                    f"tool {tool.function.name!r}: its parameters use JSON schema features a forced tool_choice "
                    f"cannot enforce: {', '.join(problems)}.",
                    f"tools[{index}].function.parameters",
                )
    response_format = body.response_format
    if response_format is not None and response_format.type == "json_schema":
        spec = response_format.json_schema
        if spec is None:
            raise _bad("response_format json_schema needs a json_schema object.", "response_format.json_schema")
        if spec.schema_ is None:
            raise _bad("response_format.json_schema needs a schema.", "response_format.json_schema.schema")
        problems = unsupported_keywords(spec.schema_)
        if problems:
            raise _bad(
                f"Unsupported JSON schema features in response_format: {', '.join(problems)}.",
                "response_format.json_schema.schema",
            )


def _response_format(body: ChatCompletionCreate) -> dict | None:
    forced = _forced_tools(body)
    if forced is not None:
        parallel = body.parallel_tool_calls is not False and body.tool_choice == "required"
        return {"type": "tool_calls", "tools": forced, "parallel_tool_calls": parallel}
    response_format = body.response_format
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "json_object"}
    spec = response_format.json_schema
    return {
        "type": "json_schema",
        "json_schema": {"name": spec.name, "schema": spec.schema_, "strict": bool(spec.strict)},
    }


def inference_request(body: ChatCompletionCreate, base: str, adapter: str | None) -> dict:
    """The request the inference process gets (its protocol: inference_client.py)."""
    _check(body)
    request = {
        "model": base,
        "adapter": adapter,
        "messages": [message.for_template() for message in body.messages],
        "max_new_tokens": body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "seed": body.seed,
        "stop": [body.stop] if isinstance(body.stop, str) else body.stop,
        "n": body.n or 1,
        "logprobs": bool(body.logprobs),
        "top_logprobs": body.top_logprobs or 0,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "logit_bias": dict(body.logit_bias or {}),
        "stream": bool(body.stream),
    }
    if body.tools:  # the template shows the tools to the model (its own tool prompt), even for "none"
        request["tools"] = [tool.model_dump(exclude_none=True) for tool in body.tools]
    response_format = _response_format(body)
    if response_format is not None:
        request["response_format"] = response_format
    return request


def usage(result: dict) -> dict:
    prompt, completion = int(result.get("prompt_tokens", 0)), int(result.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _logprobs(body: ChatCompletionCreate, entries) -> dict | None:
    """OpenAI's choice.logprobs from the inference process's entries (a list, or a result's {"content": list})."""
    if not body.logprobs:
        return None
    if isinstance(entries, dict):
        entries = entries.get("content")
    return {"content": list(entries or []), "refusal": None}


def _calls_for(body: ChatCompletionCreate, calls: list[ToolCall]) -> list[ToolCall]:
    return calls[:1] if body.parallel_tool_calls is False else calls


def completion(body: ChatCompletionCreate, result: dict, completion_id: str, created: int) -> dict:
    choices = []
    for choice in sorted(result.get("choices", []), key=lambda c: c.get("index", 0)):
        text, finish_reason = choice.get("text", ""), choice.get("finish_reason", "stop")
        message = {"role": "assistant", "content": text, "refusal": None}
        if tools_in_play(body):
            content, calls = parse_tool_calls(text, tool_names(body))
            if calls:
                message["content"] = content
                message["tool_calls"] = [call.openai() for call in _calls_for(body, calls)]
                finish_reason = "tool_calls"
        choices.append(
            {
                "index": choice.get("index", 0),
                "message": message,
                "logprobs": _logprobs(body, choice.get("logprobs")),
                "finish_reason": finish_reason,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage(result),
    }


class ChunkAssembler:
    """The inference process's lines for one request -> chat.completion.chunk bodies (dicts)."""

    def __init__(self, body: ChatCompletionCreate, completion_id: str, created: int):
        self.body = body
        self.completion_id = completion_id
        self.created = created
        n = body.n or 1
        self.parsers = {i: ToolCallStream(tool_names(body)) for i in range(n)} if tools_in_play(body) else {}
        self.calls_sent = {i: 0 for i in range(n)}
        self.held_logprobs: dict[int, list] = {i: [] for i in range(n)}

    def _chunk(self, index: int, delta: dict, finish_reason: str | None = None, logprobs=None) -> dict:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.body.model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }

    def opening(self) -> list[dict]:
        return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.body.n or 1)]

    def _events_to_chunks(self, index: int, events: list) -> list[dict]:
        chunks = []
        for kind, value in events:
            logprobs = _logprobs(self.body, self.held_logprobs[index])
            self.held_logprobs[index] = []
            if kind == "content":
                chunks.append(self._chunk(index, {"content": value}, logprobs=logprobs))
                continue
            if self.body.parallel_tool_calls is False and self.calls_sent[index] >= 1:
                continue
            call = value.openai(new_call_id())
            position = self.calls_sent[index]
            self.calls_sent[index] += 1
            opening = {
                "index": position,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""},
            }
            chunks.append(self._chunk(index, {"tool_calls": [opening]}, logprobs=logprobs))
            arguments = {"index": position, "function": {"arguments": call["function"]["arguments"]}}
            chunks.append(self._chunk(index, {"tool_calls": [arguments]}))
        return chunks

    def piece(self, message: dict) -> list[dict]:
        """Chunks for a {"index", "token", "logprobs"?} line."""
        index = int(message.get("index", 0))
        self.held_logprobs.setdefault(index, []).extend(message.get("logprobs") or [])
        token = message.get("token", "")
        if index in self.parsers:
            return self._events_to_chunks(index, self.parsers[index].feed(token))
        if not token and not self.held_logprobs[index]:
            return []
        return self._events_to_chunks(index, [("content", token)])

    def ending(self, result: dict, include_usage: bool) -> list[dict]:
        """What is still held for each choice, its finish_reason, and the usage chunk when asked for."""
        chunks = []
        for choice in sorted(result.get("choices", []), key=lambda c: c.get("index", 0)):
            index = int(choice.get("index", 0))
            finish_reason = choice.get("finish_reason", "stop")
            if index in self.parsers:
                chunks += self._events_to_chunks(index, self.parsers[index].finish())
                if self.calls_sent[index]:
                    finish_reason = "tool_calls"
            logprobs = _logprobs(self.body, self.held_logprobs.get(index)) if self.held_logprobs.get(index) else None
            chunks.append(self._chunk(index, {}, finish_reason, logprobs=logprobs))
        if include_usage:
            chunks.append({**self._chunk(0, {}), "choices": [], "usage": usage(result)})
        return chunks
