"""Models' defaults made without building the model's validator: equal to what
validating nothing gives, and validated as usual where a model needs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hal9999.config import HalConfig
from hal9999.errors import ConfigError
from hal9999.pool.settings import ProviderSettings, SchedulerSettings, provider_settings
from hal9999.providers.bwrap.provider import BwrapConfig
from hal9999.providers.registry import checked_settings
from hal9999.spec import ArgvCommand, ProcessSpec, Resources, RestartPolicy, SandboxSpec
from hal9999.values import defaults_of

UNBUILT = (ProviderSettings, SchedulerSettings, BwrapConfig, Resources, RestartPolicy)


@pytest.mark.parametrize("model", UNBUILT, ids=lambda m: m.__name__)
def test_defaults_of_a_model_equal_what_validating_nothing_gives(model: type[BaseModel]) -> None:
    made, validated = defaults_of(model), model()
    assert type(made) is model
    assert made == validated
    assert made.model_dump() == validated.model_dump()
    assert made.model_fields_set == validated.model_fields_set == set()
    assert made.__pydantic_extra__ == validated.__pydantic_extra__


def test_default_fields_of_the_specs_equal_validated_ones(tmp_path: Path) -> None:
    # ProcessSpec.restart, SandboxSpec.resources and HalConfig.resources are built without
    # validation at import; each must equal the validated default and serialize alike.
    spec = ProcessSpec(
        name="p", command=ArgvCommand(argv=("true",)), log_path=tmp_path, exit_path=tmp_path
    )
    assert spec.restart == RestartPolicy() and spec.restart.model_fields_set == set()
    assert spec == ProcessSpec.model_validate_json(spec.model_dump_json())
    sandbox = SandboxSpec()
    assert sandbox.resources == Resources()
    # The pool keys on the whole spec: the same spec either way, in its JSON too.
    assert sandbox == SandboxSpec(resources=Resources())
    assert sandbox.model_dump_json() == SandboxSpec(resources=Resources()).model_dump_json()
    assert HalConfig(home=tmp_path).resources == Resources()


class _Required(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    host: str


class _Checked(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)
    size: int = 1

    @model_validator(mode="after")
    def _double(self) -> _Checked:
        object.__setattr__(self, "size", self.size * 2)
        return self


class _ValidatedDefault(BaseModel):
    model_config = ConfigDict(defer_build=True)
    size: int = Field(default="3", validate_default=True)  # type: ignore[assignment]


def test_defaults_of_validates_a_model_that_needs_it() -> None:
    with pytest.raises(ValidationError, match="host"):
        defaults_of(_Required)
    assert defaults_of(_Checked).size == 2  # its model validator ran
    assert defaults_of(_ValidatedDefault).size == 3


def test_a_missing_provider_table_still_names_a_required_key() -> None:
    with pytest.raises(ConfigError, match=r"\[providers.ssh\] host: required key is missing"):
        checked_settings("ssh", _Required, {})


def test_settings_from_nothing_are_the_defaults(tmp_path: Path) -> None:
    config = HalConfig(home=tmp_path)
    assert provider_settings(config, {}, "bwrap") == ProviderSettings()
    assert checked_settings("bwrap", BwrapConfig, {}) == BwrapConfig()


BUILT_AFTER = """
import sys
from hal9999.config import HalConfig
from hal9999.pool.settings import ProviderSettings, SchedulerSettings, provider_settings
from hal9999.pool.settings import scheduler_settings
from hal9999.providers.bwrap.provider import BwrapConfig
from hal9999.providers.registry import checked_settings
from hal9999.spec import Resources, RestartPolicy
config = HalConfig(home=sys.argv[1])
provider_settings(config, {}, "bwrap"), scheduler_settings(config, {})
checked_settings("bwrap", BwrapConfig, {})
models = (ProviderSettings, SchedulerSettings, BwrapConfig, Resources, RestartPolicy)
print(sorted(m.__name__ for m in models if m.__pydantic_complete__))
"""


def test_settings_and_defaults_from_nothing_build_no_validator(tmp_path: Path) -> None:
    # In a fresh interpreter: the tests above have built these models in this one.
    done = subprocess.run(
        [sys.executable, "-c", BUILT_AFTER, str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
