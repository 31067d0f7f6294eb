"""SIGTERM to a ``relay serve`` process during a transfer.

Within the grace period the transfer finishes and both sides exit 0, while the relay reports itself not ready
and refuses new rooms with going_away; past the grace period the remaining peers get going_away (1001). In
both cases the relay process exits by itself. SIGSTOP on the receiver keeps the transfer under way for as
long as the test needs.
"""

from __future__ import annotations

import asyncio
import filecmp
import signal
import subprocess
import time

import httpx

from tests.hardening.test_kill import WAIT, a_transfer, final_names, finish
from tests.hardening.wire import refused_with


async def wait_streaming(relay) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        streaming = relay.metric("relay_rooms", 'state="streaming"') == 1
        if streaming and relay.metric("relay_payload_received_bytes_total") > 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the transfer never started streaming")


async def wait_status(relay, path: str, status: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if relay.get(path).status_code == status:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}")


# uvicorn re-raises the signal once it has shut down cleanly, so a drained relay ends "killed by SIGTERM"
# (status 143 in a shell), as servers conventionally do; anything else would be a crash.
CLEAN_EXIT = -signal.SIGTERM


def relay_exit(relay) -> int:
    try:
        return relay.process.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        relay.process.kill()
        raise AssertionError("the relay did not exit after SIGTERM") from None


async def test_sigterm_lets_a_running_transfer_finish_within_the_grace_period(relay_process, code, tmp_path) -> None:
    relay = relay_process("--shutdown-grace", "60")
    async with a_transfer(relay.ws_url, code, tmp_path) as transfer:
        sender, receiver, out, source = transfer.sender, transfer.receiver, transfer.out, transfer.source
        await wait_streaming(relay)
        receiver.send_signal(signal.SIGSTOP)
        assert relay.get("/readyz").status_code == 200
        relay.process.send_signal(signal.SIGTERM)
        await wait_status(relay, "/readyz", 503)
        assert relay.metric("relay_draining") == 1
        # While draining, a new room is refused with going_away; the running one goes on.
        assert await refused_with(relay.ws_url, code + "-new") == ("going_away", 1001)
        assert relay.process.poll() is None
        receiver.send_signal(signal.SIGCONT)
        receiver_status, receiver_err = await asyncio.to_thread(finish, receiver)
        sender_status, sender_err = await asyncio.to_thread(finish, sender)
    assert (sender_status, receiver_status) == (0, 0), (sender_err, receiver_err)
    assert filecmp.cmp(source, out / "big.bin", shallow=False)
    assert await asyncio.to_thread(relay_exit, relay) == CLEAN_EXIT
    log = relay.log()
    assert "event=draining rooms=1" in log and "outcome=completed" in log and "grace_expired" not in log
    assert "Traceback" not in log, log


async def test_past_the_grace_period_the_remaining_peers_get_going_away(relay_process, code, tmp_path) -> None:
    relay = relay_process("--shutdown-grace", "1")
    # The stopped receiver never reads the relay's going_away (its socket is dropped), so once continued it
    # sees a lost connection and tries to resume; a short window lets it give up within the test's wait.
    async with a_transfer(relay.ws_url, code, tmp_path, "--resume-window", "1") as transfer:
        sender, receiver, out = transfer.sender, transfer.receiver, transfer.out
        await wait_streaming(relay)
        receiver.send_signal(signal.SIGSTOP)  # the transfer cannot finish in time
        relay.process.send_signal(signal.SIGTERM)
        sender_status, sender_err = await asyncio.to_thread(finish, sender)
        assert await asyncio.to_thread(relay_exit, relay) == CLEAN_EXIT
        receiver.send_signal(signal.SIGCONT)
        receiver_status, receiver_err = await asyncio.to_thread(finish, receiver)
    assert sender_status == 1 and "shutting down" in sender_err, sender_err
    assert receiver_status != 0, receiver_err
    assert final_names(out) == []
    log = relay.log()
    assert "event=grace_expired rooms=1" in log and "outcome=going_away" in log
    assert "Traceback" not in log and "running task(s)" not in log, log  # nothing crashed or hung


async def test_a_relay_with_no_rooms_exits_at_once_on_sigterm(relay_process) -> None:
    relay = relay_process("--shutdown-grace", "600")
    relay.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(relay_exit, relay) == CLEAN_EXIT  # would time out if it waited out the grace


async def test_sigterm_ends_rooms_still_waiting_for_receivers_at_once(relay_process, code) -> None:
    from tests.hardening.wire import connect, first, outcome

    relay = relay_process("--shutdown-grace", "600")
    ws = await connect(relay.ws_url, code)
    assert (await first(ws))["type"] == "hello"
    relay.process.send_signal(signal.SIGTERM)
    seen, close = await outcome(ws)  # bounded by the helper's wait, far below the 600 s grace
    assert seen[-1]["code"] == "going_away" and close == 1001
    assert await asyncio.to_thread(relay_exit, relay) == CLEAN_EXIT
