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
        ("key_file", "", "key_file is empty"),
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


def test_a_key_file_that_is_no_file_is_one_line_naming_host_and_key(tmp_path: Path) -> None:
    import asyncio

    from hal9999.errors import HostUnreachable
    from hal9999.providers.ssh.connections import connect

    host = SshHost.model_validate({**HOST, "key_file": str(tmp_path)})
    with pytest.raises(HostUnreachable) as caught:
        asyncio.run(connect(host, limit_s=5, keepalive=30))
    assert caught.value.one_line().startswith(
        f"the key_file of ssh host 'box', {tmp_path}, is not a readable file"
    )


def test_a_port_that_never_answers_says_so(tmp_path: Path) -> None:
    import asyncio
    import socket

    import asyncssh

    from hal9999.errors import HostUnreachable
    from hal9999.providers.ssh.connections import connect

    made = asyncssh.generate_private_key("ssh-ed25519")
    key = tmp_path / "key"
    made.write_private_key(str(key))
    public = made.export_public_key().decode().strip()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        host = SshHost.model_validate(
            {**HOST, "key_file": str(key), "port": port, "host_key": public}
        )
        with pytest.raises(HostUnreachable) as caught:
            asyncio.run(connect(host, limit_s=1, keepalive=30))
    assert f"(hal@127.0.0.1:{port}): no answer within 1 s" in caught.value.one_line()
