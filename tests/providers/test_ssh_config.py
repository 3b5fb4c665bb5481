"""``[[providers.ssh.hosts]]`` entries a person can get wrong: each one clear line at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from hal9999.errors import ConfigError
from hal9999.providers.registry import load_provider
from hal9999.providers.ssh import session
from hal9999.providers.ssh.config import SshHost

HOST = {
    "name": "box", "address": "127.0.0.1", "port": 2222, "user": "hal",
    "key_file": "/nonexistent/key", "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA",
}  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("address", "hal@203.0.113.7", "user ="),
        ("address", "203.0.113.7:2222", "port = N"),
        ("address", "box.example:22", "port = N"),
        ("address", "[::1]", "without brackets"),
        ("address", "-oProxyCommand=touch /tmp/hal-pwned", "starts with '-'"),
        ("address", "box one", "not a host name"),
        ("address", "box\n* ssh-ed25519 AAAA", "not a host name"),
        ("address", "box;reboot", "not a host name"),
        ("address", "", "empty"),
        ("user", "-oProxyCommand=touch /tmp/hal-pwned", "login name"),
        ("user", "hal admin", "login name"),
        ("user", "hal\n", "login name"),
        ("user", "", "login name"),
    ],
)
def test_a_careless_address_or_user_is_one_clear_error(
    key: str, value: str, says: str, tmp_path: Path
) -> None:
    settings = {"hosts": [{**HOST, key: value}]}
    with pytest.raises(ConfigError) as caught:
        load_provider("ssh", state_dir=tmp_path, settings=settings)
    message = str(caught.value)
    assert f"hosts.0.{key}" in message and says in message
    assert "\n" not in message


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "fe80::1", "box.example", "my_box-1"])
def test_host_names_and_bare_ip_addresses_are_taken(address: str, tmp_path: Path) -> None:
    host = SshHost.model_validate({**HOST, "address": address})
    # The ssh argv of hal attach ends with the address after "--", the known_hosts line
    # hal writes has the address as its one first field.
    argv = session.attach_argv(host, "/r", tmp_path)
    assert argv[-3:-1] == ["--", address]
    line = (tmp_path / "known_hosts" / "box").read_text()
    assert line.split()[0] == (f"[{address}]:2222") and len(line.split()) == 3
