"""hal's tools for hive agents over MCP: a per-agent unix socket served by the daemon
(:mod:`.server`, the only module importing the MCP SDK), reached from inside the agent's
sandbox through a dependency-free stdio forwarder (:mod:`.forwarder`, :mod:`.channel`)."""
