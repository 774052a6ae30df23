"""The WebSocket protocol of SPEC §7, message by message, with the `websockets` client against an engine
that a runner (the Python binding, in the same process) updates."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from progress_engine import ExistsError, InvalidArgumentError, Stage, StageStatus

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def updates_of(messages, task_id=None):
    return [m for m in messages if m["type"] == "progress.update" and (task_id is None or m["task_id"] == task_id)]


def assert_seq_increasing(messages):
    """seq strictly increases per task over the progress messages a client received."""
    last = {}
    for m in messages:
        if m["type"] in ("progress.update", "progress.current") and "replayed" not in m:
            assert m["seq"] == m["data"]["seq"], m
        if m["type"] != "progress.update":
            continue
        previous = last.get(m["task_id"], 0)
        assert m["seq"] > previous, f"seq of {m['task_id']} went {previous} -> {m['seq']}"
        last[m["task_id"]] = m["seq"]


def test_seed_javascript_flow(wire):
    """The seed's browser example: connect with client_id=user-123, subscribe to task-123 and task-456,
    and watch data.overall_progress move as the runner reports steps through the Python binding."""
    t = wire.open()
    t.create_task_progress_sync("task-123", "sdxl", "image_generation")
    t.create_task_progress_sync("task-456", "sdxl", "image_generation")

    async def runner():
        for step in range(1, 21):
            await t.update_progress(task_id="task-123", step=step, total_steps=20)
            await t.update_progress(task_id="task-456", step=step, total_steps=20)
            await asyncio.sleep(0.03)
        await t.complete_task("task-123")
        await t.complete_task("task-456")

    async def scenario():
        async with wire.connect(t, "user-123") as ws:
            assert await wire.recv(ws) == {"type": "connection.established", "client_id": "user-123"}
            seen = []
            sub = await wire.request(ws, {"type": "subscribe", "task_ids": ["task-123", "task-456"]}, "subscribed",
                                     seen=seen)
            assert sub == {"type": "subscribed", "task_ids": ["task-123", "task-456"]}
            for task_id in ("task-123", "task-456"):  # the current state, sent at once
                first = await wire.recv(ws)
                assert first["type"] == "progress.update" and first["task_id"] == task_id, first
                assert first["data"]["status"] == "queued" and first["data"]["overall_progress"] == 0, first
                seen.append(first)
            run = asyncio.ensure_future(runner())
            done = set()
            while done != {"task-123", "task-456"}:
                m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 10, seen)
                if m["data"]["status"] == "completed":
                    done.add(m["task_id"])
            await run
            return seen

    seen = wire.run(scenario())
    assert_seq_increasing(seen)
    for task_id in ("task-123", "task-456"):
        progress = [m["data"]["overall_progress"] for m in updates_of(seen, task_id)]
        assert progress == sorted(progress), progress
        assert progress[-1] == 100
        # image_generation: queue 5 %, model_loading 15 %, generation 70 % (where steps go), post 10 %.
        middle = [p for p in progress if 20 < p < 90]
        assert len(middle) >= 2, f"too few intermediate states for {task_id}: {progress}"
        for p in middle:
            k = (p - 20) / 70 * 20
            assert abs(k - round(k)) < 1e-6, f"overall_progress {p} is not 20 + 70 * step / 20"


def test_connection_established_generates_distinct_client_ids(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t) as a, wire.connect(t) as b:
            ida = (await wire.established(a))["client_id"]
            idb = (await wire.established(b))["client_id"]
            assert isinstance(ida, str) and ida and isinstance(idb, str) and idb and ida != idb

    wire.run(scenario())


def test_ping_pong(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "p") as ws:
            await wire.established(ws)
            for _ in range(3):
                assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}

    wire.run(scenario())


def test_get_progress_current_and_not_found(wire):
    t = wire.open()
    t.create_task_progress_sync("g1", "sdxl", "image_generation")
    t.update_progress_sync("g1", 5, 10, message="half")

    async def scenario():
        async with wire.connect(t, "g") as ws:
            await wire.established(ws)
            cur = await wire.request(ws, {"type": "get_progress", "task_id": "g1"}, "progress.current")
            missing = await wire.request(ws, {"type": "get_progress", "task_id": "nope"}, "progress.current")
            return cur, missing

    cur, missing = wire.run(scenario())
    expected = t.get_task_progress_sync("g1")
    assert cur["type"] == "progress.current" and cur["task_id"] == "g1", cur
    assert cur["seq"] == expected["seq"] == cur["data"]["seq"]
    for key in ("task_id", "status", "current_stage", "total_stages", "overall_progress", "stages"):
        assert cur["data"][key] == expected[key], key
    assert cur["data"]["overall_progress"] == 55 and cur["data"]["stages"]["2"]["message"] == "half"
    assert missing["type"] == "error" and missing["code"] == "not_found", missing
    assert "nope" in missing["message"]


def test_get_batch_progress(wire):
    t = wire.open()
    for i in range(3):
        t.create_task_progress_sync(f"bt{i}", "sdxl", "image_generation", batch_id="batch-1")
    t.complete_task_sync("bt0")
    t.update_progress_sync("bt1", 10, 10, message="x")  # generation done: 90 %

    async def scenario():
        async with wire.connect(t, "b") as ws:
            await wire.established(ws)
            by_batch = await wire.request(ws, {"type": "get_batch_progress", "batch_id": "batch-1"}, "batch.progress")
            by_ids = await wire.request(ws, {"type": "get_batch_progress", "batch_id": "batch-1",
                                             "task_ids": ["bt0", "ghost"]}, "batch.progress")
            empty = await wire.request(ws, {"type": "get_batch_progress", "batch_id": "none"}, "batch.progress")
            return by_batch, by_ids, empty

    by_batch, by_ids, empty = wire.run(scenario())
    assert by_batch["type"] == "batch.progress" and by_batch["batch_id"] == "batch-1", by_batch
    data = by_batch["data"]
    assert data["batch_id"] == "batch-1" and data["total_tasks"] == 3
    assert data["completed_tasks"] == 1 and data["executing_tasks"] == 1 and data["queued_tasks"] == 1
    assert set(data["tasks"]) == {"bt0", "bt1", "bt2"} and data["missing"] == []
    assert abs(data["overall_progress"] - (100 + 90 + 0) / 3) < 1e-6
    assert data == t.get_batch_progress_sync("batch-1")
    assert by_ids["data"]["total_tasks"] == 1 and set(by_ids["data"]["tasks"]) == {"bt0"}
    assert by_ids["data"]["missing"] == ["ghost"]
    assert empty["data"]["total_tasks"] == 0 and empty["data"]["tasks"] == {}


def test_subscribe_before_task_exists_then_created(wire):
    """A client may subscribe to a task id before the runner creates it; it gets the task once created."""
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "early") as ws:
            await wire.established(ws)
            sub = await wire.request(ws, {"type": "subscribe", "task_ids": ["later"]}, "subscribed")
            assert sub == {"type": "subscribed", "task_ids": ["later"]}
            # Nothing to send yet: the next message is the pong.
            assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}
            t.create_task_progress_sync("later", "sdxl", "image_generation")
            m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3)
            assert m["task_id"] == "later" and m["data"]["status"] == "queued" and m["seq"] == 1, m
            t.update_stage_sync("later", 1, StageStatus.IN_PROGRESS, 0.5, "loading")
            m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3)
            assert m["data"]["current_stage"] == 1 and m["data"]["stages"]["1"]["message"] == "loading", m

    wire.run(scenario())


def test_wildcard_subscription_sees_every_task(wire):
    t = wire.open()
    t.create_task_progress_sync("w1", "sdxl", "image_generation")
    t.create_task_progress_sync("w2", "sdxl", "video_generation")

    async def scenario():
        async with wire.connect(t, "dash") as ws:
            await wire.established(ws)
            seen = []
            assert await wire.request(ws, {"type": "subscribe", "task_ids": ["*"]}, "subscribed") == \
                {"type": "subscribed", "task_ids": ["*"]}
            first = [await wire.recv(ws), await wire.recv(ws)]
            assert {m["task_id"] for m in first} == {"w1", "w2"}
            assert all(m["type"] == "progress.update" for m in first)
            t.create_task_progress_sync("w3", "x", None)
            t.complete_task_sync("w1")
            got = set()
            while got != {"w3-created", "w1-completed"}:
                m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3, seen)
                if m["task_id"] == "w3" and m["data"]["status"] == "queued":
                    got.add("w3-created")
                if m["task_id"] == "w1" and m["data"]["status"] == "completed":
                    got.add("w1-completed")
            assert await wire.request(ws, {"type": "unsubscribe", "task_ids": ["*"]}, "unsubscribed") == \
                {"type": "unsubscribed", "task_ids": ["*"]}
            t.complete_task_sync("w2")
            await asyncio.sleep(0.3)
            assert await wire.request(ws, {"type": "ping"}, "pong", seen=seen) == {"type": "pong"}
            assert seen[-1] == {"type": "pong"}, f"updates after unsubscribing from *: {seen[-3:]}"

    wire.run(scenario())


def test_unsubscribed_tasks_stop_arriving(wire):
    t = wire.open()
    for task_id in ("ua", "ub"):
        t.create_task_progress_sync(task_id, "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "u") as ws:
            await wire.subscribed(ws, ["ua", "ub"])
            unsub = await wire.request(ws, {"type": "unsubscribe", "task_ids": ["ua"]}, "unsubscribed")
            assert unsub == {"type": "unsubscribed", "task_ids": ["ua"]}
            # ua changes first each time, so an update of ua would arrive before ub's.
            seen = []
            t.update_stage_sync("ua", 1)
            t.update_stage_sync("ub", 1)
            t.complete_task_sync("ua")
            t.complete_task_sync("ub")
            await wire.recv_until(ws, lambda m: m.get("task_id") == "ub" and m["data"]["status"] == "completed",
                                  3, seen)
            assert [m["task_id"] for m in seen] == ["ub"] * len(seen), seen
            assert len(seen) >= 1

    wire.run(scenario())


def test_task_log_delivered_to_subscribers_only(wire):
    t = wire.open()
    t.create_task_progress_sync("logged", "sdxl", "image_generation")
    t.create_task_progress_sync("other", "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "l") as ws:
            await wire.subscribed(ws, ["logged"])
            t.update_stage_sync("logged", 1)
            t.log_sync("other", "error", "not for this client")
            t.log_sync("logged", "warning", "VRAM at 95%")
            t.log_sync("logged", "debug", "détail \"quoted\"\n")
            seen = []
            logs = []
            while len(logs) < 2:
                m = await wire.recv_until(ws, lambda m: m["type"] == "task.log", 3, seen)
                logs.append(m)
            return logs, seen

    logs, seen = wire.run(scenario())
    assert all(m["task_id"] == "logged" for m in seen), seen
    first, second = logs
    assert set(first) == {"type", "task_id", "entry"}
    assert first["entry"]["level"] == "warning" and first["entry"]["message"] == "VRAM at 95%"
    assert first["entry"]["stage"] == 1 and ISO_Z.match(first["entry"]["timestamp"]), first
    assert second["entry"]["level"] == "debug" and second["entry"]["message"] == "détail \"quoted\"\n"


def test_back_to_back_stage_changes_each_arrive(wire):
    """SPEC §7: stage changes and terminal states are never coalesced away, even when a runner makes them faster
    than the listener's thread runs: each state right after a stage change reaches the subscriber, in order."""
    t = wire.open(throttle_ms=1000)
    for round_ in range(5):
        task = f"quick-{round_}"
        t.create_task_progress_sync(task, "sdxl", "image_generation")

        async def scenario():
            async with wire.connect(t, "q") as ws:
                await wire.subscribed(ws, [task])
                for stage in (1, 2, 3):
                    t.update_stage_sync(task, stage)
                t.complete_task_sync(task)
                seen = []
                await wire.recv_until(ws, lambda m: m["type"] == "progress.update"
                                      and m["data"]["status"] == "completed", 3, seen)
                return [m for m in seen if m["type"] == "progress.update"]

        updates = wire.run(scenario())
        assert [(m["data"]["current_stage"], m["data"]["status"]) for m in updates] == \
            [(1, "executing"), (2, "executing"), (3, "executing"), (3, "completed")], updates
        assert [m["seq"] for m in updates] == sorted({m["seq"] for m in updates})


