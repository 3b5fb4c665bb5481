"""What the gateway reads from a request (its model) and how it says no.

A refusal is shaped like the upstream's own errors, so each agent CLI shows its message:
Gemini's ``{"error": {"code": 400, "message", "status"}}`` for ``/v1beta/...`` paths, and
otherwise one body that Anthropic's and OpenAI's clients both read (``type: error`` with
``error.type`` and ``error.message``; OpenAI's ``error.code`` as a string). Budget and model
refusals are 400/403: the agent CLIs retry 429 and 5xx, but give up on these at once.
"""

from __future__ import annotations

import json
import re

_GEMINI_MODEL = re.compile(r"/models/([^/:]+)(?::|$)")


def requested_model(path: str, body: bytes) -> str | None:
    """The model a request asks for: ``model`` in a JSON body, or (Gemini) in the path.

    Any body JSON reads is parsed (leading whitespace, a BOM, UTF-16), as the upstream would
    parse it: a body skipped here would pass the allow-list with no model. A body nested
    too deep to parse raises RecursionError (an upstream's parser may read it all the same)."""
    if body:
        try:
            data = json.loads(body)
        except ValueError:  # RecursionError (nested past the parser's depth) is the caller's
            data = None
        if isinstance(data, dict) and isinstance(data.get("model"), str):
            return str(data["model"])
    match = _GEMINI_MODEL.search(path)
    return match.group(1) if match else None


def error_body(status: int, code: str, text: str, path: str = "") -> bytes:
    """The JSON error body of a refusal, in the dialect of the API ``path`` belongs to."""
    if path.startswith(("/v1beta/", "/v1alpha/")) or ":generateContent" in path:
        payload: dict[str, object] = {
            "error": {"code": status, "message": text, "status": "FAILED_PRECONDITION",
                      "details": [{"reason": code}]}
        }  # fmt: skip
    else:
        payload = {
            "type": "error",
            "error": {"type": "invalid_request_error", "code": code, "message": text},
        }
    return json.dumps(payload).encode()
