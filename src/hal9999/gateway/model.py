"""The model a request asks for, read as strictly as an upstream could read it otherwise.

The allow-list and the cost budget rest on the model the gateway reads; the upstream uses the
model *it* reads. Where the two could differ the request is refused rather than forwarded
(:class:`Unreadable`), whenever the gateway must know the model (an allow-list or a cost
budget): a body that is not one JSON object (form-encoded, msgpack, an array, garbage, empty
where a body is due), an encoded body (``content-encoding``), a body declared as something
other than JSON, or in a charset other than UTF-8 (UTF-16/32 JSON is read the way JSON
readers detect it, by its first bytes), a model named twice (parsers differ on which one
wins; some match keys case-insensitively, so ``"Model"`` counts), a model that is not a
string, and a path an upstream could normalise to another model (dot segments, ``%``
escapes, backslashes, ``;`` parameters). The model in a Gemini path (``/models/NAME:...``)
an Azure OpenAI path (``/openai/deployments/NAME/...``: Azure serves the deployment the path
names and ignores the body's model) or a Bedrock path (``/model/NAME/invoke``) and the one in
the body are all checked.

Only the top-level members of the body are walked here; their values are parsed by the
``json`` module's C scanner, so reading a long conversation costs what ``json.loads`` does.
The one nested member read is a Gemini call's output cap, ``generationConfig.maxOutputTokens``
(and its ``candidateCount``); a cap named twice, or not a whole number, counts as none. A call
that asks for several answers (``n``, ``best_of``, ``candidateCount``) reserves each one's.
"""

from __future__ import annotations

import json
import json.decoder
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_GEMINI_MODEL = re.compile(r"/(?:models|tunedModels)/([^/:]+)(?::|$)")
"""A Gemini path's model: a base model's, or a tuned one's (``tunedModels/NAME:...``)."""
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""The ``json`` module's scanner of one value (C), as ``json.loads`` uses it."""
_SCAN_STRING: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_OUTPUT_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""Body members that cap a call's output tokens, thinking or reasoning included (Anthropic's
``max_tokens``, OpenAI's Chat and Responses caps)."""
_GEMINI_CONFIGS = ("generationConfig", "generation_config")
"""The body member of a Gemini ``generateContent`` call that holds its cap (proto3 JSON
readers take a field's camelCase name and its proto name alike)."""
_GEMINI_CAPS = ("maxOutputTokens", "max_output_tokens")
"""Its cap, per candidate (Gemini counts thinking in it)."""
_GEMINI_COUNTS = ("candidateCount", "candidate_count")
"""How many candidates the call asks for (1 when absent): each may emit the cap."""
_CHOICE_COUNTS = ("n", "best_of")
"""Body members that ask for several answers in one call (OpenAI's Chat Completions ``n``,
its legacy Completions' ``best_of``), each billed."""
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_STORED_INPUT = ("previous_response_id", "conversation", "cachedcontent", "cached_content")
"""Body members (matched ignoring case) that bring input the upstream holds into the call:
an OpenAI Responses call's earlier response or conversation, a Gemini cached content. Its
tokens are not bytes of the request, so the request's size does not bound them."""
_DEFERRED = frozenset({"fine_tuning", "fine-tunes", "cachedcontents"})
"""Path segments (ignoring case) of work billed after the call ends: fine-tuning jobs
(OpenAI, Azure), Gemini's cached contents (storage, by the hour)."""


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members in order, repeats kept (told apart from a JSON array)."""


_SCAN_PAIRS: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(
    object_pairs_hook=_Pairs
).scan_once  # type: ignore[attr-defined]
"""The scanner for a Gemini generation config: its repeated members are seen, not merged."""


class Unreadable(Exception):
    """A request whose model the gateway cannot read as surely as the upstream would."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass
class ModelRequest:
    """What the gateway reads from a request: its model(s) and its output cap."""

    models: list[str] = field(default_factory=list)
    """Every model the request names (the body's, a Gemini path's, an Azure deployment's),
    first the body's."""
    deployments: list[str] = field(default_factory=list)
    """Of those, the Azure deployments its path names (their names are checked as models)."""
    stored_input: bool = False
    """Whether the call brings in input the upstream holds (``previous_response_id``,
    ``conversation``, ``cachedContent``): its input is not bounded by its size."""
    background: bool = False
    """Whether it asks to run in the background (OpenAI Responses): billed when it
    completes, in an answer the call does not wait for."""
    output_cap: int | None = None
    """The most output tokens the request allows (None: it sets no cap the gateway knows)."""
    choices: int = 1
    """How many answers the call asks for (OpenAI's ``n`` and ``best_of``): each may emit
    up to the cap, and all are billed."""

    @property
    def model(self) -> str | None:
        """The model the call's row records."""
        return self.models[0] if self.models else None