def test_resource_samples_do_not_hold_back_the_runners_steps(wire):
    """The engine's resource sampler changes an executing task by itself (every resource_interval_ms). While the
    runner reports, a sample rides along with the runner's next update instead of going out alone: alone, it
    would open the task's throttle window and hold the runner's next step back for up to throttle_ms."""
    t = wire.open(throttle_ms=300, resource_interval_ms=50)
    t.create_task_progress_sync("busy", "sdxl", "image_generation")
    t.update_progress_sync("busy", 1, 100, message="s1")

    async def scenario():
        async with wire.connect(t, "r") as ws:
            await wire.subscribed(ws, ["busy"])
            delays, last = [], None
            for i in range(2, 10):
                await asyncio.sleep(0.35)  # slower than the throttle: the runner's own steps are never held
                start = time.monotonic()
                t.update_progress_sync("busy", i, 100, message=f"s{i}")
                last = await wire.recv_until(
                    ws, lambda m: m["type"] == "progress.update" and m["data"]["stages"]["2"]["message"] == f"s{i}", 2)
                delays.append(time.monotonic() - start)
            # Samples taken every 50 ms, each of them a change: before, most steps waited 100-300 ms. (One stall of
            # this process on a loaded machine is not that.)
            assert sorted(delays)[-2] < 0.1, [round(d, 3) for d in delays]
            # The sampler's figures still reach the client, with the runner's updates.
            assert last["data"]["resource_usage"]["memory_mb"] > 0, last["data"]["resource_usage"]

    wire.run(scenario())


