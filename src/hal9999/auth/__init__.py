"""Signing in to model vendors on the host (``hal auth``); credentials never enter a sandbox."""
