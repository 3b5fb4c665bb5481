"""The daemon (``hal serve``): HTTP API, runtime files, and the client the CLI uses."""