async def _finished_then_made_anew(wire, t, ws, task_id, make_anew):
    """Runs `task_id` to its end in 29 steps, then awaits `make_anew()` (another task under the id) and steps that
    one once: (old, new), the completed state and the new task's first step, as the client `ws` got them."""
    t.create_task_progress_sync(task_id, "sdxl", "image_generation")
    for i in range(1, 30):
        t.update_progress_sync(task_id, i, 100, message=f"old {i}")
    t.complete_task_sync(task_id)
    old = await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and m["data"]["status"] == "completed", 5)
    await make_anew()
    t.update_progress_sync(task_id, 1, 100, message="new 1")
    new = await wire.recv_until(ws, lambda m: m["type"] == "progress.update"
                                and m["data"]["stages"]["2"]["message"] == "new 1", 5)
    return old, new


def test_a_task_id_reused_after_expiry_is_delivered_from_its_new_seq(wire):
    """A client watching "*" remembers each task's newest seq, so it is never sent an older state. When a task
    expires (retention_seconds) that memory goes with it: a new task created later under the same id starts
    again at a low seq, and its updates reach the client (before, they were held back as "older" than the
    expired task's last seq). The metric of what clients remember falls back too."""
    t = wire.open(retention_seconds=0.3, throttle_ms=0)

    async def scenario():
        async with wire.connect(t, "watcher") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["*"]}, "subscribed")

            async def expire_then_create():
                assert wire.metrics(t)["progress_client_task_slots"] == 1
                # Expired (a sweep runs about once a second) ...
                deadline = time.monotonic() + 5
                while wire.metrics(t)["progress_client_task_slots"] != 0:
                    assert time.monotonic() < deadline, "the expired task is still remembered by the client"
                    await asyncio.sleep(0.1)
                # ... and created again: its first states have seqs far below the old task's last one.
                t.create_task_progress_sync("reused", "sdxl", "image_generation")

            old, new = await _finished_then_made_anew(wire, t, ws, "reused", expire_then_create)
            assert new["seq"] < old["seq"], (new["seq"], old["seq"])

    wire.run(scenario())

