"""``hal pool ...`` and ``hal sandbox ...``: the warm pool and the sandboxes behind it."""

from __future__ import annotations

import sys
from typing import Any

import click

from hal9999.cli.main import App, app, cli, emit_json, run_async
from hal9999.cli.options import COUNT, CPUS, MEMORY_MB, NAME, CountCommand, json_option
from hal9999.errors import HalError, SandboxNotFound
from hal9999.server.client import DaemonClient
from hal9999.spec import ArgvCommand


def _need_daemon(a: App) -> DaemonClient:
    client = a.daemon()
    if client is None:
        raise HalError(
            "the warm pool lives in hal serve, which is not running",
            hint="start it with `hal serve --detach`",
        )
    return client


@cli.group()
def pool() -> None:
    """The warm pool of sandboxes (kept by hal serve)."""


@pool.command("status")
@json_option("Print JSON.")
def pool_status(as_json: bool) -> None:
    """Sandboxes per provider and per spec, by state."""
    data = run_async(_need_daemon(app()).call("GET", "/v1/pool"))
    if as_json:
        emit_json(data)
        return
    own = data.get("own_warm", {})
    if not data["providers"] and not own:
        click.echo("the pool is empty" + (" (drained)" if data["paused"] else ""))
    for name, row in data["providers"].items():
        states = ", ".join(f"{n} {s}" for s, n in sorted(row["states"].items()))
        click.echo(f"{name}: {states} (max {row['max_size']}, min warm {row['min_warm']}, "
                   f"after a task: {row['policy']})")  # fmt: skip
        for host in row.get("hosts", []):
            click.echo(f"  host {host['host']} ({host['address']}): "
                       f"{host['sandboxes']}/{host['capacity']} sandboxes")  # fmt: skip
        for key, counts in row["keys"].items():
            spec = counts.pop("spec")
            line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            click.echo(f"  {key}  {spec}: {line}")
    for name, counts in own.items():
        if "error" in counts:
            click.echo(f"{name}: warm sandboxes unknown: {counts['error']}")
        else:
            click.echo(f"{name}: {counts['free']} free warm sandbox(es), kept by the provider")


@pool.command(cls=CountCommand)
@click.argument("count", type=COUNT)
@click.option("--provider", type=NAME, help="Provider to warm (default: the configured ones).")
@json_option("Print JSON.")
def warm(count: int, provider: str | None, as_json: bool) -> None:
    """Create up to COUNT idle sandboxes of the default spec (within the caps)."""
    body: dict[str, Any] = {"count": count, "provider": provider}
    data = run_async(_need_daemon(app()).call("POST", "/v1/pool/warm", body))
    if as_json:
        emit_json(data)
        return
    for name, created in data["created"].items():
        click.echo(f"{name}: {created} warm sandbox(es) created")


@pool.command()
@json_option("Print JSON.")
def drain(as_json: bool) -> None:
    """Destroy idle sandboxes and keep none warm; in-use ones go when their task ends."""
    data = run_async(_need_daemon(app()).call("POST", "/v1/pool/drain"))
    if as_json:
        emit_json(data)
    else:
        click.echo(f"destroyed {data['destroyed']} idle sandbox(es); the pool keeps none warm")


@cli.group()
def sandbox() -> None:
    """Sandboxes of every provider: list, run a command in one, destroy one."""


def _providers(a: App) -> list[str]:
    from hal9999.home import HalPaths  # the service's paths, without building the service

    state = HalPaths(a.config.home).sandboxes
    return sorted(p.name for p in state.iterdir() if p.is_dir()) if state.exists() else []


async def _all_sandboxes(a: App) -> list[dict[str, Any]]:
    pooled: dict[tuple[str, str], dict[str, Any]] = {}
    client = a.daemon()
    if client is not None:
        for row in await client.call("GET", "/v1/sandboxes"):
            pooled[(row["provider"], row["id"])] = row
    else:  # what the last daemon recorded: a sandbox it left to its running task (its stop)
        for kept in a.store.list_sandboxes():
            pooled[(kept.provider, kept.id)] = {"state": kept.state, "task_id": kept.task_id}
    found = []
    for name in _providers(a):
        try:
            infos = await a.plugins.provider(name).list()
        except HalError:
            continue
        for info in infos:
            row = pooled.get((name, info.id), {})
            found.append(
                {
                    "id": info.id,
                    "provider": name,
                    "state": info.state,
                    "pool": row.get("state", "-"),
                    "task_id": row.get("task_id") or info.spec.labels.get("hal.task"),
                    "created_at": info.created_at,
                }
            )
    return found


