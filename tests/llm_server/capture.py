"""Run a real agent CLI against the scripted server and save what it did.

    unshare -n sh -c 'ip link set lo up && \
        .venv/bin/python -m tests.llm_server.capture claude codex opencode aider gemini'

(`unshare -n` gives the run a network with loopback only, so nothing can leave the machine.)
For each agent this plants CALC_BUG in a fresh git repo under /tmp/hal-capture/<agent>/repo,
serves `fix_bug_script(agent)` and writes into tests/agents/captured/<agent>/:

    stdout.jsonl | stdout.txt   the CLI's stdout, verbatim
    stderr.txt                  its stderr
    requests.jsonl              one summary per request the server got
    run.json                    argv, env, exit code, seconds, fixed?, test passed?, paths
    tools.json                  the tools the first model call offered: names and parameters
    connects.txt                (--strace) every connect() the CLI's processes attempted
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .cli_runs import COMMANDS, AgentSetup
from .scripts import CALC_BUG, PROMPT, fix_bug_script
from .server import RecordedRequest, ScriptedLLMServer

ROOT = Path("/tmp/hal-capture")
"""Fixed work root, so the paths inside captured output are the same on every run."""
OUT = Path(__file__).resolve().parents[1] / "agents" / "captured"
"""Where captures are written (tests/agents/captured)."""
GIT = ["git", "-c", "user.name=hal", "-c", "user.email=hal@example.invalid"]


def summarize(request: RecordedRequest) -> dict[str, Any]:
    """What a request log line keeps: routing, the turn picked, and the body's outline."""
    body = request.body if isinstance(request.body, dict) else {}
    messages = body.get("messages") or body.get("input") or body.get("contents") or []
    tools = _flat_tools(body)
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "api": request.api,
        "turn_index": request.turn_index,
        "side": request.side,
        "status": request.status,
        "user_agent": request.headers.get("user-agent"),
        "auth": request.headers.get("x-api-key")
        or request.headers.get("x-goog-api-key")
        or request.headers.get("authorization"),
        "model": body.get("model"),
        "stream": body.get("stream"),
        "items": len(messages) if isinstance(messages, list) else 1,
        "tools": [
            t.get("name") or t.get("function", {}).get("name") or t.get("type") for t in tools
        ],
        "last_item": messages[-1] if isinstance(messages, list) and messages else messages,
    }


def _flat_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The offered tools; Gemini's `functionDeclarations` groups are flattened."""
    tools: list[dict[str, Any]] = []
    for tool in body.get("tools") or []:
        tools.extend(tool.get("functionDeclarations") or [tool])
    return tools


def tool_shapes(request: RecordedRequest) -> dict[str, Any]:
    """Each offered tool's kind, parameter names and required ones, from one request."""
    shapes: dict[str, Any] = {}
    for tool in _flat_tools(request.body or {}):
        spec = tool.get("function", tool)
        schema = (
            spec.get("input_schema")
            or spec.get("parameters")
            or spec.get("parametersJsonSchema")
            or {}
        )
        name = spec.get("name") or tool.get("type")
        shapes[name] = {
            "kind": tool.get("type", "function"),
            "properties": sorted(schema.get("properties", {})),
            "required": schema.get("required", []),
        }
        if tool.get("type") == "custom":
            shapes[name]["format"] = tool.get("format", {}).get("type")
    return shapes


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return (done.stdout or done.stderr).strip().splitlines()[-1]


def _connects(trace: Path) -> list[str]:
    """Unique connect() targets from an strace log, unix sockets included."""
    seen: dict[str, None] = {}
    for line in trace.read_text().splitlines():
        match = re.search(r"connect\(\d+, (\{.*?\}), \d+\) = (.*)$", line)
        if match:
            seen[f"{match.group(1)} = {match.group(2).split(' (')[0]}"] = None
    return list(seen)


def capture(
    agent: str, out: Path, *, strace: bool, timeout: float, root: Path = ROOT
) -> dict[str, Any]:
    """Run one agent through the bug fix and write its capture directory."""
    work = root / agent
    shutil.rmtree(work, ignore_errors=True)
    repo, home = work / "repo", work / "home"
    repo.mkdir(parents=True)
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = hal\n\temail = hal@example.invalid\n")
    CALC_BUG.write(repo)
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*GIT, "add", "."], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "planted bug"], cwd=repo, check=True)

    script = fix_bug_script(agent, repo)
    dest = out / agent
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with ScriptedLLMServer(script) as server:
        setup = AgentSetup(server.base_url, home, PROMPT, script.model, (CALC_BUG.file,))
        command = COMMANDS[agent](setup)
        argv = command.argv
        if strace:
            argv = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(work / "strace")]
            argv += command.argv
        started = time.monotonic()
        try:
            done = subprocess.run(
                argv,
                cwd=repo,
                env=command.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            exit_code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            exit_code, stdout, stderr = None, _text(exc.stdout), _text(exc.stderr)
            stderr += f"\n[capture: killed after {timeout}s]\n"
        seconds = round(time.monotonic() - started, 1)
        requests = server.requests.all()

    suffix = "jsonl" if command.output_format == "jsonl" else "txt"
    (dest / f"stdout.{suffix}").write_text(stdout)
    (dest / "stderr.txt").write_text(stderr)
    with (dest / "requests.jsonl").open("w") as log:
        for request in requests:
            log.write(json.dumps(summarize(request)) + "\n")
    calls = [r for r in requests if r.api and not r.side]
    if calls:
        (dest / "tools.json").write_text(json.dumps(tool_shapes(calls[0]), indent=2) + "\n")
    if strace:
        (dest / "connects.txt").write_text("\n".join(_connects(work / "strace")) + "\n")
    test = subprocess.run(
        CALC_BUG.test_command.split(), cwd=repo, capture_output=True, text=True, timeout=60
    )
    result = {
        "agent": agent,
        "version": _version(command.argv[0]),
        "argv": command.argv,
        "env": command.env,
        "exit_code": exit_code,
        "seconds": seconds,
        "fixed": CALC_BUG.is_fixed(repo),
        "test_passed": test.returncode == 0,
        "requests": [f"{r.method} {r.path}{'?' + r.query if r.query else ''}" for r in requests],
        "model_calls": sum(1 for r in requests if r.api and not r.side),
        "side_calls": sum(1 for r in requests if r.side),
    }
    (dest / "run.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    """Capture the agents named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agents", nargs="+", choices=sorted(COMMANDS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--strace", action="store_true", help="log connect() attempts")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--work", type=Path, default=ROOT, help="where repos and homes go")
    args = parser.parse_args()
    failed = 0
    for agent in args.agents:
        result = capture(agent, args.out, strace=args.strace, timeout=args.timeout, root=args.work)
        ok = result["fixed"] and result["test_passed"] and result["exit_code"] == 0
        failed += not ok
        sys.stdout.write(
            f"{agent}: exit={result['exit_code']} fixed={result['fixed']} "
            f"test={result['test_passed']} {result['seconds']}s {result['requests']}\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
