"""The fake provider's built-in programs, including a very small ``sh -c``.

The shell knows simple commands joined by ``;``, ``&&`` and ``||``, ``$NAME``/``${NAME}``/
``$?`` expansion (also inside single quotes: this is a fake), ``>&2`` and ``> file``, and
``exit N``. No pipes, loops or subshells: a test that needs them wants a real provider.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hal9999.errors import ExecError
from hal9999.providers.base import StreamEvent
from hal9999.providers.host import fs as hostfs

if TYPE_CHECKING:
    from hal9999.providers.fake.provider import FakeCall

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+|\?))")
_OPERATORS = (";", "&&", "||")


async def _true(call: FakeCall) -> int:
    return 0


async def _false(call: FakeCall) -> int:
    return 1


async def _echo(call: FakeCall) -> int:
    words = call.argv[1:]
    newline = not (words and words[0] == "-n")
    call.out(" ".join(words[0 if newline else 1 :]) + ("\n" if newline else ""))
    return 0


async def _cat(call: FakeCall) -> int:
    if len(call.argv) == 1:
        call.out(call.stdin)
        return 0
    status = 0
    for name in call.argv[1:]:
        host = call.host(name)
        try:
            if host is None:
                raise FileNotFoundError
            call.out(host.read_bytes())
        except OSError:
            call.err(f"cat: {name}: No such file or directory\n")
            status = 1
    return status


async def _pwd(call: FakeCall) -> int:
    call.out(call.cwd + "\n")
    return 0


async def _printenv(call: FakeCall) -> int:
    if len(call.argv) == 1:
        call.out("".join(f"{k}={v}\n" for k, v in call.env.items()))
        return 0
    missing = [name for name in call.argv[1:] if name not in call.env]
    call.out("".join(call.env[name] + "\n" for name in call.argv[1:] if name in call.env))
    return 1 if missing else 0


async def _sleep(call: FakeCall) -> int:
    await asyncio.sleep(float(call.argv[1]) if len(call.argv) > 1 else 0)
    return 0


async def _test(call: FakeCall) -> int:
    args = call.argv[1:]
    if call.argv[0] == "[":
        if not args or args[-1] != "]":
            call.err("[: missing ]\n")
            return 2
        args = args[:-1]
    if len(args) != 2 or args[0] not in ("-e", "-f", "-d"):
        call.err("fake test: only -e, -f and -d PATH are supported\n")
        return 2
    host = call.host(args[1])
    checks = {"-e": Path.exists, "-f": Path.is_file, "-d": Path.is_dir}
    return 0 if host is not None and checks[args[0]](host) else 1


async def _mkdir(call: FakeCall) -> int:
    for name in (a for a in call.argv[1:] if not a.startswith("-")):
        host = call.host(name)
        if host is None:
            call.err(f"mkdir: cannot create directory '{name}'\n")
            return 1
        host.mkdir(parents=True, exist_ok=True)
    return 0


async def _rm(call: FakeCall) -> int:
    flags = "".join(a[1:] for a in call.argv[1:] if a.startswith("-") and a != "--")
    for name in (a for a in call.argv[1:] if not a.startswith("-")):
        sandbox_path = hostfs.normalize(name, call.cwd)
        where = call.sandbox.paths.host(sandbox_path, follow=False)
        if where is None:
            call.err(f"rm: cannot remove '{name}'\n")
            return 1
        try:
            hostfs.remove(where, sandbox_path, "r" in flags)
        except (ExecError, OSError) as exc:
            call.err(f"rm: {exc}\n")
            return 1
    return 0


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


async def _shell(call: FakeCall) -> int:
    if len(call.argv) < 3 or call.argv[1] != "-c":
        call.err("fake sh: only 'sh -c SCRIPT' is supported\n")
        return 2
    lexer = shlex.shlex(call.argv[2].replace("\n", ";"), posix=True, punctuation_chars=";&|>")
    lexer.whitespace_split = True
    status, operator, words = 0, ";", []
    try:
        for token in [*lexer, ";"]:
            if token not in _OPERATORS:
                words.append(token)
                continue
            # "a && b" runs b after success, "a || b" after failure.
            if words and (operator == ";" or (operator == "&&") == (status == 0)):
                status = await _simple(call, words, status)
            operator, words = token, []
    except _Exit as exit_:
        return exit_.status
    return status


async def _simple(call: FakeCall, words: list[str], status: int) -> int:
    def expand(word: str) -> str:
        return _VAR.sub(
            lambda m: str(status) if m[2] == "?" else call.env.get(m[1] or m[2], ""), word
        )

    def to_stderr(event: StreamEvent) -> None:
        call.emit(StreamEvent("stderr", event.data) if event.kind == "stdout" else event)

    def to_file(event: StreamEvent) -> None:
        if event.kind == "stdout":
            captured.append(event.data)
        else:
            call.emit(event)

    argv: list[str] = []
    emit: Callable[[StreamEvent], None] = call.emit
    captured: list[bytes] = []
    target: str | None = None
    tokens = iter(words)
    for token in tokens:
        if token == ">&":
            if next(tokens, "") != "2":
                call.err("fake sh: only >&2 is supported\n")
                return 2
            if argv and argv[-1] == "1":
                argv.pop()
            emit = to_stderr
        elif token == ">":
            target = expand(next(tokens, ""))
            emit = to_file
        elif token in ("|", "&", "||&", "|&"):
            call.err(f"fake sh: {token!r} is not supported\n")
            return 2
        else:
            argv.append(expand(token))
    if not argv:
        return status
    if argv[0] == "exit":
        raise _Exit(int(argv[1]) if len(argv) > 1 else status)
    code = await call.run(argv, emit=emit)
    if target is not None:
        host = call.host(target, follow=False)
        if host is None:
            call.err(f"fake sh: cannot create {target}\n")
            return 1
        host.write_bytes(b"".join(captured))
    return code


BUILTINS: dict[str, Callable[[FakeCall], Awaitable[int]]] = {
    "true": _true,
    "false": _false,
    "echo": _echo,
    "cat": _cat,
    "pwd": _pwd,
    "printenv": _printenv,
    "env": _printenv,
    "sleep": _sleep,
    "test": _test,
    "[": _test,
    "mkdir": _mkdir,
    "rm": _rm,
    "sh": _shell,
    "bash": _shell,
}
"""The programs every fake sandbox starts with."""
