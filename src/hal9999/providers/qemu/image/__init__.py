"""Golden images for the ``qemu`` provider: building them and keeping them on disk."""
