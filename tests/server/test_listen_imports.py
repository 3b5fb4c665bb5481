"""The daemon's listeners load uvicorn's websocket protocol at the first websocket, not at
start (issue 16): :mod:`websockets` was ~5 % of the instructions of a daemon's start and
stop. Counted in a fresh interpreter, so load cannot make this pass or fail."""

from __future__ import annotations

import subprocess
import sys

LISTENER = """
import sys
from uvicorn.server import ServerState
from hal9999.server.listen import Listener, ListenerLimits

async def app(scope, receive, send):
    pass

listener = Listener(app, ListenerLimits("unix"))
print("websockets" in sys.modules)
made = listener.config.ws_protocol_class(
    config=listener.config, server_state=ServerState(), app_state={}
)
print("websockets" in sys.modules, type(made).__name__)
"""


def test_the_websocket_protocol_loads_at_the_first_websocket() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LISTENER], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "True", "WebSocketsSansIOProtocol"], done.stderr
