"""Credential files: which values inside them are secrets, and their removal after a run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hal9999.config import CredentialFile
from hal9999.credentials import EnvKinds, home_relative, remove_files, secrets_in_text

TOKEN = "ghp_9fK2mQ7xLw4Zt8Rb1Vn6Yc3Hd5Js0Ae"


@pytest.mark.parametrize(
    ("text", "secrets", "plain"),
    [
        (f'{{"user": "octocat", "oauth_token": "{TOKEN}", "port": 443}}', [TOKEN], ["octocat"]),
        (f"github.com:\n  user: octocat\n  oauth_token: {TOKEN}\n", [TOKEN], ["octocat"]),
        (
            "[default]\nregion = eu-west-1\naws_secret_access_key = wJalrXUtnFEMI\n",
            ["wJalrXUtnFEMI"],
            ["eu-west-1"],
        ),
        ("export DB_PASSWORD='hunter22'\nexport DB_HOST=db.local\n", ["hunter22"], ["db.local"]),
        ("machine api.example.com login me password s3cretPw\n", ["s3cretPw"], ["me"]),
        (f"{TOKEN}\n", [TOKEN], []),
        (
            '{"nested": {"apiKey": "k-123456"}, "list": [{"password": "pw-abcdef"}]}',
            ["k-123456", "pw-abcdef"],
            [],
        ),
        (f"some prose mentioning {TOKEN} inline\n", [TOKEN], ["prose", "mentioning"]),
        ('{"user":"octocat","token":"tok-12345"}', ["tok-12345"], ["octocat"]),
    ],
)
def test_token_like_values_are_secrets_not_whole_files(
    text: str, secrets: list[str], plain: list[str]
) -> None:
    found = secrets_in_text(text)
    for secret in secrets:
        assert secret in found
    for word in plain:
        assert word not in found
    assert text.strip() not in found or (len(secrets) == 1 and text.strip() == secrets[0])


def test_home_relative_targets() -> None:
    assert home_relative("~/.config/x", "/home/hal") == ".config/x"
    assert home_relative(".netrc", "/home/hal") == ".netrc"
    assert home_relative("/home/hal/.aws/credentials", "/home/hal") == ".aws/credentials"
    assert home_relative("/etc/passwd", "/home/hal") is None
    assert home_relative("../escape", "/home/hal") is None


def test_remove_files_never_follows_agent_links(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    outside = tmp_path / "host-file"
    outside.write_text("keep me")
    (home / ".config" / "token").symlink_to(outside)  # the agent swapped the file for a link
    (home / ".netrc").write_text("secret")
    (home / "dir-cred").mkdir()
    creds = [
        CredentialFile(source=tmp_path / "a", target=".config/token"),
        CredentialFile(source=tmp_path / "b", target="~/.netrc"),
        CredentialFile(source=tmp_path / "c", target="dir-cred"),
    ]
    left = remove_files(home, creds, "/home/hal")
    assert left == ["dir-cred"]
    assert not os.path.lexists(home / ".config" / "token") and outside.read_text() == "keep me"
    assert not (home / ".netrc").exists()


def test_remove_files_refuses_a_linked_parent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "token").write_text("host data")
    (home / ".config").symlink_to(elsewhere)  # a planted directory link
    left = remove_files(home, [CredentialFile(source=tmp_path / "a", target=".config/token")], "/h")
    assert left == [".config/token"]
    assert (elsewhere / "token").read_text() == "host data"


def test_env_kinds_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "kinds.json"
    assert EnvKinds.load(path) == EnvKinds()
    EnvKinds(literal=["FLAG"], secret=["TOKEN"]).save(path)
    assert EnvKinds.load(path) == EnvKinds(literal=["FLAG"], secret=["TOKEN"])
    assert path.stat().st_mode & 0o777 == 0o600


def test_hal_own_log_masks_credential_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from hal9999.cli.main import app

    cred = tmp_path / "hosts.yml"
    cred.write_text(f"github.com:\n  oauth_token: {TOKEN}\n")
    config = tmp_path / "xdg" / "hal9999" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'[[credentials]]\nsource = "{cred}"\ntarget = ".config/gh/hosts.yml"\n')
    for name in [n for n in os.environ if n.startswith("HAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HAL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    handle = app()
    try:
        logging.getLogger("hal9999.test").warning("token is %s", TOKEN)
    finally:
        handle.store.close()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "_hal9999_handler", False):
                logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "token is [REDACTED]" in err and TOKEN not in err
