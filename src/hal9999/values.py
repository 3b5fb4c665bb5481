"""Value rules shared by every way a value reaches hal: the command line, config files,
``HAL_*`` variables and the daemon's API. One field type per kind of value, so
``--timeout inf``, ``timeout_s = inf``, ``HAL_TIMEOUT=inf`` and ``{"timeout_s": 1e999}``
are refused by one rule with one wording.
"""

# No `from __future__ import annotations` here: pydantic would then evaluate each field's
# annotation from its text, a compile each, on every run's path.
import json
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
)

from hal9999.bounds import MAX_TIMEOUT_S as MAX_TIMEOUT_S  # re-exported (light module)
from hal9999.bounds import MAX_TOKENS as MAX_TOKENS
from hal9999.bounds import MIN_TIMEOUT_S as MIN_TIMEOUT_S
from hal9999.envvars import is_env_name as is_env_name  # re-exported (light module)
from hal9999.envvars import is_text as is_text
from hal9999.errors import ConfigError, HalError, UsageError


def empty_list() -> list[Any]:
    """A new empty list: the default factory of a model's list field.

    pydantic reads a default factory's signature (does it take the validated data?) when it
    builds the model; ``list``'s is parsed from its text signature with :mod:`tokenize`,
    dear the first time, a Python function's is read directly.
    ``tests/cli/test_run_imports.py`` checks that a run parses no such signature."""
    return []


AGENT_HOME = "/home/hal"
"""The agent's home inside every sandbox; credential files may only go below it."""


def _env_name(value: str) -> str:
    if not is_env_name(value):
        raise ValueError("expected a variable name: ASCII letters, digits and '_'")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]
"""An environment variable name (``--env``, ``forward_env``, ``api_key_env``)."""

_EGRESS_HOST = r"(\*\.)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}(:[0-9]{1,5})?"  # compiled on first use


def _egress_host(value: str) -> str:
    port = value.rpartition(":")[2] if value.rpartition("]")[2].count(":") == 1 else ""
    fits = not port.isdigit() or 1 <= int(port) <= 65535  # api.example.com:99999 was taken
    if not fits or (not re.fullmatch(_EGRESS_HOST, value) and not _ipv6_entry(value)):
        # Named: of several --egress (or a list in the config), which one is wrong.
        shown = value if len(value) <= 60 else value[:60] + "…"
        raise ValueError(f"{shown!r} is not HOST, HOST:PORT, [IPV6]:PORT or *.DOMAIN[:PORT]")
    return value


def _ipv6_entry(value: str) -> bool:
    """``[IPV6]`` or ``[IPV6]:PORT`` (an IPv6 address in brackets, no zone)."""
    import ipaddress

    match = re.fullmatch(r"\[([0-9A-Fa-f:.]{2,45})\](:[0-9]{1,5})?", value)
    if match is None:
        return False
    try:
        return isinstance(ipaddress.ip_address(match[1]), ipaddress.IPv6Address)
    except ValueError:
        return False


EgressHost = Annotated[str, AfterValidator(_egress_host)]
"""An egress allow-list entry (``[gateway] egress``, ``hal run --egress``)."""


def url_problem(url: str) -> str | None:
    """Why the LLM gateway cannot route ``url`` (None: it can): an ``http://`` or
    ``https://`` URL with a host and, if any, a port number. The rule of ``base_url`` and of
    the gateway's route alike: one it cannot route must never mean the agent goes direct."""
    from urllib.parse import urlsplit  # only where a URL is checked (a run may set none)

    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return "has no valid host or port"
    if parts.scheme not in ("http", "https"):
        return "has no http:// or https:// scheme"
    if not parts.hostname or not port_ok or any(c.isspace() for c in url):
        return "has no valid host or port"
    return None


def _base_url(value: str) -> str:
    problem = url_problem(value)
    if problem is not None:
        shown = value if len(value) <= 60 else value[:60] + "…"
        raise ValueError(
            f"{shown!r} {problem}: the LLM gateway routes only an http:// or https:// URL "
            "with a host, e.g. https://api.anthropic.com"
        )
    return value


def check_base_url(agent: str, url: str | None) -> None:
    """Refuse ``agent``'s API endpoint ``url`` when the LLM gateway cannot route it (a
    :class:`ConfigError` naming ``[agents.NAME] base_url``): before any task exists, and
    again at the gateway's route, for settings that never went through the config's check."""
    problem = None if url is None else url_problem(url)
    if problem is not None:
        shown = url if len(str(url)) <= 60 else str(url)[:60] + "…"
        raise ConfigError(
            f"[agents.{agent}] base_url {shown!r} {problem}",
            hint=f"set [agents.{agent}] base_url to an http:// or https:// URL with a host",
        )


