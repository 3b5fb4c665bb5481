"""``hal image ...``: golden images and snapshots of the ``qemu`` provider."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from hal9999.cli.main import cancel_on_sigterm, cli, emit_json, run_async
from hal9999.cli.options import json_option
from hal9999.config import HalConfig, load_config
from hal9999.errors import ConfigError
from hal9999.providers.qemu.image.store import Image

F = TypeVar("F", bound=Callable[..., Any])


def image_json(image: Image) -> dict[str, Any]:
    """One image as a JSON document; ``notices``: what a rebuild would give it, each with
    the command (:func:`image_notices`)."""
    return {
        **image.meta.model_dump(mode="json"),
        "dir": str(image.dir),
        "size_bytes": image.size_bytes(),
        "states": image.states(),
        "notices": [{"what": what, "fix": fix} for what, fix in image_notices(image)],
    }


def image_notices(image: Image) -> list[tuple[str, str]]:
    """What ``hal doctor`` says of ``image`` (built before pings; before ``adopt``, for a
    root hal), each with the command that rebuilds it."""
    from hal9999.providers.host.user import privileged  # what the qemu provider asks
    from hal9999.providers.qemu.notice import notices

    return notices(image.meta, root=privileged())


@cli.group()
def image() -> None:
    """Golden images and snapshots for the qemu provider."""


def debian_options(name_help: str, included: str) -> Callable[[F], F]:
    """The options every image build takes: ``--name`` (``name_help``), and the Debian
    system's ``--packages`` (beside ``included``), ``--suite`` and ``--mirror``."""
    options = (
        click.option("--name", default="default", show_default=True, help=name_help),
        click.option(
            "--packages", "packages", multiple=True,
            help=f"Extra Debian packages, comma-separated or repeated ({included} are in).",
        ),
        click.option("--suite", default="bookworm", show_default=True, help="Debian release."),
        click.option("--mirror", help="Debian mirror (default: the one apt uses here)."),
    )  # fmt: skip

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@image.command("build")
@debian_options("Image name.", "git, tmux, bash, sshd")
@click.option("--no-state", is_flag=True, help="Skip booting once to save a VM state.")
@json_option("Print the image as JSON when done.")
def image_build(
    name: str,
    packages: tuple[str, ...],
    suite: str,
    mirror: str | None,
    no_state: bool,
    as_json: bool,
) -> None:
    """Build a Debian golden image (rootfs, kernel, exec channel, saved VM state).

    Cached stages (rootfs, kernel, exec helper) are reused when re-run; progress goes to
    stderr."""
    from hal9999.providers.qemu.image.build import build_image
    from hal9999.providers.qemu.provider import image_store

    store = image_store(load_config())
    wanted = [p.strip() for group in packages for p in group.split(",") if p.strip()]
    started = time.monotonic()

    def progress(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.0f}s] {line}", err=True)

    def build() -> Awaitable[Image]:
        return build_image(
            store, name, packages=wanted, suite=suite, mirror=mirror, progress=progress,
            save_state=not no_state,
        )  # fmt: skip

    try:
        # SIGTERM cancels the build like Ctrl-C: its steps are killed and nothing stays mounted.
        built = run_async(cancel_on_sigterm(build))
    except asyncio.CancelledError:
        click.echo(f"hal: image build of {name!r} terminated by SIGTERM; cleaned up", err=True)
        sys.exit(128 + signal.SIGTERM)
    if as_json:
        emit_json(image_json(built))
    else:
        click.echo(built.name)


@image.command("list")
@json_option("Print JSON.")
def image_list(as_json: bool) -> None:
    """Every image: golden ones and snapshots (with their parent)."""
    from hal9999.providers.qemu.provider import image_store

    store = image_store(load_config())
    images = store.all() if store.root.is_dir() else []
    if as_json:
        emit_json([image_json(i) for i in images])
        return
    if not images:
        click.echo(f"no images in {store.root}; build one with `hal image build`")
        return
    for i in images:
        origin = f"from {i.meta.parent}" if i.meta.parent else i.meta.suite
        states = ", ".join(i.states()) or "no saved state"
        size = i.size_bytes() / (1 << 20)
        click.echo(f"{i.name:<20} {i.meta.kind:<8} {origin:<18} {size:7.0f} MiB  "
                   f"kernel {i.meta.kernel or '?'}  states: {states}")  # fmt: skip
        for what, fix in image_notices(i):
            click.echo(f"  warn: {what}\n    fix: {fix}")


@image.command("rm")
@click.argument("names", nargs=-1, required=True)
def image_rm(names: tuple[str, ...]) -> None:
    """Remove images (refused for one a snapshot or a sandbox still stands on)."""
    from hal9999.providers.qemu.provider import image_store

    config = load_config()
    store = image_store(config)
    in_use = run_async(_images_in_use(config))
    for name in names:
        store.get(name)
        users = in_use.get(name, [])
        if users:
            raise ConfigError(
                f"image {name!r} is used by sandbox(es) {', '.join(users)}",
                hint="destroy them first with `hal sandbox destroy`",
            )
        store.remove(name)
        click.echo(f"removed image {name}")


async def _images_in_use(config: HalConfig) -> dict[str, list[str]]:
    """Image name -> the qemu sandboxes whose disks stand on it."""
    from hal9999.home import HalPaths
    from hal9999.providers.qemu.provider import QemuProvider

    if not HalPaths(config.home).sandbox_state("qemu").is_dir():
        return {}
    from hal9999.tasks.plugins import load_provider_for

    provider = load_provider_for(config, "qemu")
    assert isinstance(provider, QemuProvider)
    users: dict[str, list[str]] = {}
    for info in await provider.list():
        if info.state == "destroyed":
            continue
        vm = provider.vm_record(info.id)
        name = vm.image if vm else (info.spec.image or provider.config.image)
        users.setdefault(name, []).append(info.id)
    return users


@image.command("container")
@debian_options("Tag: hal9999:<name>.", "git, tmux, bash")
def image_container(name: str, packages: tuple[str, ...], suite: str, mirror: str | None) -> None:
    """Build a container image for the docker provider (the qemu images' cached Debian
    rootfs, imported into the engine at [providers.docker] url; no registry)."""
    from hal9999.providers.docker.engine import engine_client
    from hal9999.providers.docker.image import build_container_image
    from hal9999.providers.docker.provider import DockerConfig
    from hal9999.providers.qemu.provider import image_store
    from hal9999.providers.registry import checked_settings

    config = load_config()
    settings = checked_settings(
        "docker", DockerConfig, config.providers.get("docker") or {}, config._origin
    )
    client = engine_client(*settings.engine_address())
    wanted = [p.strip() for group in packages for p in group.split(",") if p.strip()]
    started = time.monotonic()

    def progress(line: str) -> None:
        click.echo(f"[{time.monotonic() - started:5.0f}s] {line}", err=True)

    build = build_container_image(
        image_store(config), name, client=client, packages=wanted, suite=suite,
        mirror=mirror, progress=progress,
    )  # fmt: skip
    run_async(build)
    click.echo(f"hal9999:{name}")
