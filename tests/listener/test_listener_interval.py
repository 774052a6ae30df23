"""The update interval (docs/API.md "Update interval"): `subscribe` with `"interval_ms": N` makes the connection get at
most one state of a task per N ms, the task's latest; urgent states (a stage change, the end, a cancel request) go
at once, after the state held back. Over real sockets, beside a client without an interval."""

from __future__ import annotations

import asyncio
import time

from progress_engine import StageStatus
from test_listener_delta import Reconstruction


def test_at_most_one_state_per_interval_the_latest_and_the_end_at_once(wire):
    t = wire.open(throttle_ms=0, resource_interval_ms=3600000)
    t.create_task_progress_sync("paced", "sdxl", "image_generation")
    t.update_progress_sync("paced", 0, 1000, "step 0")  # executing already: every later step is not urgent
    interval = 0.3
    arrivals = {"slow": [], "every": []}

    async def read(ws, name):
        while True:
            msg = await wire.recv(ws, 10)
            if msg["type"] == "progress.update":
                arrivals[name].append((time.monotonic(), msg))
                if msg["data"]["status"] == "completed":
                    return

    async def scenario():
        async with wire.connect(t, "slow") as slow, wire.connect(t, "every") as every:
            await wire.established(slow)
            await wire.established(every)
            await wire.request(slow, {"type": "subscribe", "task_ids": ["paced"], "interval_ms": 300}, "subscribed")
            await wire.request(every, {"type": "subscribe", "task_ids": ["paced"]}, "subscribed")
            readers = [asyncio.create_task(read(slow, "slow")), asyncio.create_task(read(every, "every"))]
            start = time.monotonic()
            step = 0
            while time.monotonic() - start < 1.5:
                step += 1
                t.update_progress_sync("paced", step, 1000, f"step {step}")
                await asyncio.sleep(0.01)
            t.complete_task_sync("paced")
            done = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*readers), 10)
            return done

    done = wire.run(scenario(), timeout=30)
    slow = arrivals["slow"]
    every = arrivals["every"]
    # The current state on subscribe, then at most one state per 300 ms over 1.5 s (the interval counting from any
    # state sent), then the end (urgent).
    live = [(at, m) for at, m in slow if m["data"]["status"] != "completed"]
    assert 4 <= len(live) <= 8, [m["seq"] for _, m in slow]
    assert len(every) >= 3 * len(live), (len(every), len(live))
    # Gaps as this client's loop saw them: one arrival read late and the next on time shortens a gap, so the
    # bound leaves room (without the interval they would be about 10 ms).
    gaps = [b[0] - a[0] for a, b in zip(live, live[1:])]
    assert min(gaps) >= interval * 0.6, gaps
    # Each state sent is the task's latest at the time: its seq is the newest the other client had by then.
    for at, m in live[1:]:
        newer = [x for when, x in every if when <= at - 0.05 and x["seq"] > m["seq"]]
        assert not newer, (m["seq"], newer[0]["seq"])
    seqs = [m["seq"] for _, m in slow]
    assert seqs == sorted(set(seqs)), seqs
    # The end is not held back: it comes as soon as the other client's does.
    end_slow = slow[-1]
    assert end_slow[1]["data"]["status"] == "completed" and end_slow[1]["seq"] == every[-1][1]["seq"]
    assert end_slow[0] - every[-1][0] < 0.15, (end_slow[0] - every[-1][0], end_slow[0] - done)
    wire.assert_alive(t)


def test_a_stage_change_goes_at_once_after_the_state_held_back(wire):
    t = wire.open(throttle_ms=0, resource_interval_ms=3600000)
    t.create_task_progress_sync("staged", "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "held") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["staged"], "interval_ms": 5000}, "subscribed")
            first = await wire.recv(ws, 5)  # the current state
            t.update_progress_sync("staged", 1, 10, "one")  # queued: the interval starts here
            one = await wire.recv(ws, 5)
            assert one["data"]["stages"]["2"]["message"] == "one", one
            t.update_progress_sync("staged", 2, 10, "two")  # held back (5 s)
            await asyncio.sleep(0.2)
            t.update_stage_sync("staged", 3, StageStatus.IN_PROGRESS, 0.0, "decoding")  # urgent
            at = time.monotonic()
            two = await wire.recv(ws, 2)
            stage = await wire.recv(ws, 2)
            assert time.monotonic() - at < 1.0
            assert two["data"]["stages"]["2"]["message"] == "two", two
            assert stage["data"]["current_stage"] == 3, stage
            assert first["seq"] < one["seq"] < two["seq"] < stage["seq"]

    wire.run(scenario(), timeout=30)


def test_delta_with_an_interval_rebuilds_every_state_it_gets(wire):
    """A delta client with an interval: the state held back is replaced by newer ones, so what it finally gets
    is a full state or a patch against what it holds, never against a state it did not get."""
    t = wire.open(throttle_ms=0, resource_interval_ms=3600000)
    t.create_task_progress_sync("both", "sdxl", "image_generation")
    delta = Reconstruction()

    async def scenario():
        async with wire.connect(t, "delta-paced") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["both"], "delta": True, "interval_ms": 100},
                               "subscribed")
            start = time.monotonic()
            for step in range(1, 151):
                t.update_progress_sync("both", step, 150, f"step {step}")
                await asyncio.sleep(0.004)
            t.complete_task_sync("both")
            took = time.monotonic() - start
            while True:
                msg = await wire.recv(ws, 5)
                if msg["type"] == "progress.update":
                    delta.apply(msg)  # asserts base_seq == the seq it holds
                    if delta.state["status"] == "completed":
                        return took

    took = wire.run(scenario(), timeout=30)
    assert delta.state == t.get_task_progress_sync("both") | {"eta": delta.state["eta"],
                                                              "eta_seconds": delta.state["eta_seconds"],
                                                              "eta_confidence": delta.state["eta_confidence"]}
    # One state per 100 ms while the steps ran (about 0.7 s on a quiet machine), and the few sent at once: the
    # subscribe's, the first step's, the one held back and the end.
    assert 3 <= len(delta.states) <= took / 0.1 + 5, (len(delta.states), took)
    assert delta.patches > 0, (delta.patches, delta.fulls)


