"""The shared value types of config, CLI options and API bodies."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from hal9999.values import EgressHost

EGRESS = TypeAdapter(EgressHost)


@pytest.mark.parametrize("entry", [
    "api.example.com", "api.example.com:443", "*.example.com:1", "a:65535", "[::1]:8443",
    "[2001:db8::1]",
])  # fmt: skip
def test_an_egress_entry_with_a_port_in_range_is_taken(entry: str) -> None:
    assert EGRESS.validate_python(entry) == entry


@pytest.mark.parametrize("entry", ["a:0", "a:65536", "api.example.com:99999", "[::1]:70000"])
def test_an_egress_port_out_of_range_is_refused(entry: str) -> None:
    # Five digits were all a port needed: "api.example.com:99999" was an entry no
    # connection could ever match, a typo taken without a word.
    with pytest.raises(ValidationError, match="is not HOST, HOST:PORT"):
        EGRESS.validate_python(entry)
