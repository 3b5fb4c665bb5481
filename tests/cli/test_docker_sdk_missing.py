"""An install without the ``docker`` extra: ``hal run --provider docker`` fails its task in one
line naming the extra, leaves no sandbox record, and ``hal sandbox list`` and ``hal serve``
work after it (each was an internal error, for good, once a record was left)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.hal import Hal

pytestmark = [pytest.mark.bwrap, pytest.mark.tmux]


def test_a_missing_docker_sdk_is_one_line_and_leaves_nothing(
    hal: Hal, hal_env: dict[str, str], tmp_path: Path
) -> None:
    shadow = tmp_path / "no-docker" / "docker"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named docker')\n")
    without = {"PYTHONPATH": str(shadow.parent)}
    out = hal("run", "--provider", "docker", "--agent", "true {{prompt_file}}", "x",
              env=without)  # fmt: skip
    assert "Traceback" not in out.stderr and "internal error" not in out.stdout + out.stderr
    assert out.returncode == 6, (out.stdout, out.stderr)
    assert "the docker provider needs the docker SDK (pip install 'hal9999[docker]'" in out.stdout
    home = Path(hal_env["HAL_HOME"])
    assert list(home.glob("sandboxes/docker/*")) == [], "no record of a sandbox never made"
    listed = hal("sandbox", "list", env=without)
    assert listed.returncode == 0, listed.stderr
    served = hal("serve", "--detach", env=without)
    try:
        assert served.returncode == 0, served.stderr
    finally:
        assert hal("serve", "--stop").returncode == 0