def _register(t, template_id, n):
    t.register_template_stages_sync(template_id, [Stage(f"s{i}", f"stage {i}", 1.0) for i in range(n)])


def test_a_finished_task_id_reused_is_delivered_from_its_new_seq(wire):
    """create_task_progress(reuse=True) replaces a finished task held under the id (a loop run again, a Celery task
    id run a second time): watchers get the new task from its first states, whose seqs are below the old one's
    last, rather than having them held back as older."""
    t = wire.open(throttle_ms=0)

    async def scenario():
        async with wire.connect(t, "watcher") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["again"]}, "subscribed")

            async def reuse():
                t.create_task_progress_sync("again", "sdxl", "image_generation", reuse=True)

            old, new = await _finished_then_made_anew(wire, t, ws, "again", reuse)
            # Both tasks can be created within one millisecond, so created_at cannot tell them apart.
            assert new["seq"] < old["seq"], (new, old)
            assert new["data"]["status"] == "executing" and new["data"]["completed_at"] is None, new

    wire.run(scenario())


def test_an_id_named_twice_in_a_delta_subscribe_gets_its_state_once(wire):
    t = wire.open(throttle_ms=0)
    t.create_task_progress_sync("twice", "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "dup") as ws:
            await wire.established(ws)
            seen = []
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ["twice", "twice"], "delta": True},
                                       "subscribed", seen=seen)
            assert reply["task_ids"] == ["twice"], reply
            await wire.request(ws, {"type": "ping"}, "pong", seen=seen)  # answered after all the subscribe sent
            assert len([m for m in seen if m["type"] == "progress.update"]) == 1, seen

    wire.run(scenario())