def test_interval_ms_must_be_an_integer_from_0_to_60000(wire):
    t = wire.open()
    t.create_task_progress_sync("x", "sdxl")

    async def scenario():
        async with wire.connect(t, "bad") as ws:
            await wire.established(ws)
            for bad in (-1, 60001, 2.5, "100", True):
                err = await wire.request(ws, {"type": "subscribe", "task_ids": ["x"], "interval_ms": bad},
                                         "subscribed")
                assert err["type"] == "error" and err["code"] == "invalid_message", (bad, err)
                assert "interval_ms" in err["message"], err
            ok = await wire.request(ws, {"type": "subscribe", "task_ids": ["x"], "interval_ms": 0}, "subscribed")
            assert ok["type"] == "subscribed", ok

    wire.run(scenario(), timeout=20)


def test_the_interval_counts_from_a_later_subscribe_without_one(wire):
    # A subscribe that gave no interval_ms stamped its tasks' first states with the listener's last clock reading,
    # which can be seconds old: the next state then went out at once, not an interval later.
    t = wire.open(throttle_ms=0)
    for task_id in ("a", "b"):
        t.create_task_progress_sync(task_id, "sdxl", "image_generation")
    t.update_progress_sync("b", 0, 20)  # in its main stage already: the steps below are no stage change
    of_b = lambda m: m["type"] == "progress.update" and m["task_id"] == "b"  # noqa: E731

    async def scenario():
        async with wire.connect(t, "late") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["a"], "interval_ms": 1000}, "subscribed")
            await asyncio.sleep(2.0)  # nothing wakes the listener meanwhile
            await wire.request(ws, {"type": "subscribe", "task_ids": ["b"]}, "subscribed")
            await wire.recv_until(ws, of_b, 2)  # b's current state, sent on subscribe
            start = time.monotonic()
            for step in range(1, 6):
                t.update_progress_sync("b", step, 20, message=f"s{step}")
                await asyncio.sleep(0.05)
            await wire.recv_until(ws, of_b, 3)
            waited = time.monotonic() - start
            assert waited >= 0.8, f"the next state of b came {waited:.2f} s after the one sent on subscribe"

    wire.run(scenario(), timeout=20)


def test_a_held_state_is_dropped_on_unsubscribe_and_never_follows_a_newer_one(wire):
    """unsubscribe while the interval holds a state back, then subscribe again: the new subscribe's current state is
    the last of the task this client gets; the held one never goes out after it (a seq going back)."""
    t = wire.open(throttle_ms=0, resource_interval_ms=3600000)
    t.create_task_progress_sync("held", "sdxl", "image_generation")
    t.update_progress_sync("held", 0, 100, "step 0")

    async def scenario():
        async with wire.connect(t, "c") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["held"], "interval_ms": 1000}, "subscribed", seen=seen)
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update", seen=seen)
            for step in (1, 2):  # within the interval of the subscribe's state: held back, the second replacing it
                t.update_progress_sync("held", step, 100, f"step {step}")
                await asyncio.sleep(0.05)
            await wire.request(ws, {"type": "unsubscribe", "task_ids": ["held"]}, "unsubscribed", seen=seen)
            t.update_progress_sync("held", 3, 100, "step 3")
            await wire.request(ws, {"type": "subscribe", "task_ids": ["held"]}, "subscribed", seen=seen)
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and m["seq"] == t.get_task_progress_sync("held")["seq"],
                                  seen=seen)
            # Past the first interval's end, when the held state was due.
            try:
                while True:
                    seen.append(await wire.recv(ws, 1.5))
            except asyncio.TimeoutError:
                pass
            return [m for m in seen if m["type"] == "progress.update"]

    updates = wire.run(scenario())
    seqs = [m["seq"] for m in updates]
    assert seqs == sorted(set(seqs)), seqs
    assert [m["data"]["stages"]["2"]["message"] for m in updates] == ["step 0", "step 3"], updates


def test_lowering_the_interval_sends_what_it_no_longer_holds(wire):
    """A subscribe with interval_ms 0 (here for another task) sends the state held back under the old interval at
    once, not at the old interval's end."""
    t = wire.open(throttle_ms=0, resource_interval_ms=3600000)
    t.create_task_progress_sync("slow", "sdxl", "image_generation")
    t.create_task_progress_sync("other", "sdxl", "image_generation")
    t.update_progress_sync("slow", 0, 100, "step 0")

    async def scenario():
        async with wire.connect(t, "c") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["slow"], "interval_ms": 60000}, "subscribed")
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and m["task_id"] == "slow")
            t.update_progress_sync("slow", 1, 100, "step 1")  # held: 60 s until it is due
            await asyncio.sleep(0.3)
            sent = time.monotonic()
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["other"], "interval_ms": 0}, "subscribed", seen=seen)
            # Released by the subscribe itself, so it comes before the reply.
            is_slow = lambda m: m["type"] == "progress.update" and m["task_id"] == "slow"  # noqa: E731
            msg = next((m for m in seen if is_slow(m)), None) or await wire.recv_until(ws, is_slow, timeout=5)
            return msg, time.monotonic() - sent

    msg, after = wire.run(scenario())
    assert msg["data"]["stages"]["2"]["message"] == "step 1"
    assert after < 2, after
