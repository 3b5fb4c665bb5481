"""What the providers whose sandboxes are processes of this host share (``local``,
``bwrap``, ``fake``, ``qemu``): commands as host processes, host-side file operations,
records, control groups, resource totals and the sandbox's user."""
