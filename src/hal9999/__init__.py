"""hal9999: run coding agents in isolated, disposable sandboxes."""

__version__ = "0.1.0"
