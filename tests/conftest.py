"""Shared fixtures: a real relay (uvicorn on an ephemeral loopback port) running in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
import uvicorn

from relay.config import Settings
from relay.server import create_app, uvicorn_config

STARTUP_TIMEOUT = 10.0
# Every test client connects from 127.0.0.1, so the per-address limits (sockets, joins per minute) are off in
# the shared fixtures; tests/hardening turns them on explicitly to attack them.
TEST_LIMITS: dict[str, object] = {"max_connections_per_ip": 0, "max_joins_per_minute": 0}


class OnLoopback:
    """A relay listening on 127.0.0.1 at ``port``: ``http_url`` for pages, ``ws_url`` for the WebSocket protocol."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class RunningRelay(OnLoopback):
    """A relay serving in this process, in a thread of its own."""

    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    @property  # type: ignore[override]
    def port(self) -> int:
        return self.settings.port

    @property
    def relay(self):  # the app's Relay, for white-box checks such as "no room is left"
        return self.server.config.app.state.relay

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=STARTUP_TIMEOUT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_relay(settings: Settings) -> RunningRelay:
    settings = replace(settings, host="127.0.0.1", port=free_port(), log_level="warning")
    config = uvicorn_config(settings, create_app(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the relay did not start")
        time.sleep(0.01)
    return RunningRelay(settings, server, thread)


@pytest.fixture
def relay_factory() -> Iterator[Callable[..., RunningRelay]]:
    """Start relays with custom settings; each is stopped after the test."""
    started: list[RunningRelay] = []

    def make(**overrides: object) -> RunningRelay:
        running = start_relay(Settings(**{**TEST_LIMITS, **overrides}))  # type: ignore[arg-type]
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def relay_server() -> Iterator[RunningRelay]:
    """One relay with default settings, shared by the tests of a module."""
    running = start_relay(Settings(**TEST_LIMITS))  # type: ignore[arg-type]
    yield running
    running.stop()
