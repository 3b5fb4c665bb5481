"""Forges (GitHub, GitLab): one client protocol (:mod:`.base`), a module per forge."""
