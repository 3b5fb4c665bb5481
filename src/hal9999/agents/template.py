"""What tells a command template (``"mytool --fix {{prompt_file}}"``) from a preset name,
light to import: the thin ``hal run`` client asks it without loading the agents' code."""


def is_template(name_or_template: str) -> bool:
    """Whether the string is a command template rather than a preset name."""
    return "{{" in name_or_template or any(c.isspace() for c in name_or_template)
