"""Delta updates (docs/API.md "Delta updates"): `subscribe` with `"delta": true` gets RFC 7386 merge patches
against the last state sent to that client; a client without it gets today's full frames. The reconstruction
must equal the full TaskProgress at every seq, nulls included."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from progress_engine import Stage, StageStatus

TASK = "delta-1"
STAGES = 5
CHANGES = 1000


def merge_patch(target, patch):
    """RFC 7386 MergePatch(target, patch), as any client applies it."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def holds_null_member(value) -> bool:
    """A null object member anywhere outside arrays: RFC 7386 would read it as "remove"."""
    if not isinstance(value, dict):
        return False
    return any(v is None or holds_null_member(v) for v in value.values())


class Reconstruction:
    """A delta client's view of one task: the state it holds and every state it reconstructed, by seq."""

    def __init__(self) -> None:
        self.state = None
        self.seq = None
        self.states = {}
        self.patches = 0
        self.fulls = 0
        self.replayed = 0

    def apply(self, msg: dict) -> None:
        if "patch" in msg:
            assert "data" not in msg, msg
            # Impossible by construction: the server only sends a patch against the state this client holds.
            assert msg["base_seq"] == self.seq, (msg["base_seq"], self.seq)
            assert not holds_null_member(msg["patch"]), msg["patch"]
            self.state = merge_patch(self.state, msg["patch"])
            self.patches += 1
        else:
            self.state = msg["data"]
            self.fulls += 1
        self.seq = msg["seq"]
        assert self.state["seq"] == msg["seq"]
        if msg.get("replayed"):
            # A replayed event is the task as of that event (not a live state): a base, but not compared.
            self.replayed += 1
            return
        self.states[msg["seq"]] = json.loads(json.dumps(self.state))