def read_model(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes, *, strict: bool
) -> ModelRequest:
    """The models and output cap of a request; with ``strict`` (an allow-list or a cost
    budget), :class:`Unreadable` for any request an upstream could read another model from.
    Without it a body that is not a JSON object (or is nested past the parser's depth) only
    leaves the model and the cap unknown."""
    found = ModelRequest()
    if strict:
        _check_path(path)
        _check_headers(headers)
    if body or (strict and method in _WITH_BODY):
        try:
            members = _members(body)
        except RecursionError as exc:  # an upstream's parser may read it all the same
            if strict:
                text = "the request body is nested too deep to read its model"
                raise Unreadable(400, text) from exc
            members = []
        except ValueError as exc:
            if strict:
                raise Unreadable(400, f"the request body is not a JSON object ({exc}); a "
                                      "task with a model allow-list or a cost budget sends "
                                      "JSON objects only") from exc  # fmt: skip
            members = []
        named = [(k, v) for k, v in members if k.casefold() == "model"]
        if strict and len(named) > 1:
            raise Unreadable(400, "the request body names its model more than once")
        if named:
            value = named[-1][1]
            if isinstance(value, str):
                found.models.append(value)
            elif strict:
                raise Unreadable(400, "the request body's model is not a string")
        found.output_cap = _output_cap(members)
        found.stored_input = any(k.casefold() in _STORED_INPUT and v not in (None, "", [])
                                 for k, v in members)  # fmt: skip
        found.background = any(k.casefold() == "background" and v not in (None, False)
                               for k, v in members)  # fmt: skip
        found.choices = _choices(members, strict)
    match = _GEMINI_MODEL.search(path)
    if match and match.group(1) not in found.models:
        found.models.append(match.group(1))
    if strict or "/deployments/" in path or "/model/" in path:
        for kind, name in _path_models(path):
            if kind == "deployments":
                found.deployments.append(name)
            if name not in found.models:
                found.models.append(name)
    if strict and method in _WITH_BODY and not found.models:
        # Anthropic's batches carry theirs under requests[].params, OpenAI's threads' runs
        # take their assistant's: the allow-list would never see it.
        raise Unreadable(400, "the request names no model (in its body's top level or its "
                              "path); a task with a model allow-list or a cost budget names "
                              "the model of every call")  # fmt: skip
    return found


def check_metered(path: str) -> None:
    """:class:`Unreadable` (403) for an endpoint whose spend the gateway cannot meter: a
    batch is billed when it completes, hours later, never in an answer the gateway reads
    (Anthropic's ``/v1/messages/batches``, OpenAI's ``/v1/batches``, Gemini's
    ``:batchGenerateContent`` and ``:asyncBatchEmbedContent``); so are fine-tuning jobs
    (``/v1/fine_tuning/...``), Gemini's tuning jobs and cached contents (``POST
    /v1beta/tunedModels``, ``/v1beta/cachedContents``: storage by the hour) and long-running
    operations (``:predictLongRunning``)."""
    segments = [segment for segment in path.rstrip("/").split("/") if segment]
    last = segments[-1] if segments else ""
    method = last.rpartition(":")[2] if ":" in last else ""
    if "batches" in segments or method.startswith(("batch", "asyncBatch")):
        raise Unreadable(403, "batch calls are billed after the call ends, past the gateway's "
                              "metering; a task with a budget or a model allow-list makes "
                              "each call itself")  # fmt: skip
    folded = {segment.casefold() for segment in segments}
    # A tuning job is created at /v1beta/tunedModels; its model is then called at
    # tunedModels/NAME:generateContent, metered as any other.
    if folded & _DEFERRED or last == "tunedModels" or method == "predictLongRunning":
        text = ("fine-tuning, cached contents and long-running operations are billed after "
                "the call ends, past the gateway's metering; a task with a budget or a model "
                "allow-list cannot start them")  # fmt: skip
        raise Unreadable(403, text)


def requested_model(path: str, body: bytes) -> str | None:
    """The model a request asks for (lenient: None when it cannot be read)."""
    return read_model("POST", path, [], body, strict=False).model


def _path_models(path: str) -> list[tuple[str, str]]:
    """The Azure deployments, Bedrock models and Gemini models ``path`` names: the segment
    after each ``deployments`` or ``model`` one, and the name before the ``:`` (or the end)
    of the one after each ``models`` or ``tunedModels`` one, matched as a router that
    ignores case and collapses empty segments would match it."""
    segments = [segment for segment in path.split("/") if segment]
    found = []
    for n, segment in enumerate(segments[:-1]):
        kind, name = segment.casefold(), segments[n + 1]
        if kind in ("deployments", "model"):
            found.append((kind, name))
        elif kind in ("models", "tunedmodels") and (":" in name or n + 2 == len(segments)):
            found.append((kind, name.partition(":")[0]))
    return found


def _check_path(path: str) -> None:
    segments = path.split("/")
    if "%" in path or "\\" in path or ";" in path or "." in segments or ".." in segments:
        raise Unreadable(400, "the request path holds a %-escape, a backslash, a ';' or a dot "
                              "segment, which an upstream may read as another model")  # fmt: skip


