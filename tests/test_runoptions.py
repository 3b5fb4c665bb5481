"""The table of ``hal run``'s options against the request model and the command it makes."""

from __future__ import annotations

from click.testing import CliRunner

from hal9999.runoptions import OPTIONS, RunArgs, run_wire
from hal9999.tasks.request import run_request, wire_fields


def test_every_option_that_fills_the_request_names_a_field_of_its_model() -> None:
    filled = {option.wire for option in OPTIONS if option.wire is not None}
    assert filled <= wire_fields(), sorted(filled - wire_fields())


def test_the_command_takes_every_option_of_the_table() -> None:
    from hal9999.cli.main import cli
    from hal9999.cli.run import run

    flags = [opt for param in run.params for opt in getattr(param, "opts", [])]
    assert [option.flag for option in OPTIONS] == [f for f in flags if f.startswith("--")]
    shown = CliRunner().invoke(cli, ["run", "--help"]).output
    assert all(option.flag in shown for option in OPTIONS)


def test_a_request_of_the_tables_defaults_is_valid() -> None:
    defaults = {"default_agent": "claude", "default_provider": "bwrap",
                "process_manager": "tmux", "timeout_s": 3600.0}  # fmt: skip
    wire = run_wire(RunArgs.parsed("fix it"), defaults, cwd="/")
    request = run_request(wire)
    assert (request.agent, request.provider, request.timeout_s) == ("claude", "bwrap", 3600.0)
    assert (request.priority, request.retries, request.egress_only) == (0, 0, None)