@sandbox.command("list")
@json_option("Print JSON.")
def sandbox_list(as_json: bool) -> None:
    """Every sandbox any provider holds under this hal home."""
    rows = run_async(_all_sandboxes(app()))
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no sandboxes")
    for row in rows:
        click.echo(f"{row['provider']:<8} {row['id']}  {row['state']:<9} pool {row['pool']:<9} "
                   f"task {row['task_id'] or '-'}")  # fmt: skip


async def _locate(a: App, sandbox_id: str, provider: str | None) -> str:
    if provider is not None:
        # Its own error: a misspelt provider was 'no sandbox X' (every error was skipped).
        await a.plugins.provider(provider).get(sandbox_id)
        return provider
    for name in _providers(a):
        try:
            await a.plugins.provider(name).get(sandbox_id)
            return name
        except HalError:
            continue
    raise SandboxNotFound(f"no sandbox {sandbox_id!r}", hint="list them with `hal sandbox list`")


@sandbox.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--provider", type=NAME, help="The sandbox's provider (found when not given).")
def sandbox_exec(sandbox_id: str, argv: tuple[str, ...], provider: str | None) -> None:
    """Run a command in a sandbox: hal sandbox exec ID -- CMD ARGS..."""
    a = app()

    async def go() -> tuple[int, str, str]:
        name = await _locate(a, sandbox_id, provider)
        client = a.daemon()
        if client is not None:
            out = await client.call(
                "POST", f"/v1/sandboxes/{name}/{sandbox_id}/exec", {"argv": list(argv)}
            )
            return int(out["exit_code"]), out["stdout"], out["stderr"]
        box = await a.plugins.provider(name).get(sandbox_id)
        result = await box.exec(ArgvCommand(argv=argv))
        return result.exit_code, result.text(), result.stderr.decode("utf-8", "replace")

    code, out, err = run_async(go())
    sys.stdout.write(out)
    sys.stderr.write(err)
    sys.exit(code)


@sandbox.command("destroy")
@click.argument("sandbox_id")
@click.option("--provider", type=NAME, help="The sandbox's provider (found when not given).")
def sandbox_destroy(sandbox_id: str, provider: str | None) -> None:
    """Destroy a sandbox (an idle pooled one, or an orphan)."""
    a = app()

    async def go() -> str:
        name = await _locate(a, sandbox_id, provider)
        client = a.daemon()
        if client is not None:
            await client.call("DELETE", f"/v1/sandboxes/{name}/{sandbox_id}")
        else:
            await a.plugins.provider(name).destroy(sandbox_id)
        return name

    name = run_async(go())
    click.echo(f"destroyed {name} sandbox {sandbox_id}")


def _snapshotting(a: App, name: str) -> Any:
    provider = a.plugins.provider(name)
    if not provider.capabilities.snapshot:
        raise HalError(f"provider {name!r} cannot snapshot sandboxes", hint="use a qemu sandbox")
    return provider


@sandbox.command("snapshot")
@click.argument("sandbox_id")
@click.option("--name", help="Name of the new image (generated when not given).")
@click.option("--provider", type=NAME, help="The sandbox's provider (found when not given).")
@json_option("Print JSON.")
def sandbox_snapshot(
    sandbox_id: str, name: str | None, provider: str | None, as_json: bool
) -> None:
    """Save a running sandbox's disk and VM state as a new image; the sandbox goes on."""
    a = app()

    async def go() -> str:
        found = await _locate(a, sandbox_id, provider)
        made: str = await _snapshotting(a, found).snapshot(sandbox_id, name)
        return made

    image = run_async(go())
    if as_json:
        emit_json({"image": image, "sandbox_id": sandbox_id})
    else:
        click.echo(image)


@sandbox.command("fork", cls=CountCommand)
@click.argument("image")
@click.argument("count", type=COUNT, default=1)
@click.option("--provider", default="qemu", show_default=True, help="Provider of the image.")
@click.option("--cpus", type=CPUS, help="vCPUs of each copy.")
@click.option("--memory", "memory_mb", type=MEMORY_MB, help="Memory of each copy, in MiB.")
@json_option("Print JSON.")
def sandbox_fork(
    image: str,
    count: int,
    provider: str,
    cpus: float | None,
    memory_mb: int | None,
    as_json: bool,
) -> None:
    """Start COUNT sandboxes from IMAGE (a snapshot), concurrently; print their ids."""
    from hal9999.spec import Resources, SandboxSpec

    a = app()
    resources = Resources(cpus=cpus, memory_mb=memory_mb)
    spec = SandboxSpec(provider=provider, image=image, resources=resources)

    async def go() -> list[str]:
        started = await _snapshotting(a, provider).fork(image, count, spec)
        return [box.id for box in started]

    ids = run_async(go())
    if as_json:
        emit_json({"image": image, "sandboxes": ids})
    else:
        click.echo("\n".join(ids))
