"""QEMU microVM start paths: cold boot, restore from the saved VM state, warm pool, fork.

Every figure is a median of wall times, each "+ first command" meaning: from asking for a
sandbox to ``true`` having run in it over the exec channel. The baseline is the cold boot
measured in the same run. Under TCG the guest's work is QEMU's own CPU time, which load on
the machine does not inflate: the baseline column gives it too ("guest CPU", user + system
time of the QEMU process up to the first command's end).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Literal, cast

from benchmarks.cases import TRUE, Result
from hal9999.pool import ProviderSettings, SlotDir, WarmPool
from hal9999.providers.base import Provider
from hal9999.providers.qemu.provider import QemuConfig, QemuProvider
from hal9999.spec import SandboxSpec


def images_dir() -> Path:
    """The images of the configured hal home (``HAL_QEMU_IMAGES`` wins), as ``hal`` sees them."""
    from hal9999.config import load_config
    from hal9999.providers.qemu.provider import image_store

    return image_store(load_config()).root


def _provider(root: Path, boot: Literal["restore", "cold"]) -> QemuProvider:
    state = root / "home" / "sandboxes" / f"qemu-{boot}"
    state.mkdir(parents=True, exist_ok=True)
    config = QemuConfig(boot=boot, images_dir=images_dir())
    return QemuProvider(state_dir=state, config=config)


def _spec(root: Path, n: int) -> SandboxSpec:
    workspace = root / "ws" / str(n)
    workspace.mkdir(parents=True, exist_ok=True)
    return SandboxSpec(provider="qemu", workspace=workspace, labels={"hal.task": f"t{n}"})


def guest_cpu_ms(provider: QemuProvider, sandbox_id: str) -> float:
    """CPU time (user + system) QEMU has used so far for the sandbox's VM, in ms."""
    vm = provider.vm_record(sandbox_id)
    assert vm is not None and vm.pid is not None
    fields = Path(f"/proc/{vm.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


async def _create_and_run(provider: QemuProvider, spec: SandboxSpec) -> tuple[float, str]:
    start = time.perf_counter()
    sandbox = await provider.create(spec)
    await sandbox.exec(TRUE)
    elapsed = (time.perf_counter() - start) * 1000
    return elapsed, sandbox.id


def _cpu(samples: list[float], cold: list[float] | None = None) -> str:
    median = statistics.median(samples)
    text = f"guest CPU {median:,.0f} ms"
    if cold and median > 0:  # the same ratio by the guest's own work, which load distorts less
        text += f", {statistics.median(cold) / median:.0f}x less than cold"
    return text


def _running(provider: QemuProvider) -> list[str]:
    return [p.name for p in provider.state_dir.iterdir() if provider.running(p.name)]


async def qemu_cases(runs: int, cold_runs: int) -> list[Result]:
    """Cold boot, restore and warm acquire (each + first command), snapshot and fork."""
    with tempfile.TemporaryDirectory(prefix="hal-bench-qemu-") as tmp:
        root = Path(tmp)
        cold_p, restore_p = _provider(root, "cold"), _provider(root, "restore")
        n = 0

        cpu: dict[str, list[float]] = {"cold": [], "restore": [], "fork": [], "warm": []}

        async def sample(provider: QemuProvider, kind: str = "restore") -> float:
            nonlocal n
            n += 1
            ms, sandbox_id = await _create_and_run(provider, _spec(root, n))
            cpu.setdefault(kind, []).append(guest_cpu_ms(provider, sandbox_id))
            await provider.destroy(sandbox_id)
            return ms

        await sample(restore_p, "first")  # makes the saved state of this shape if missing
        cold = statistics.median([await sample(cold_p, "cold") for _ in range(cold_runs)])
        restore = statistics.median([await sample(restore_p) for _ in range(runs)])

        pool = WarmPool(
            providers=lambda name: cast(Provider, restore_p),
            settings=lambda name: ProviderSettings(max_size=runs),
            slots=SlotDir(root / "slots"),
        )
        await pool.warm(_spec(root, 0), runs)
        warm_samples = []
        leases = []
        before = {sid: guest_cpu_ms(restore_p, sid) for sid in _running(restore_p)}
        for _ in range(runs):
            n += 1
            spec = _spec(root, n)
            start = time.perf_counter()
            lease = await pool.claim(spec)
            await lease.sandbox.exec(TRUE)
            warm_samples.append((time.perf_counter() - start) * 1000)
            assert lease.warm, "the benchmark must take warm sandboxes"
            leases.append(lease)
            sid = lease.sandbox.id
            cpu["warm"].append(guest_cpu_ms(restore_p, sid) - before.get(sid, 0.0))
        for lease in leases:
            await pool.release(lease)
        warm = statistics.median(warm_samples)

        n += 1
        _, source = await _create_and_run(restore_p, _spec(root, n))
        name = f"bench-snap-{source}"
        start = time.perf_counter()
        await restore_p.snapshot(source, name)
        snapshot_ms = (time.perf_counter() - start) * 1000
        fork_samples, fork4_samples = [], []
        try:
            for _ in range(min(runs, 3)):
                n += 1
                start = time.perf_counter()
                [fork] = await restore_p.fork(name, 1, _spec(root, n))
                await fork.exec(TRUE)
                fork_samples.append((time.perf_counter() - start) * 1000)
                cpu["fork"].append(guest_cpu_ms(restore_p, fork.id))
                await restore_p.destroy(fork.id)
            for _ in range(min(runs, 2)):
                n += 1
                start = time.perf_counter()
                forks = await restore_p.fork(name, 4, _spec(root, n))
                await asyncio.gather(*(f.exec(TRUE) for f in forks))
                fork4_samples.append((time.perf_counter() - start) * 1000)
                for f in forks:
                    await restore_p.destroy(f.id)
        finally:
            await restore_p.destroy(source)
            restore_p.images.remove(name)
        fork_ms = statistics.median(fork_samples)
        fork4_ms = statistics.median(fork4_samples)

    base = f"cold boot {cold:,.0f} ms ({_cpu(cpu['cold'])})"
    return [
        Result("qemu cold boot + first command", cold, "ms", _cpu(cpu["cold"]), "1.0x", "-",
               True),
        Result(
            "qemu restore (saved VM state) + first command", restore, "ms",
            f"{base}; {_cpu(cpu['restore'], cpu['cold'])}", f"{cold / restore:.1f}x faster",
            ">= 20x faster", cold / restore >= 20,
        ),
        Result(
            "qemu warm acquire (pool) + first command", warm, "ms",
            f"{base}; {_cpu(cpu['warm'], cpu['cold'])}",
            f"{cold / warm:.0f}x faster", ">= 100x faster", cold / warm >= 100,
        ),
        Result(
            "qemu snapshot (quiesce, save disk layer + VM state, resume)", snapshot_ms, "ms",
            "-", "-", "-", True,
        ),
        Result(
            "qemu fork from snapshot + first command", fork_ms, "ms",
            f"{base}; {_cpu(cpu['fork'], cpu['cold'])}", f"{cold / fork_ms:.1f}x faster", "-",
            True,
        ),
        Result(
            "qemu fork of 4 from snapshot + first command in each", fork4_ms, "ms",
            f"fork of 1: {fork_ms:,.0f} ms", f"{fork4_ms / fork_ms:.2f}x", "<= 1.5x",
            fork4_ms / fork_ms <= 1.5,
        ),
    ]  # fmt: skip


def qemu_ready() -> str | None:
    """Why the qemu benchmarks cannot run (None when they can)."""
    from hal9999.errors import HalError
    from hal9999.providers.qemu.image.store import ImageStore

    try:
        image = ImageStore(images_dir()).get("default")
    except HalError as exc:
        return f"{exc.one_line()} (or set HAL_QEMU_IMAGES)"
    if not image.states():
        return "image 'default' has no saved VM state; rebuild it with `hal image build`"
    return None
