"""Fixtures for the attack tests: relays run as real ``relay serve`` processes, and raw sockets to hit them with.

A relay in its own process can be measured from outside (``psutil``: memory, open connections), killed and
sent signals, and its log read back, as an operator would see it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.relayproc import RelayProcess, start_relay_process


@pytest.fixture
def relay_process(tmp_path) -> Iterator[Callable[..., RelayProcess]]:
    """Start ``relay serve`` subprocesses with the given flags; each is stopped (SIGTERM, then kill) after."""
    started: list[RelayProcess] = []

    def make(*flags: str, env: dict[str, str] | None = None) -> RelayProcess:
        running = start_relay_process(tmp_path, *flags, env=env)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture
def code() -> str:
    return "h-" + secrets.token_hex(6)