def _image(i: int):
    shade = (i * 37) % 256
    return (bytes([shade, 255 - shade, 128]) * (16 * 16), 16, 16, 3)


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_delta_reconstruction_equals_full_through_1000_changes(wire, tmp_path, deflate):
    """With deflate, both clients negotiate permessage-deflate with context takeover: the delta client's small
    frames are compressed against its window, its full states and the full client's frames stand alone."""
    previews = tmp_path / "previews"
    previews.mkdir()
    t = wire.open(throttle_ms=0, preview_dir=str(previews), preview_every_steps=25, ws_deflate=deflate)
    compression = "deflate" if deflate else None
    t.register_template_stages_sync("five", [Stage(f"s{i}", f"stage {i}", 1.0) for i in range(STAGES)])
    t.create_task_progress_sync(TASK, "five", metadata={"prompt": "a cat", "seed": 7, "none": None})

    full_states = {}
    delta = Reconstruction()
    full_seen = []

    async def read_full(ws, done: asyncio.Event):
        while True:
            msg = await wire.recv(ws, 20)
            if msg["type"] == "progress.update":
                assert "patch" not in msg and "base_seq" not in msg, msg
                full_states[msg["seq"]] = msg["data"]
                full_seen.append(msg["seq"])
                if msg["data"]["status"] == "completed":
                    done.set()
                    return

    async def read_delta(ws, done: asyncio.Event, stop_at_seq=None):
        while True:
            msg = await wire.recv(ws, 20)
            if msg["type"] != "progress.update":
                continue
            delta.apply(msg)
            if delta.state["status"] == "completed":
                done.set()
                return
            if stop_at_seq is not None and msg["seq"] >= stop_at_seq and not msg.get("replayed"):
                return

    async def change(i: int, total: int):
        stage = min(i * STAGES // total, STAGES - 1)
        if i % (total // STAGES) == 0:
            t.update_stage_sync(TASK, stage, StageStatus.IN_PROGRESS, 0.0, f"stage {stage} begins")
        elif i % 7 == 0:
            t.log_sync(TASK, "info", f"log line {i}")
            t.update_progress_sync(TASK, i % 200, 200, None)
        elif i % 11 == 0:
            # Resource figures come and go: a figure that turns null cannot be a merge patch (full state).
            gpu = None if i % 22 == 0 else float(i % 100)
            t.send_event_sync(TASK, "resources", {"cpu_percent": float(i % 90), "memory_mb": 1000.0 + i,
                                                  "gpu_percent": gpu, "gpu_memory_mb": gpu})
        elif i % 25 == 0:
            t.update_progress_sync(TASK, i % 200, 200, f"step {i} with preview")
            t.update_preview_sync(TASK, _image(i))
        else:
            t.update_progress_sync(TASK, (i * 3) % 200 + 1, 200, f"step {i}")
        await asyncio.sleep(0.001 if i % 10 else 0.01)

    async def scenario():
        async with wire.connect(t, "full", compression=compression) as full_ws, \
                wire.connect(t, "delta", compression=compression) as delta_ws:
            assert bool(delta_ws.protocol.extensions) == deflate
            await wire.established(full_ws)
            await wire.established(delta_ws)
            await wire.request(full_ws, {"type": "subscribe", "task_ids": [TASK]}, "subscribed")
            await wire.request(delta_ws, {"type": "subscribe", "task_ids": [TASK], "delta": True}, "subscribed")
            full_done = asyncio.Event()
            delta_done = asyncio.Event()
            full_reader = asyncio.create_task(read_full(full_ws, full_done))
            delta_reader = asyncio.create_task(read_delta(delta_ws, delta_done, stop_at_seq=None))
            half = CHANGES // 2
            for i in range(half):
                await change(i, CHANGES)
            # The delta client goes away mid-run and comes back with resume: replayed events, then the current
            # state in full (its base), then patches again.
            await asyncio.sleep(0.2)
            delta_reader.cancel()
            await asyncio.gather(delta_reader, return_exceptions=True)
            last = delta.seq
            await delta_ws.close()
            for i in range(half, half + 40):
                await change(i, CHANGES)
            # A cancel request, answered only by the completion at the end: cancel_reason turns null then.
            r = wire.http(t, f"{wire.API}/tasks/{TASK}/cancel", "POST", {"Content-Type": "application/json"},
                          b'{"reason": "enough"}')
            assert r.status == 202, r
            async with wire.connect(t, "delta", compression=compression) as again:
                await wire.established(again)
                await wire.request(again, {"type": "subscribe", "task_ids": [TASK], "delta": True,
                                           "resume": {TASK: last}}, "subscribed")
                delta_reader = asyncio.create_task(read_delta(again, delta_done))
                for i in range(half + 40, CHANGES):
                    await change(i, CHANGES)
                t.complete_task_sync(TASK)
                await asyncio.wait_for(asyncio.gather(full_done.wait(), delta_done.wait()), 20)
                await delta_reader
            await full_reader

    wire.run(scenario(), timeout=120)

    common = sorted(set(full_states) & set(delta.states))
    # Every live state the delta client reconstructed is one the full client got at the same seq, equal to it.
    assert len(common) >= 0.9 * len(delta.states), (len(common), len(delta.states))
    for seq in common:
        assert delta.states[seq] == full_states[seq], (seq, delta.states[seq], full_states[seq])
    final = max(common)
    assert delta.states[final]["status"] == "completed" and delta.states[final]["cancel_reason"] is None
    # Nulls kept as keys: the reconstruction has every key of TaskProgress, null ones included.
    assert delta.states[final]["metadata"] == {"prompt": "a cat", "seed": 7, "none": None}
    assert any(s["resource_usage"]["gpu_percent"] is None for s in delta.states.values())
    assert any(s["preview_url"] for s in delta.states.values())
    assert delta.replayed > 0
    assert len(set(s["current_stage"] for s in delta.states.values())) == STAGES
    assert delta.patches > 0.7 * len(delta.states), (delta.patches, delta.fulls, len(delta.states))
    print(f"delta: {len(delta.states)} live states, {delta.patches} patches, {delta.fulls} full, "
          f"{delta.replayed} replayed; {len(common)} compared")
    assert len(common) > 600, len(common)


def test_without_delta_frames_are_unchanged_and_delta_must_be_boolean(wire):
    t = wire.open(throttle_ms=0)
    t.create_task_progress_sync("plain", "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "a") as plain, wire.connect(t, "b") as other:
            await wire.established(plain)
            await wire.established(other)
            err = await wire.request(other, {"type": "subscribe", "task_ids": ["plain"], "delta": "yes"}, "subscribed")
            assert err["type"] == "error" and err["code"] == "invalid_message" and "delta" in err["message"], err
            await wire.request(other, {"type": "subscribe", "task_ids": ["plain"], "delta": True}, "subscribed")
            await wire.request(plain, {"type": "subscribe", "task_ids": ["plain"], "delta": False}, "subscribed")
            for i in range(1, 6):
                t.update_progress_sync("plain", i, 10, f"step {i}")
                await asyncio.sleep(0.02)
            got, patched = [], []
            await wire.recv_until(plain, lambda m: m["type"] == "progress.update" and m["data"]["stages"]
                                  [str(m["data"]["current_stage"])]["message"] == "step 5", 5, got)
            await wire.recv_until(other, lambda m: m["type"] == "progress.update" and m["seq"] == got[-1]["seq"], 5,
                                  patched)
            assert all("data" in m and "patch" not in m for m in got if m["type"] == "progress.update")
            assert any("patch" in m for m in patched), patched
            # The subscribe's own state is always full.
            first = next(m for m in patched if m["type"] == "progress.update")
            assert "data" in first

    wire.run(scenario())


def test_delta_bases_are_dropped_when_their_watchers_leave(wire):
    """The base of a task's next patch (about 3 KB) is kept while the task is watched: no fan-out runs for an
    unwatched task, so leaving clients drop the bases nobody watches any more (`progress_delta_bases`). The
    resource sampler is off: its fan-outs would drop a base watched only by plain clients at any moment."""
    t = wire.open(throttle_ms=0, resource_interval_ms=3_600_000)
    for task in ("a", "b", "c"):
        t.create_task_progress_sync(task, "sdxl", "image_generation")

    def bases(accept):
        return wire.wait_metric(t, "progress_delta_bases", accept)

    async def scenario():
        async with wire.connect(t, "by-id") as by_id, wire.connect(t, "plain") as plain:
            await wire.established(by_id)
            await wire.established(plain)
            await wire.request(by_id, {"type": "subscribe", "task_ids": ["a", "b"], "delta": True}, "subscribed")
            await wire.request(plain, {"type": "subscribe", "task_ids": ["c"]}, "subscribed")
            async with wire.connect(t, "all") as everything:
                await wire.established(everything)
                await wire.request(everything, {"type": "subscribe", "task_ids": ["*"], "delta": True}, "subscribed")
                for task in ("a", "b", "c"):
                    t.update_progress_sync(task, 1, 10)
                assert bases(lambda v: v == 3) == 3
                # "*" still watches a.
                await wire.request(by_id, {"type": "unsubscribe", "task_ids": ["a"]}, "unsubscribed")
                assert wire.metrics(t)["progress_delta_bases"] == 3
            # The wildcard client is gone: a is watched by nobody; b by a delta client; c by a plain one, whose
            # next fan-out drops it.
            assert bases(lambda v: v == 2) == 2
            t.update_progress_sync("c", 2, 10)
            await wire.recv_until(plain, lambda m: m["type"] == "progress.update" and m["data"]["seq"] >= 3)
            assert bases(lambda v: v == 1) == 1
            await wire.request(by_id, {"type": "unsubscribe", "task_ids": ["*"]}, "unsubscribed")
            assert wire.metrics(t)["progress_delta_bases"] == 1
            # A delta client leaving "*" while another watches by id keeps that task's base only.
            await wire.request(by_id, {"type": "subscribe", "task_ids": ["*"], "delta": True}, "subscribed")
            t.update_progress_sync("a", 2, 10)
            assert bases(lambda v: v == 2) == 2
            await wire.request(by_id, {"type": "unsubscribe", "task_ids": ["*"]}, "unsubscribed")
            assert bases(lambda v: v == 1) == 1
        # The last delta client closed.
        assert bases(lambda v: v == 0) == 0

    wire.run(scenario())


def _deflate_reader(ws, fresh_inflater_per_message: bool = False):
    """What a client that negotiated permessage-deflate reads from raw socket `ws`: a function returning
    (compressed, wire payload bytes, message) for the next frame, a compressed one inflated (raw deflate + 00 00 ff
    ff) with the window kept across messages, or with a fresh inflater each (server_no_context_takeover)."""
    import zlib

    inflater = zlib.decompressobj(-15)

    def message():
        nonlocal inflater
        opcode, payload = ws.next_frame()
        assert opcode == 0x1, (opcode, payload[:100])
        compressed, size = bool(ws.rsv & 0x4), len(payload)
        if compressed:
            if fresh_inflater_per_message:
                inflater = zlib.decompressobj(-15)
            payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
        return compressed, size, json.loads(payload)

    return message


def test_permessage_deflate_frames_are_compressed_once_and_decode(wire):
    t = wire.open(throttle_ms=0, ws_deflate=True)
    t.create_task_progress_sync("z", "sdxl", "image_generation")

    # A raw client: the server's frames carry RSV1 and inflate (raw deflate + 00 00 ff ff) to the JSON.
    ws = wire.raw_ws(t, extensions="permessage-deflate; client_max_window_bits")
    assert b"permessage-deflate" in ws.head.lower(), ws.head
    message = _deflate_reader(ws)
    assert message()[2]["type"] == "connection.established"
    ws.send_text(json.dumps({"type": "subscribe", "task_ids": ["z"]}))
    seen = [message() for _ in range(2)]
    assert seen[0][2]["type"] == "subscribed"
    compressed, _, state = seen[1]
    assert state["type"] == "progress.update" and state["data"]["task_id"] == "z"
    assert compressed, "the full state went uncompressed"
    ws.sock.close()

    # The websockets library negotiates it too and reads the same stream, delta included.
    async def scenario():
        async with wire.connect(t, "pmd", compression="deflate") as ws:
            assert ws.protocol.extensions, "permessage-deflate was not negotiated"
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["z"], "delta": True}, "subscribed")
            for i in range(1, 4):
                t.update_progress_sync("z", i, 10, f"step {i}")
                await asyncio.sleep(0.02)
            rec = Reconstruction()
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and (rec.apply(m) or rec.state[
                "stages"][str(rec.state["current_stage"])]["message"] == "step 3"), 5)
            assert rec.state == t.get_task_progress_sync("z") | {"eta": rec.state["eta"],
                                                                  "eta_seconds": rec.state["eta_seconds"],
                                                                  "eta_confidence": rec.state["eta_confidence"]}

    wire.run(scenario())