def test_reuse_replaces_only_a_finished_task(wire):
    t = wire.open()
    t.create_task_progress_sync("busy", "sdxl")
    with pytest.raises(ExistsError, match="has not finished"):
        t.create_task_progress_sync("busy", "sdxl", reuse=True)
    with pytest.raises(InvalidArgumentError, match="give one of them"):
        t.create_task_progress_sync("busy", "sdxl", reuse=True, resume=True)
    t.fail_task_sync("busy", "first run")
    with pytest.raises(ExistsError, match='or {"reuse": true} to start it anew'):
        t.create_task_progress_sync("busy", "sdxl")
    state = t.create_task_progress_sync("busy", "sdxl", reuse=True)
    assert (state["status"], state["error"], state["seq"]) == ("queued", None, 1), state


def test_resume_replays_missed_events(wire):
    t = wire.open()
    _register(t, "four", 4)
    t.create_task_progress_sync("r1", "four")
    t.update_stage_sync("r1", 0, StageStatus.IN_PROGRESS, 0.5, "first")

    async def watch_then_leave():
        async with wire.connect(t, "r") as ws:
            (state,) = await wire.subscribed(ws, ["r1"])
            return state["seq"]

    last_seq = wire.run(watch_then_leave())
    # Missed while disconnected: stage changes (each kept in history) and a log (not in history).
    for stage in (1, 2):
        t.update_stage_sync("r1", stage, StageStatus.IN_PROGRESS, 0.25, f"stage {stage}")
    t.log_sync("r1", "info", "between")
    t.update_stage_sync("r1", 2, StageStatus.IN_PROGRESS, 0.75)
    t.update_stage_sync("r1", 3)
    history = [e for e in t.get_history_sync("r1", last_seq)["events"]]
    current = t.get_task_progress_sync("r1")["seq"]
    assert [e["seq"] for e in history][-1] == current and len(history) >= 4

    async def resume():
        async with wire.connect(t, "r") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["r1"], "resume": {"r1": last_seq}},
                               "subscribed", seen=seen)
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and "recovered" in m, 3, seen)
            t.complete_task_sync("r1")
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and m["data"]["status"] == "completed",
                                  3, seen)
            return seen

    seen = wire.run(resume())
    updates = updates_of(seen)
    replayed = [m for m in updates if m.get("replayed")]
    assert [m["seq"] for m in replayed] == [e["seq"] for e in history[:-1]], (replayed, history)
    full = set(t.get_task_progress_sync("r1"))
    for m, e in zip(replayed, history):
        d = m["data"]  # a whole TaskProgress (SPEC §7), as the task stood at that event
        assert set(d) == full, set(d) ^ full
        assert (d["seq"], d["current_stage"], d["overall_progress"], d["status"]) == \
            (e["seq"], e["stage"], e["overall_progress"], e["status"]), (m, e)
        stage = d["stages"][str(d["current_stage"])]
        assert (stage["progress"], stage["message"]) == (e["progress"], e["message"]), (stage, e)
        assert all(s["status"] == "pending" for i, s in d["stages"].items() if int(i) > d["current_stage"])
        assert ISO_Z.match(d["updated_at"]) and d["eta"] is None
    state = [m for m in updates if "recovered" in m]
    assert len(state) == 1 and state[0]["recovered"] is True and state[0]["seq"] == current
    assert updates.index(state[0]) == len(replayed), "the current state must follow the replay"
    assert updates[-1]["data"]["status"] == "completed" and updates[-1]["seq"] == current + 1
    assert_seq_increasing(seen)


