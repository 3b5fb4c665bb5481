"""``parse_event`` validates a line with the model its ``type`` names (so a process builds
only the event models it reads); what it returns and what it raises stay the union's."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hal9999.events.models import EVENT_ADAPTER, parse_event

GOOD = [
    b'{"type":"task_created","seq":1,"ts":1.5,"task_id":"t","prompt_chars":3,"agent":"a",'
    b'"provider":"bwrap","repo":"/r"}',
    b'{"type":"phase","seq":2,"phase":"running","previous":"preparing"}',
    b'{"type":"usage","input_tokens":3,"cost_usd":1,"total":1}',  # lax: 1 -> 1.0, True
    b'{"type":"tool_call","name":"x","input":{"a":[1,2]}}',
    b'{"type":"message","level":"warning","text":"t"}',
    b'{"type":"raw","data":{}}',
    '{"type":"agent_text","text":"é"}',
]

BAD = [
    b"",
    b"not json",
    b"[]",
    b'"task_end"',
    b'{"seq":1}',  # no type
    b'{"type":["phase"]}',
    b'{"type":"no_such_kind"}',
    b'{"type":"phase"}',  # a field missing
    b'{"type":"phase","phase":"x","extra":1}',  # extra="forbid"
    b'{"type":"usage","input_tokens":"many"}',
    b'{"type":"task_end","status":"x"',  # cut short
]


@pytest.mark.parametrize("line", GOOD)
def test_a_valid_line_parses_as_the_union_parses_it(line: bytes | str) -> None:
    event = parse_event(line)
    expected = EVENT_ADAPTER.validate_json(line)
    assert type(event) is type(expected)
    assert event.model_dump() == expected.model_dump()
    assert event.model_fields_set == expected.model_fields_set


@pytest.mark.parametrize("line", BAD)
def test_an_invalid_line_raises_the_unions_error(line: bytes) -> None:
    with pytest.raises(ValidationError) as expected:
        EVENT_ADAPTER.validate_json(line)
    with pytest.raises(ValidationError) as got:
        parse_event(line)
    assert got.value.errors() == expected.value.errors()
