"""What ``hal doctor`` says of the ``qemu`` provider: QEMU, the image build tools, the images
(and what a rebuild would give each), the guest kernel, and KVM (probed by booting)."""

from __future__ import annotations

import shutil
from pathlib import Path

from hal9999.errors import HalError
from hal9999.providers.doctor import Check, DoctorScope
from hal9999.providers.qemu.image.store import Image, ImageStore
from hal9999.providers.qemu.notice import notices


async def checks(scope: DoctorScope) -> list[Check]:
    """The ``qemu`` lines of the report."""
    fix = "apt-get install qemu-system-x86 qemu-utils (or from a checkout: scripts/setup-qemu.sh)"
    found = [
        await scope.tool("qemu", ["qemu-system-x86_64", "--version"], fix, False),
        await scope.tool("qemu-img", ["qemu-img", "--version"], fix, False),
        await scope.tool(
            "debootstrap", ["debootstrap", "--version"], "apt-get install debootstrap "
            "(needed by `hal image build`)", False,
        ),
    ]  # fmt: skip
    config = scope.config
    if isinstance(config, HalError):
        return [*found, Check("qemu images", False, config.message, config.hint, False)]
    try:
        from hal9999.providers.qemu.provider import image_store

        store = image_store(config)
        images = store.all() if store.root.is_dir() else []
    except HalError as exc:  # HAL_QEMU_IMAGES, say (a broken config has its own check)
        return [*found, Check("qemu images", False, exc.message, exc.hint, False)]
    except Exception as exc:  # a broken config is reported by the config check
        return [*found, Check("qemu images", False, str(exc), None, False)]
    golden = [i for i in images if i.meta.kind == "golden"]
    if images:
        names = ", ".join(f"{i.name} ({i.meta.kind}, {len(i.states())} saved state(s))"
                          for i in images)  # fmt: skip
        found.append(Check("qemu images", True, f"{store.root}: {names}", required=False))
    else:
        found.append(Check("qemu images", False, f"none in {store.root}",
                           "hal image build (as root)", required=False))  # fmt: skip
    from hal9999.providers.host.user import privileged  # what the provider asks

    found += outdated_images(images, root=privileged())
    if golden:
        found.append(Check("guest kernel", True, golden[0].meta.kernel, required=False))
    found.append(await _kvm(store, golden[0] if golden else None))
    return found


def outdated_images(images: list[Image], *, root: bool) -> list[Check]:
    """One line per thing an image lacks that a rebuild gives it: an exec agent that
    answers pings (a hung VM of it is never noticed, its commands wait forever) and, for a
    ``root`` hal, ``hal-setup``'s ``adopt`` step (each start, restore or fork runs a separate
    find/chown in the guest). Each says the command that rebuilds it."""
    return [Check(f"qemu image {i.name}", False, what, fix, required=False)
            for i in images for what, fix in notices(i.meta, root=root)]  # fmt: skip


async def _kvm(store: ImageStore, image: Image | None) -> Check:
    """Whether KVM really runs a guest here (booted once, remembered), else TCG."""
    if not Path("/dev/kvm").exists():
        return Check("kvm", False, "no /dev/kvm: qemu sandboxes use TCG (software emulation, "
                     "slower)", "enable KVM (nested virtualisation) for faster VMs",
                     required=False)  # fmt: skip
    if image is None or shutil.which("qemu-system-x86_64") is None:
        return Check("kvm", False, "/dev/kvm exists; not probed yet (needs QEMU and an image)",
                     "hal image build", required=False)  # fmt: skip
    from hal9999.providers.qemu.state import accel

    chosen, why = await accel(store, image)
    return Check("kvm", chosen == "kvm", f"{why}: qemu sandboxes use {chosen}",
                 None if chosen == "kvm" else "TCG works; HAL_QEMU_ACCEL=kvm forces KVM",
                 required=False)  # fmt: skip