def _stream_patches(wire, offer: str, fresh_inflater_per_message: bool):
    """Subscribes a raw deflate client with delta to a task taking 30 steps; returns [(wire payload bytes,
    message)] of its progress updates, each inflated as the client's offer allows."""
    t = wire.open(throttle_ms=0, ws_deflate=True)
    t.create_task_progress_sync("w", "sdxl", "image_generation")
    ws = wire.raw_ws(t, extensions=offer)
    assert b"permessage-deflate" in ws.head.lower(), ws.head
    message = _deflate_reader(ws, fresh_inflater_per_message)
    got = []
    assert message()[2]["type"] == "connection.established"
    ws.send_text(json.dumps({"type": "subscribe", "task_ids": ["w"], "delta": True}))
    rec = Reconstruction()
    for i in range(1, 31):
        t.update_progress_sync("w", i, 30)
        time.sleep(0.005)
    while True:
        compressed, size, msg = message()
        if msg["type"] != "progress.update":
            continue
        assert compressed, msg
        rec.apply(msg)
        got.append((size, msg))
        if rec.state["stages"][str(rec.state["current_stage"])]["progress"] == 1.0:
            break
    ws.sock.close()
    assert rec.state == t.get_task_progress_sync("w") | {k: rec.state[k] for k in ("eta", "eta_seconds",
                                                                                   "eta_confidence")}
    return got


