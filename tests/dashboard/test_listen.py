"""``hal serve --listen HOST:PORT``: the dashboard elsewhere over TLS only, with hal's own
certificate or the user's; Host checks hold there too; bad flags get one clear line."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.dashboard.conftest import credential_in

from hal9999.dashboard.auth import SESSION_HEADER
from hal9999.dashboard.tls import _self_signed, parse_listen
from hal9999.errors import ConfigError


def hal_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAL_")}
    env.update(HAL_HOME=str(home), XDG_CONFIG_HOME=str(home / "xdg"))
    return env


def hal(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hal9999", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    env = hal_env(tmp_path / "home")
    yield env, tmp_path / "home"
    hal(env, "serve", "--stop")


def test_listen_serves_the_dashboard_over_tls_only(
    served: tuple[dict[str, str], Path],
) -> None:
    env, home = served
    # Port 0: the system picks a free one and the daemon reports it (a port picked here and
    # bound later by the daemon could be taken by another process in between).
    out = hal(env, "serve", "--detach", "--json", "--listen", "127.0.0.1:0")
    assert out.returncode == 0, out.stderr
    assert "warning: hal serve will also listen on" in out.stderr
    started = json.loads(out.stdout)
    port, link = started["tls_port"], started["dashboard_tls"]
    assert port > 0 and port != started["port"]
    assert json.loads((home / "run" / "serve.json").read_text())["tls_port"] == port
    assert link.startswith(f"https://127.0.0.1:{port}/login?t=")
    cert = home / "tls" / "127.0.0.1.crt"
    assert (home / "tls" / "127.0.0.1.key").stat().st_mode & 0o777 == 0o600
    trust = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(verify=trust, timeout=30) as client:  # a loaded machine is slow
        login = client.get(link)
        assert login.status_code == 200
        assert "set-cookie" not in login.headers
        assert client.get(f"https://127.0.0.1:{port}/").status_code == 200
        status = f"https://127.0.0.1:{port}/api/status"
        assert client.get(status).status_code == 401
        credential = credential_in(login.text)
        assert client.get(status, headers={SESSION_HEADER: credential}).status_code == 200
        # It is this origin's: the plain-HTTP port of the same daemon refuses it.
        plain = f"http://127.0.0.1:{started['port']}/api/status"
        assert client.get(plain, headers={SESSION_HEADER: credential}).status_code == 401
        rebound = client.get(f"https://127.0.0.1:{port}/", headers={"host": f"evil.example:{port}"})
        assert rebound.status_code == 421
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on that port
        httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)


def test_listen_with_the_users_certificate(
    served: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, _ = served
    cert, key = _self_signed(tmp_path / "mine", "localhost")
    out = hal(env, "serve", "--detach", "--json", "--listen", "localhost:0",
              "--tls-cert", str(cert), "--tls-key", str(key))  # fmt: skip
    assert out.returncode == 0, out.stderr
    port = json.loads(out.stdout)["tls_port"]
    shown = ssl.get_server_certificate(("127.0.0.1", port))
    assert shown.strip() == cert.read_text().strip()
    link = json.loads(out.stdout)["dashboard_tls"]
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=30) as client:
        login = client.get(link)
        assert login.status_code == 200 and credential_in(login.text)


def test_listen_flags_are_checked(tmp_path: Path) -> None:
    env = hal_env(tmp_path / "home")
    bad = hal(env, "serve", "--listen", "nope")
    assert bad.returncode != 0 and "is not HOST:PORT" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    half = hal(env, "serve", "--listen", "[::1")  # an IPv6 address without its "]:PORT"
    assert half.returncode == 2 and half.stderr.strip().splitlines() == [
        "hal: error: --listen host '[:' is not a host name or address"
    ]
    cert, _ = _self_signed(tmp_path / "mine", "localhost")
    lone = hal(env, "serve", "--tls-cert", str(cert))
    assert lone.returncode == 2 and "need --listen" in lone.stderr  # a usage error
    unpaired = hal(env, "serve", "--listen", "127.0.0.1:8443", "--tls-cert", str(cert))
    assert unpaired.returncode == 2 and "go together" in unpaired.stderr


@pytest.mark.parametrize("value", ["0.0.0.0:8443", "[::]:8443", "[0:0::0]:8443"])
def test_listen_on_every_address_is_refused_with_the_fix(value: str) -> None:
    """The Host check accepts only the name --listen gives: on 0.0.0.0 every browser
    elsewhere got 421 and the login link named https://0.0.0.0:PORT. Say so, and the fix."""
    with pytest.raises(ConfigError) as refused:
        parse_listen(value)
    assert "means every address" in str(refused.value)
    assert refused.value.hint is not None and "--listen 192.168.1.10:8443" in refused.value.hint
    with pytest.raises(ConfigError) as variable:
        parse_listen(value, "HAL_LISTEN")
    assert variable.value.hint is not None and "HAL_LISTEN=192.168.1.10:8443" in variable.value.hint
    assert parse_listen("192.168.1.10:8443") == ("192.168.1.10", 8443)


