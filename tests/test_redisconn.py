"""The embedded Redis (jisr/redisconn.py): its TCP port must reach it, not whoever took the port first."""

from __future__ import annotations

import socket
from pathlib import Path

import redis

from jisr import redisconn


def test_a_port_taken_between_choosing_and_binding_is_not_used(tmp_path: Path, monkeypatch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real_free_port = redisconn._free_port
    offered = iter([taken])
    monkeypatch.setattr(redisconn, "_free_port", lambda: next(offered, None) or real_free_port())
    try:
        handle = redisconn.connect_redis(None, name="port-race", directory=tmp_path)
        try:
            assert handle.port != taken
            handle.embedded.set("written-through-the-socket", b"yes")
            over_tcp = redis.Redis(host=handle.host, port=handle.port)
            assert over_tcp.get("written-through-the-socket") == b"yes"
            over_tcp.close()
        finally:
            handle.close()
    finally:
        squatter.close()