def test_resume_up_to_date_and_ahead(wire):
    t = wire.open()
    t.create_task_progress_sync("r2", "sdxl", "image_generation")
    t.update_stage_sync("r2", 1)
    seq = t.get_task_progress_sync("r2")["seq"]

    async def resume(last):
        async with wire.connect(t, "r") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["r2"], "resume": {"r2": last}}, "subscribed")
            await wire.recv_until(ws, lambda m: "recovered" in m, 3, seen)
            return seen

    # Nothing to replay: the current state alone, as on any subscribe (SPEC §7), with recovered: true.
    seen = wire.run(resume(seq))
    assert len(seen) == 1 and seen[0]["recovered"] is True and seen[0]["seq"] == seq, seen
    assert "replayed" not in seen[0]
    seen = wire.run(resume(seq + 1000))  # a seq this task never had
    assert len(seen) == 1 and seen[0]["recovered"] is False and seen[0]["seq"] == seq, seen


def test_resume_after_history_pushed_out_is_not_recovered(wire):
    """History keeps 4096 events; every stage update is one (never coalesced). Resuming from a seq that is
    gone gives only the current state, with recovered false."""
    t = wire.open()
    _register(t, "one", 2)
    t.create_task_progress_sync("r3", "one")
    for i in range(4200):
        t.update_stage_sync("r3", 0, StageStatus.IN_PROGRESS, (i % 100) / 100)
    h = t.get_history_sync("r3")
    assert h["first_seq"] > 2, h["first_seq"]

    async def scenario():
        async with wire.connect(t, "r") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["r3"], "resume": {"r3": 1}}, "subscribed")
            await wire.recv_until(ws, lambda m: "recovered" in m, 3, seen)
            assert await wire.request(ws, {"type": "ping"}, "pong", seen=seen) == {"type": "pong"}
            return seen

    seen = wire.run(scenario())
    assert len(seen) == 2, [m.get("seq") for m in seen]
    assert seen[0]["recovered"] is False and seen[0]["seq"] == h["last_seq"] and "replayed" not in seen[0]


def test_resume_of_a_task_with_full_history_replays_in_order(wire):
    """Resuming from just inside the retained window replays every event still held, oldest first."""
    t = wire.open()
    _register(t, "one", 2)
    t.create_task_progress_sync("r4", "one")
    for i in range(4200):
        t.update_stage_sync("r4", 0, StageStatus.IN_PROGRESS, (i % 100) / 100)
    h = t.get_history_sync("r4")
    after = h["first_seq"] - 1  # the first retained event is the next one the client needs

    async def scenario():
        async with wire.connect(t, "r") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["r4"], "resume": {"r4": after}}, "subscribed")
            await wire.recv_until(ws, lambda m: "recovered" in m, 10, seen)
            return seen

    seen = wire.run(scenario(), timeout=30)
    assert seen[-1]["recovered"] is True and seen[-1]["seq"] == h["last_seq"]
    assert [m["seq"] for m in seen[:-1]] == [e["seq"] for e in h["events"][:-1]]
    assert_seq_increasing(seen)


def test_seq_strictly_increases_per_task_under_mixed_changes(wire):
    t = wire.open(throttle_ms=20)
    ids = [f"mix{i}" for i in range(4)]
    for task_id in ids:
        t.create_task_progress_sync(task_id, "sdxl", "image_generation")

    async def runner():
        for step in range(1, 101):
            for task_id in ids:
                t.update_progress_sync(task_id, step, 100, message=f"{step}" if step % 3 else None)
                if step == 50:
                    t.log_sync(task_id, "info", "half")
            if step % 10 == 0:
                await asyncio.sleep(0.01)
        for task_id in ids:
            t.update_stage_sync(task_id, 3)
            t.complete_task_sync(task_id)

    async def scenario():
        async with wire.connect(t, "mix") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ids}, "subscribed", seen=seen)
            run = asyncio.ensure_future(runner())
            done = set()
            while done != set(ids):
                m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 5, seen)
                if m["data"]["status"] == "completed":
                    done.add(m["task_id"])
            await run
            return seen

    seen = wire.run(scenario())
    assert_seq_increasing(seen)
    for task_id in ids:
        last = updates_of(seen, task_id)[-1]
        assert last["data"]["overall_progress"] == 100 and last["seq"] == t.get_task_progress_sync(task_id)["seq"]