@pytest.mark.parametrize(
    "value",
    ["0:8443", "0.0:8443", "00.0.0.0:8443", "0x0:8443", "[::ffff:0.0.0.0]:8443",
     # held already: a scope id, a trailing tab (the C parser stops at white space), the
     # mapped form in hex, the long form, and a run of zeros
     "[::%lo]:8443", "0.0.0.0\t:8443", "[::ffff:0:0]:8443", "[0:0:0:0:0:0:0:0]:8443",
     "00000000000:8443"],
)  # fmt: skip
def test_every_address_in_another_spelling_is_refused_too(value: str) -> None:
    """The refusal asked only ``ipaddress``, which reads none of these as an address, while
    the socket binds each to every address (``0`` is how many write 0.0.0.0): the daemon
    listened everywhere, answered 421 to every browser elsewhere, and linked https://0:8443."""
    with pytest.raises(ConfigError) as refused:
        parse_listen(value)
    assert "means every address" in str(refused.value), refused.value
    assert parse_listen("10:8443") == ("0.0.0.10", 8443)  # an address, not every one


@pytest.mark.parametrize(
    ("value", "host"),
    [("127.1:8443", "127.0.0.1"), ("0x7f.1:8443", "127.0.0.1"), ("0X7F.0.0.1:8443", "127.0.0.1"),
     ("2130706433:8443", "127.0.0.1"), ("0177.0.0.1:8443", "127.0.0.1"),
     ("127.0.0.1.:8443", "127.0.0.1"), ("[0:0::1]:8443", "::1"), ("[::FFFF:7F00:1]:8443",
     "::ffff:7f00:1"), ("Box.Example:8443", "box.example"), ("a.b1:8443", "a.b1")],
)  # fmt: skip
def test_listen_address_is_written_as_a_browser_writes_it(value: str, host: str) -> None:
    """A browser rewrites https://127.1:8443 to https://127.0.0.1:8443 (and [0:0::1] to
    [::1]) and sends that Host, while the Host check accepted only the spelling given to
    --listen: the login link's every request got 421. The host is kept as the browser
    writes it, so the link, the certificate and the Host check all name that."""
    assert parse_listen(value) == (host, 8443)
    assert parse_listen(value, "HAL_LISTEN") == (host, 8443)


@pytest.mark.parametrize("value", ["1.2.3.4.5:8443", "256.1:8443", "4294967296:8443",
                                   "1.2.0x:8443", "a.0x1g.1:8443"])  # fmt: skip
def test_a_host_ending_in_a_number_that_is_no_address_is_refused(value: str) -> None:
    """A browser refuses a host whose last label is a number and that is no IPv4 address;
    the daemon asked the resolver for it and failed later with "cannot listen"."""
    with pytest.raises(ConfigError) as refused:
        parse_listen(value)
    assert "ends in a number but is no IPv4 address" in str(refused.value), refused.value
    assert refused.value.hint is not None and "--listen 192.168.1.10:8443" in refused.value.hint