def test_deflate_with_context_takeover_sends_patches_against_the_window(wire):
    """A client that keeps its window (no server_no_context_takeover) gets each patch compressed against the
    last message it inflated: a steady step patch is a few dozen bytes, where compressed alone it is over a hundred
    (docs/API.md, "Compression")."""
    import zlib

    got = _stream_patches(wire, "permessage-deflate; client_max_window_bits", False)
    patches = [(size, msg) for size, msg in got if "patch" in msg]
    assert len(patches) >= 10, got
    steady = [size for size, msg in patches[2:]]
    alone = []
    for _, msg in patches[2:]:
        z = zlib.compressobj(6, zlib.DEFLATED, -15)
        alone.append(len(z.compress(json.dumps(msg, separators=(",", ":")).encode()) + z.flush(zlib.Z_SYNC_FLUSH)) - 4)
    assert sum(steady) / len(steady) < 0.6 * sum(alone) / len(alone), (steady, alone)


def test_deflate_without_context_takeover_sends_messages_that_stand_alone(wire):
    """server_no_context_takeover: each message inflates with a fresh inflater."""
    got = _stream_patches(wire, "permessage-deflate; server_no_context_takeover; client_max_window_bits", True)
    assert sum(1 for _, msg in got if "patch" in msg) >= 10, got