BaseUrl = Annotated[str, AfterValidator(_base_url)]
"""An agent's API endpoint (``[agents.NAME] base_url``): one the LLM gateway can route."""


def _at_least_a_second(value: float) -> float:
    if value < MIN_TIMEOUT_S:
        raise ValueError(f"expected at least {MIN_TIMEOUT_S:g} second")
    return value


TimeoutSeconds = Annotated[
    float,
    Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False),
    AfterValidator(_at_least_a_second),
]
"""A time limit in seconds: finite, from 1 s to a year (``--timeout``, ``timeout_s``)."""
Name = Annotated[str, AfterValidator(_not_blank)]
"""A non-empty name (agent, provider, process manager)."""
Dollars = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A budget in dollars: finite and above 0 (``hal run --max-cost``)."""


def check_value(kind: Any, value: Any, what: str) -> Any:
    """Validate a command-line ``value`` with the config's field type ``kind``.

    Raises :class:`UsageError` ``what: expected ...``, so ``--timeout inf`` and
    ``timeout_s = inf`` are refused by one rule with one wording.
    """
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        raise UsageError(f"{what}: {describe(exc.errors()[0])}", hint=f"fix {what}") from exc


_EXPECTED: dict[str, str] = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected a whole number",
    "int_type": "expected a whole number",
    "int_from_float": "expected a whole number",
    "string_type": "expected a string",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "path_type": "expected a path",
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "finite_number": "expected a finite number",
}


_BOUNDS: dict[str, str] = {
    "greater_than": "greater than",
    "greater_than_equal": "at least",
    "less_than": "less than",
    "less_than_equal": "at most",
}


def describe(error: Mapping[str, Any]) -> str:
    """A pydantic error in words: ``expected a number greater than 0``."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error" and "expected" in ctx:
        return f"expected one of {ctx['expected']}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # "greater than 0", not "greater than 0.0"
        return f"expected a number {_BOUNDS[kind]} {bound}"
    return _EXPECTED.get(kind, str(error.get("msg", "invalid value")))


_Model = TypeVar("_Model", bound=BaseModel)


def defaults_of(model: type[_Model]) -> _Model:
    """``model()``, every field at its default, without building the model's validator and
    serializer where validating could not change the outcome: work for each model
    that a run with no such table or setting pays for nothing. A model with a
    required field, a model validator, a default validated as input (``validate_default``)
    or fields not yet resolved is validated as ``model()`` would be."""
    fields = model.__pydantic_fields__ if model.__pydantic_fields_complete__ else None
    if (
        fields is None
        or model.model_config.get("validate_default")
        or model.__pydantic_decorators__.model_validators
        or any(f.is_required() or f.validate_default for f in fields.values())
    ):
        return model()
    return model.model_construct()


def toml_checked(model: type[_Model], table: Mapping[str, Any]) -> _Model:
    """``table``, read from a TOML file, validated with TOML's own types: a number or a
    boolean is written bare there, so ``timeout_s = "30"`` is a mistake, not 30 seconds (nor
    ``memory_mb = true`` 1 MiB). Pydantic's strict JSON mode has exactly these types (text
    for a path or a choice, an integer for a float); raises its ``ValidationError``."""
    return model.model_validate_json(json.dumps(dict(table), default=str), strict=True)


def setting_hint(error: Mapping[str, Any], where: str, keys: Iterable[str]) -> str:
    """The hint for a bad key of the config table ``where``: its known ``keys`` when the key
    is unknown (a typo), else where to fix it."""
    if error.get("type") == "extra_forbidden":
        return f"{where} takes: {', '.join(keys)}"
    return f"fix it in {where}"


def with_others(found: list[ConfigError]) -> ConfigError:
    """The first of ``found`` (one error per bad key of a table), carrying the others: a run
    says the first, ``hal doctor`` every one (:func:`every_error`)."""
    first = found[0]
    first.details["others"] = tuple(found[1:])
    return first


def every_error(exc: HalError) -> list[HalError]:
    """``exc`` and the others it carries (:func:`with_others`)."""
    return [exc, *exc.details.get("others", ())]