@pytest.mark.parametrize("where", ["busy", "not-here", "unknown"])
def test_listen_where_hal_cannot_is_one_line(tmp_path: Path, where: str) -> None:
    env = hal_env(tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = {
            "busy": f"127.0.0.1:{busy.getsockname()[1]}",
            "not-here": "192.0.2.1:8443",  # TEST-NET-1: no host has it
            "unknown": "nosuch.invalid:8443",  # .invalid never resolves
        }[where]
        out = hal(env, "serve", "--listen", address)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    assert f"cannot listen on https://{address}" in line and "--listen" in line


def test_listen_on_ipv6(served: tuple[dict[str, str], Path]) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    env, _ = served
    out = hal(env, "serve", "--detach", "--json", "--listen", "[::1]:0")
    assert out.returncode == 0, out.stderr
    port = json.loads(out.stdout)["tls_port"]
    assert json.loads(out.stdout)["dashboard_tls"].startswith(f"https://[::1]:{port}/login?t=")
    with socket.create_connection(("::1", port), timeout=10):
        pass


def test_hal_dashboard_needs_a_running_daemon(tmp_path: Path) -> None:
    out = hal(hal_env(tmp_path / "home"), "dashboard")
    assert out.returncode != 0
    assert out.stderr.strip() == (
        "hal: error: the dashboard is served by hal serve, which is not running "
        "(start it with `hal serve --detach`)"
    )


def test_listen_errors_name_the_variable_the_user_set(tmp_path: Path) -> None:
    """HAL_LISTEN, HAL_TLS_CERT and HAL_TLS_KEY set instead of the options: each error
    names the variable to fix, never an option the user did not give."""
    env = hal_env(tmp_path / "home")
    bad = hal({**env, "HAL_LISTEN": "nope"}, "serve")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "hal: error: HAL_LISTEN 'nope' is not HOST:PORT (for example HAL_LISTEN=192.168.1.10:8443)"
    ]
    cert, _ = _self_signed(tmp_path / "mine", "localhost")
    half = hal({**env, "HAL_LISTEN": "127.0.0.1:8443", "HAL_TLS_CERT": str(cert)}, "serve")
    assert half.returncode == 2 and half.stderr.strip().splitlines() == [
        "hal: error: HAL_TLS_CERT and HAL_TLS_KEY go together (set both, or neither)"
    ]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    pair = {"HAL_TLS_CERT": str(not_pem), "HAL_TLS_KEY": str(not_pem)}
    unusable = hal({**env, **pair, "HAL_LISTEN": "127.0.0.1:0"}, "serve")
    [line] = [line for line in unusable.stderr.splitlines() if line.startswith("hal: error:")]
    assert unusable.returncode == 2 and f"certificate {not_pem} (HAL_TLS_CERT)" in line
    assert "set HAL_TLS_CERT to a PEM certificate and HAL_TLS_KEY to its private key" in line
    assert "--" not in line, line


@pytest.mark.parametrize("given", ["option", "variable"])
def test_a_busy_listen_address_names_what_set_it(tmp_path: Path, given: str) -> None:
    env = hal_env(tmp_path / "home")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        if given == "option":
            out = hal(env, "serve", "--detach", "--listen", address)
        else:
            out = hal({**env, "HAL_LISTEN": address}, "serve", "--detach")
    assert out.returncode == 2, out.stderr
    [line] = [line for line in out.stderr.splitlines() if line.startswith("hal: error:")]
    fix = ("give --listen an address" if given == "option"
           else "set HAL_LISTEN to an address")  # fmt: skip
    assert f"cannot listen on https://{address}: " in line and fix in line, line
    assert ("HAL_LISTEN" in line) == (given == "variable"), line