def test_ws_deflate_must_be_boolean(wire):
    from progress_engine import ProgressError

    with pytest.raises(ProgressError, match="ws_deflate"):
        wire.open(ws_deflate="yes")


def test_slow_delta_client_gets_full_states_where_its_base_was_replaced(wire):
    """A delta client that stops reading: its unsent update of a task is replaced by the newer state, which then
    goes in full (the client never gets the replaced state a patch would start from). Every patch it does get
    applies to the state it holds, and every state equals the full one at the same seq."""
    t = wire.open(throttle_ms=0)
    t.register_template_stages_sync("two", [Stage("a", "a", 1.0), Stage("b", "b", 1.0)])
    t.create_task_progress_sync("slow", "two")
    clients = {}
    for name, delta, rcvbuf in (("slow", True, 4096), ("plain", False, None)):
        ws = wire.raw_ws(t, name, rcvbuf=rcvbuf)
        assert json.loads(ws.next_frame()[1])["type"] == "connection.established"
        ws.send_text(json.dumps({"type": "subscribe", "task_ids": ["slow"], "delta": delta}))
        clients[name] = ws
    # A large stage message per update, so that the unread frames outgrow the socket buffers; paced, so that the
    # listener fans most of the updates out rather than coalescing them in its inbox.
    pad = "x" * 16000
    t.update_stage_sync("slow", 0, StageStatus.IN_PROGRESS, 0.0, "go")
    for i in range(1, 1001):
        t.update_progress_sync("slow", i % 500, 500, f"{i} {pad}")
        if i == 500:
            t.update_stage_sync("slow", 1, StageStatus.IN_PROGRESS, 0.0, "second")
        time.sleep(0.0005)
    t.complete_task_sync("slow")

    def read_all(ws, apply):
        while True:
            opcode, payload = ws.next_frame(10)
            msg = json.loads(payload)
            if msg["type"] != "progress.update":
                continue
            state = apply(msg)
            if state["status"] == "completed":
                return

    full = {}

    def keep(msg):
        full[msg["seq"]] = msg["data"]
        return msg["data"]

    read_all(clients["plain"], keep)
    rec = Reconstruction()
    order = []

    def rebuild(msg):
        order.append("patch" if "patch" in msg else "full")
        rec.apply(msg)
        return rec.state

    read_all(clients["slow"], rebuild)
    common = set(full) & set(rec.states)
    assert common, "no seq in common"
    for seq in common:
        assert rec.states[seq] == full[seq], seq
    first_patch = order.index("patch")
    assert "full" in order[first_patch:], "no base was ever replaced: the client read too fast for this test"
    assert order.count("patch") > 0


def test_subscribing_again_sends_the_current_state_in_full_even_at_the_same_seq(wire):
    """A delta client that lost its base (docs/API.md: on a base_seq mismatch the JavaScript client drops the
    patch and subscribes again) gets the current state in full, though the listener's last state to it had that
    same seq (as a patch)."""
    t = wire.open(throttle_ms=0, resource_interval_ms=3600000)
    t.create_task_progress_sync("again", "sdxl", "image_generation")
    t.update_progress_sync("again", 0, 100, "step 0")

    async def scenario():
        async with wire.connect(t, "d") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["again"], "delta": True}, "subscribed")
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and "data" in m)
            patch = None
            for step in range(1, 10):  # the first change after a subscribe comes in full
                t.update_progress_sync("again", step, 100, f"step {step}")
                patch = await wire.recv_until(ws, lambda m: m["type"] == "progress.update")
                if "patch" in patch:
                    break
            assert "patch" in patch, patch
            seen = []
            await wire.request(ws, {"type": "subscribe", "task_ids": ["again"], "delta": True}, "subscribed", seen=seen)
            full = next((m for m in seen if m["type"] == "progress.update"), None) or await wire.recv_until(
                ws, lambda m: m["type"] == "progress.update", timeout=3)
            return patch, full

    patch, full = wire.run(scenario())
    assert full["seq"] == patch["seq"] and "data" in full, full
    assert full["data"] == t.get_task_progress_sync("again") | {"eta": full["data"]["eta"],
                                                                "eta_seconds": full["data"]["eta_seconds"],
                                                                "eta_confidence": full["data"]["eta_confidence"]}
