"""Characters a person must see spelled out wherever hal shows an agent's text (terminal,
dashboard, review diff): no import, every surface uses it."""

BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
"""Bidirectional controls (marks, embeddings, overrides, isolates): a terminal that lays out
bidirectional text (Konsole, mlterm, VTE's) reorders what follows them, so a line of an
agent's code reads as a comment while it is code ("Trojan Source")."""
INVISIBLE = (
    0x00AD, 0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x200B, *range(0x2060, 0x2065),
    *range(0x206A, 0x2070), 0x3164, 0xFEFF, 0xFFA0, *range(0xFFF9, 0xFFFC),
    *range(0x1D173, 0x1D17B), 0xE0001, *range(0xE0020, 0xE0080),
)  # fmt: skip
"""Characters a terminal or a page draws as nothing (default-ignorable in Unicode: zero width
space, word joiner, BOM, soft hyphen, fillers, tags): two names that read the same were
different (a file, a branch), and text an operator reviewed could carry lines they never saw
(ASCII spelled in tags, which the next model reads). Kept: the zero width joiner and
non-joiner and the variation selectors, which scripts and emoji need (so a message can still
hide bits in variation selectors after a visible character: left)."""
SPELLED_OUT = {c: f"\u27e8U+{c:04X}\u27e9" for c in (*BIDI_CONTROLS, *INVISIBLE)}
"""Each bidirectional control and invisible character spelled out (``⟨U+202E⟩``), as the
dashboard shows it."""