def test_resubscribing_sends_the_current_state_again(wire):
    """`progress.update` is sent at once on subscribe (SPEC §7), also to a client that subscribed, left and
    comes back: explicitly by task id, and with "*"."""
    t = wire.open()
    t.create_task_progress_sync("again", "x")

    async def scenario():
        async with wire.connect(t, "again") as ws:
            await wire.established(ws)
            out = {}
            for ids in (["again"], ["*"]):
                seen = []
                for _ in range(2):
                    await wire.request(ws, {"type": "subscribe", "task_ids": ids}, "subscribed", seen=seen)
                    await wire.request(ws, {"type": "ping"}, "pong", seen=seen)
                    await wire.request(ws, {"type": "unsubscribe", "task_ids": ids}, "unsubscribed", seen=seen)
                out[ids[0]] = [m["type"] for m in seen]
            return out

    out = wire.run(scenario())
    cycle = ["subscribed", "progress.update", "pong", "unsubscribed"]
    assert out["again"] == cycle * 2, out["again"]
    assert out["*"] == cycle * 2, f"re-subscribing to \"*\" sent no state: {out['*']}"


def test_same_client_id_on_two_connections(wire):
    """Two tabs of one user: both connections work independently; closing one leaves the other."""
    t = wire.open()
    t.create_task_progress_sync("tab", "x")

    async def scenario():
        async with wire.connect(t, "user-1") as a:
            await wire.established(a)
            await wire.request(a, {"type": "subscribe", "task_ids": ["tab"]}, "subscribed")
            await wire.recv(a)
            async with wire.connect(t, "user-1") as b:
                await wire.established(b)
                await wire.request(b, {"type": "subscribe", "task_ids": ["tab"]}, "subscribed")
                await wire.recv(b)
                t.update_stage_sync("tab", 1)
                for ws in (a, b):
                    m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3)
                    assert m["data"]["current_stage"] == 1
            t.complete_task_sync("tab")
            m = await wire.recv_until(a, lambda m: m["type"] == "progress.update", 3)
            assert m["data"]["status"] == "completed"

    wire.run(scenario())


def test_unicode_task_ids(wire):
    t = wire.open()
    t.create_task_progress_sync("été-🎨", "x")

    async def scenario():
        async with wire.connect(t, "u") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["été-🎨"]}, "subscribed")
            m = await wire.recv(ws)
            assert m["task_id"] == "été-🎨" and m["data"]["task_id"] == "été-🎨"

    wire.run(scenario())
    r = wire.http(t, "/api/v1/progress/tasks/%C3%A9t%C3%A9-%F0%9F%8E%A8")
    assert r.status == 200 and r.json()["task_id"] == "été-🎨"


def test_wildcard_and_explicit_subscription_do_not_duplicate(wire):
    t = wire.open()
    t.create_task_progress_sync("dup", "x")

    async def scenario():
        async with wire.connect(t, "d") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["*", "dup", "dup"]}, "subscribed", seen=seen)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["dup"]}, "subscribed", seen=seen)
            t.update_stage_sync("dup", 1)
            t.complete_task_sync("dup")
            await wire.recv_until(ws, lambda m: m.get("data", {}).get("status") == "completed", 3, seen)
            assert await wire.request(ws, {"type": "ping"}, "pong", seen=seen) == {"type": "pong"}
            return seen

    seen = wire.run(scenario())
    updates = updates_of(seen)
    assert_seq_increasing(seen)
    assert [m["seq"] for m in updates] == sorted({m["seq"] for m in updates})
    assert updates[0]["seq"] == 1 and updates[-1]["data"]["status"] == "completed"


