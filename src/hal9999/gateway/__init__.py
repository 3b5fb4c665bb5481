"""The host-side LLM gateway and egress policy (see docs/security.md)."""
