"""The bounds of hal's values, light to import: the field types of :mod:`hal9999.values`
(config files, ``HAL_*``, run requests) and the command line's option types
(:mod:`hal9999.cli.options`, which must not import pydantic) read the same numbers."""

MIN_TIMEOUT_S = 1.0
"""The shortest timeout accepted: less cannot even start a sandbox."""
MAX_TIMEOUT_S = 366 * 24 * 3600
"""The longest timeout accepted (a year): larger values overflow the event loop's timers."""
MAX_TOKENS = 10**12
"""The largest token budget accepted (a million times a long session, far below SQLite's
64-bit integers): a larger one is a typo (``99999999999999999999999`` was taken as no limit
on the CLI and overflowed the store's integers)."""