def test_wildcard_states_go_past_a_slice_the_client_already_has(wire):
    """A "*" subscribe's states go 64 at a time as the client takes them; a slice the client already holds (the
    tasks it watches by id) queues nothing, and the next slice must still come."""
    t = wire.open(resource_interval_ms=3_600_000)
    ids = [f"s{i:03d}" for i in range(200)]
    for task in ids:
        t.create_task_progress_sync(task, "x")

    async def scenario():
        async with wire.connect(t, "d") as ws:
            await wire.established(ws)
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ids[64:128]}, "subscribed", seen=seen)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["*"]}, "subscribed", seen=seen)
            await wire.recv_until(ws, lambda m: m.get("task_id") == ids[-1], 5, seen)
            return seen

    states = [m["task_id"] for m in updates_of(wire.run(scenario()))]
    assert states == ids[64:128] + ids[:64] + ids[128:]


@pytest.mark.parametrize("pings", [1, 300])
def test_replies_after_a_wildcard_subscribe_follow_its_states(wire, pings):
    """The states of a "*" subscribe go a slice at a time, and a message sent after it waits for them: its reply
    follows every one (the JavaScript client's pong after a resubscribe says "caught up"). Past 64 waiting
    messages the connection is not read until they are handled: every ping is still answered, in order."""
    t = wire.open(resource_interval_ms=3_600_000)
    ids = [f"p{i:03d}" for i in range(500)]
    for task in ids:
        t.create_task_progress_sync(task, "x")
        t.complete_task_sync(task)

    async def scenario():
        async with wire.connect(t, "d") as ws:
            await wire.established(ws)
            await ws.send(json.dumps({"type": "subscribe", "task_ids": ["*"]}))
            for _ in range(pings):
                await ws.send(json.dumps({"type": "ping"}))
            seen = []
            while sum(m["type"] == "pong" for m in seen) < pings:
                seen.append(await wire.recv(ws))
            return seen

    seen = wire.run(scenario())
    kinds = [m["type"] for m in seen]
    assert kinds == ["subscribed"] + ["progress.update"] * len(ids) + ["pong"] * pings, kinds[:3]
    assert [m["task_id"] for m in updates_of(seen)] == ids


def test_unsubscribe_while_an_update_is_queued_drops_the_slot_once_it_is_sent(wire):
    """A client that leaves a task while an update of it still waits in its queue gets that update (it was sent
    before the unsubscribe was read), and then the client keeps nothing of the task: the per-task slot that
    ordered its states goes with the update's send (it once stayed for the connection's life, one per task)."""
    t = wire.open(throttle_ms=0)
    t.create_task_progress_sync("big", "sdxl", "image_generation")
    raw = wire.raw_ws(t, client_id="leaver", rcvbuf=4096)
    raw.next_frame()
    raw.send_text('{"type":"subscribe","task_ids":["big"]}')
    pad = "p" * 4000
    # Fill the socket: the client reads nothing, so the task's newest update stays in the client's queue.
    deadline = time.monotonic() + 10
    step = 0
    while wire.metrics(t)["progress_client_queue_depth"] == 0:
        assert time.monotonic() < deadline, "the client's queue never held an update"
        for _ in range(50):
            step += 1
            t.update_progress_sync("big", step % 100, 100, message=f"{step} {pad}")
        time.sleep(0.01)
    received = wire.metrics(t)["progress_messages_received_total"]
    raw.send_text('{"type":"unsubscribe","task_ids":["big"]}')
    wire.wait_metric(t, "progress_messages_received_total", lambda v: v > received)
    m = wire.metrics(t)
    assert m["progress_client_queue_depth"] >= 1 and m["progress_subscriptions"] == 0, m
    t.update_progress_sync("big", 1, 100, message="after")  # not watched any more: not queued
    seen = []
    while True:
        opcode, payload = raw.next_frame(5)
        msg = json.loads(payload)
        seen.append(msg["type"])
        if msg["type"] == "unsubscribed":
            break
    assert "progress.update" in seen
    assert wire.wait_metric(t, "progress_client_queue_depth", lambda v: v == 0) == 0
    assert wire.wait_metric(t, "progress_client_task_slots", lambda v: v == 0) == 0
    wire.assert_alive(t)