def _check_headers(headers: list[tuple[str, str]]) -> None:
    types = [value for name, value in headers if name == "content-type"]
    for name, value in headers:
        if name == "content-encoding" and value.strip().lower() not in ("", "identity"):
            raise Unreadable(415, f"the request body is encoded ({value[:40]!r}); send it "
                                  "unencoded JSON so its model can be read")  # fmt: skip
    if len(types) > 1:
        raise Unreadable(415, "the request has more than one content-type")
    if types:
        kind, *params = (part.strip().lower() for part in types[0].split(";"))
        charsets = [p.partition("=")[2].strip(" \"'") for p in params if p.startswith("charset")]
        if kind != "application/json" or any(c not in ("utf-8", "utf8") for c in charsets):
            raise Unreadable(415, f"the request body is declared {types[0][:60]!r}; send "
                                  "content-type: application/json (UTF-8)")  # fmt: skip


def _members(body: bytes) -> list[tuple[str, Any]]:
    """The top-level members of a JSON object body, in order, repeats kept (ValueError for
    anything else)."""
    if not body:
        raise ValueError("it is empty")
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError("it is not UTF-8, UTF-16 or UTF-32 text") from exc
    index = _skip(text, 0)
    if text[index : index + 1] != "{":
        raise ValueError("it does not start with '{'")
    members: list[tuple[str, Any]] = []
    index = _skip(text, index + 1)
    if text[index : index + 1] == "}":
        index += 1
    else:
        while True:
            index = _skip(text, index)
            if text[index : index + 1] != '"':
                raise ValueError(f"a member name expected at character {index}")
            key, index = _SCAN_STRING(text, index + 1, True)
            index = _skip(text, index)
            if text[index : index + 1] != ":":
                raise ValueError(f"':' expected at character {index}")
            index = _skip(text, index + 1)
            scan = _SCAN_PAIRS if key in _GEMINI_CONFIGS else _SCAN
            try:
                value, index = scan(text, index)
            except StopIteration as exc:
                raise ValueError(f"a bad value at character {exc.value}") from None
            members.append((key, value))
            index = _skip(text, index)
            delimiter, index = text[index : index + 1], index + 1
            if delimiter == "}":
                break
            if delimiter != ",":
                raise ValueError(f"',' or '}}' expected at character {index - 1}")
    if _skip(text, index) != len(text):
        raise ValueError(f"extra data at character {index}")
    return members


def _skip(text: str, index: int) -> int:
    """The index of the first character at or after ``index`` that is not JSON whitespace."""
    match = _WHITESPACE.match(text, index)
    return match.end() if match else index


def _gemini_config(members: list[tuple[str, Any]]) -> _Pairs | None:
    """A Gemini call's generation config (empty when it gives none); None when it gives
    two (which one counts is the upstream's business)."""
    configs = [v for k, v in members if k in _GEMINI_CONFIGS]
    if len(configs) > 1:
        return None
    return configs[0] if configs and isinstance(configs[0], _Pairs) else _Pairs()


def _output_cap(members: list[tuple[str, Any]]) -> int | None:
    """The most output tokens each answer of the call may emit (see :func:`_choices` for how
    many answers), or None."""
    caps = [v for k, v in members if k in _OUTPUT_CAPS]
    config = _gemini_config(members)
    if config is None:
        return None
    gemini = [v for k, v in config if k in _GEMINI_CAPS]
    if len(caps) + len(gemini) != 1 or not _whole(cap := (caps + gemini)[0]):
        return None  # none, or several (which one counts is the upstream's business)
    if not gemini:
        return max(0, int(cap))
    counts = [v for k, v in config if k in _GEMINI_COUNTS] or [1]
    # A Gemini cap or count below 1 counts as none: proto3 JSON reads 0 as unset, and an
    # upstream that reads it so emits its full maximum.
    if cap < 1 or len(counts) != 1 or not _whole(counts[0]) or counts[0] < 1:
        return None
    return int(cap)


def _choices(members: list[tuple[str, Any]], strict: bool) -> int:
    """How many answers a call asks for, each of which may emit the cap (or the model's
    maximum) and is billed: the largest of its ``n``, ``best_of`` and Gemini
    ``candidateCount`` (1 when it names none). With ``strict``, :class:`Unreadable` for an
    ``n`` or ``best_of`` that is not a whole number of at least 1 (an upstream that read it
    otherwise could bill more than was reserved)."""
    counts = [v for k, v in members if k in _CHOICE_COUNTS and v is not None]  # null: unset
    if strict and any(not _whole(count) or count < 1 for count in counts):
        raise Unreadable(400, "the request body's n or best_of is not a whole number of at "
                              "least 1; a task with a model allow-list or a cost budget "
                              "sends them so or not at all")  # fmt: skip
    counts += [v for k, v in _gemini_config(members) or () if k in _GEMINI_COUNTS]
    return max([1, *(int(count) for count in counts if _whole(count))])


def _whole(value: Any) -> bool:
    """Whether ``value`` is a JSON integer (not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool)
