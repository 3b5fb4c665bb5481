"""The ``qemu`` provider: QEMU microVMs over copy-on-write golden images (see
:mod:`.provider`), and the image builder (:mod:`.image`)."""
