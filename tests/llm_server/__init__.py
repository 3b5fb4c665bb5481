"""A scripted, stateless LLM server for offline tests of coding-agent CLIs.

It speaks the Anthropic Messages, OpenAI Chat Completions, OpenAI Responses and Gemini
generateContent APIs on 127.0.0.1 and replays a Script: the reply is chosen from how many
assistant turns the request already carries, so retries and resumed sessions get consistent
answers.
"""

from .script import Script, ToolCall, Turn
from .server import RecordedRequest, RequestLog, ScriptedLLMServer

__all__ = ["RecordedRequest", "RequestLog", "Script", "ScriptedLLMServer", "ToolCall", "Turn"]
