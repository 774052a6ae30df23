"""Ids are their UTF-8 bytes (docs/API.md "Ids"): "café" written with U+00E9 and with "e" + U+0301 are two tasks
and two batches to the listener as to the engine: subscriptions, resume, delta bases, the batch view and the
listing's filters keep them apart."""

from __future__ import annotations

import time
import urllib.parse

NFC = "caf\u00e9"
NFD = "cafe\u0301"


def test_subscriptions_keep_normalisation_twins_apart(wire):
    t = wire.open(throttle_ms=0)
    for tid in (NFC, NFD):
        t.create_task_progress_sync(tid, "sdxl", "image_generation", batch_id="b-" + tid)
    t.update_progress_sync(NFD, 1, 10, "nfd")
    for step in (1, 2, 3):
        t.update_progress_sync(NFC, step, 10, "nfc")

    async def scenario():
        async with wire.connect(t, "nfc") as only_nfc, wire.connect(t, "nfd") as only_nfd, \
                wire.connect(t, "both") as both:
            for ws in (only_nfc, only_nfd, both):
                await wire.established(ws)
            # Delta for the first twin: its base must not be the other's state.
            await wire.request(only_nfc, {"type": "subscribe", "task_ids": [NFC], "delta": True}, "subscribed")
            await wire.request(only_nfd, {"type": "subscribe", "task_ids": [NFD]}, "subscribed")
            # A resume for each: the NFD twin's client is up to date, the NFC twin's two events behind.
            nfd_seq = t.get_task_progress_sync(NFD)["seq"]
            nfc_seq = t.get_task_progress_sync(NFC)["seq"]
            await wire.request(both, {"type": "subscribe", "task_ids": [NFC, NFD],
                                      "resume": {NFC: nfc_seq - 3, NFD: nfd_seq}}, "subscribed")
            assert wire.metrics(t)["progress_subscriptions"] == 4

            current, replayed = {}, []
            for ws, expect in ((only_nfc, [NFC]), (only_nfd, [NFD]), (both, [NFC, NFD])):
                got = []
                while len(got) < len(expect):
                    msg = await wire.recv(ws)
                    if msg["type"] == "progress.update" and msg.get("replayed"):
                        replayed.append((msg["task_id"], msg["seq"]))
                    elif msg["type"] == "progress.update":
                        got.append(msg)
                assert [m["task_id"] for m in got] == expect
                for m in got:
                    assert m["data"]["task_id"] == m["task_id"]
                current[ws] = got
            # Each twin replayed from its own resume seq: the NFC one's two missed events, nothing of the other.
            assert replayed == [(NFC, nfc_seq - 2), (NFC, nfc_seq - 1)]
            assert {m["task_id"]: m.get("recovered") for m in current[both]} == {NFC: True, NFD: True}

            for step in range(1, 4):
                t.update_progress_sync(NFC, step, 10, f"nfc {step}")
            t.update_progress_sync(NFD, 5, 10, "nfd 5")
            last = {NFC: t.get_task_progress_sync(NFC), NFD: t.get_task_progress_sync(NFD)}

            async def until_current(ws, tid, state=None):
                while True:
                    msg = await wire.recv(ws)
                    if msg["type"] != "progress.update":
                        continue
                    assert msg["task_id"] == tid, (tid, msg)
                    if "patch" in msg:
                        state = {**state, **msg["patch"],
                                 "stages": {**state["stages"], **msg["patch"].get("stages", {})}}
                    else:
                        state = msg["data"]
                    if msg["seq"] == last[tid]["seq"]:
                        return state

            nfc_state = current[only_nfc][0]["data"]
            nfc_state = await until_current(only_nfc, NFC, nfc_state)
            assert nfc_state["stages"]["2"]["message"] == "nfc 3"
            assert (await until_current(only_nfd, NFD))["stages"]["2"]["message"] == "nfd 5"

            # Leaving one twin leaves the other's subscription as it was.
            await wire.request(both, {"type": "unsubscribe", "task_ids": [NFD]}, "unsubscribed")
            t.update_progress_sync(NFD, 6, 10, "nfd 6")
            t.update_progress_sync(NFC, 4, 10, "nfc 4")
            while True:
                msg = await wire.recv(both)
                if msg["type"] == "progress.update" and msg["data"]["stages"]["2"]["message"] in ("nfc 4", "nfd 6"):
                    assert msg["task_id"] == NFC, msg
                    break
            assert wire.metrics(t)["progress_subscriptions"] == 3

    wire.run(scenario())

    for tid in (NFC, NFD):
        r = wire.http(t, f"{wire.API}/batch/{urllib.parse.quote('b-' + tid)}")
        assert r.status == 200, r
        assert list(r.json()["tasks"]) == [tid]
        r = wire.http(t, f"{wire.API}/tasks?" + urllib.parse.urlencode({"batch_id": "b-" + tid}))
        assert [task["task_id"] for task in r.json()["tasks"]] == [tid]


def test_step_counters_of_normalisation_twins_are_both_polled(wire):
    """The engine's maintenance thread reads each attached counter: both twins' steps reach a subscriber without
    any read of the task (a read catches a counter up itself)."""
    t = wire.open(throttle_ms=0)
    counters = {}
    for tid in (NFC, NFD):
        t.create_task_progress_sync(tid, "sdxl", "image_generation")
        counters[tid] = t.stepper(tid, 100)

    async def scenario():
        async with wire.connect(t, "both") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": [NFC, NFD]}, "subscribed")
            counters[NFC].update(7)
            counters[NFD].update(3)
            want = {NFC: 0.07, NFD: 0.03}
            got = {}
            while got != want:
                msg = await wire.recv(ws)
                if msg["type"] == "progress.update" and msg["data"]["current_stage"] == 2:
                    got[msg["task_id"]] = msg["data"]["stages"]["2"]["progress"]

    wire.run(scenario(), timeout=10)


def test_ids_a_rest_path_cannot_name_are_refused_and_slashed_ids_are_served(wire):
    """The HTTP layer decodes %2F and resolves ".", ".." and empty segments before the routes see the path: a
    cancel of task "jobs/../b" reached task "b", "x/logs" read task "x"'s log, and "*" could not be watched on its
    own. Such ids are refused at creation; other ids with slashes are served on every route."""
    import json
    import pytest
    from progress_engine import InvalidArgumentError
    t = wire.open()
    for bad, why in [("*", "every task"), ("jobs/../b", "segment"), ("a//b", "segment"), ("./a", "segment"),
                     ("a/.", "segment"), ("/a", "segment"), ("a/", "segment"), ("..", "segment"),
                     ("x/logs", 'ends in "/logs"'), ("x/history", "ends in"), ("y/cancel", "ends in")]:
        with pytest.raises(InvalidArgumentError, match=why):
            t.create_task_progress_sync(bad, "sdxl")
    t.create_task_progress_sync("b", "sdxl")
    slashed = "user/42/render.v2"
    t.create_task_progress_sync(slashed, "sdxl", "image_generation")
    t.update_progress_sync(slashed, 1, 4, "one")
    t.log_sync(slashed, "info", "a line")
    path = "/api/v1/progress/tasks/" + urllib.parse.quote(slashed, safe="")
    state = json.loads(wire.http(t, path).body)
    assert state["task_id"] == slashed
    logs = json.loads(wire.http(t, path + "/logs").body)
    assert logs["task_id"] == slashed and [e["message"] for e in logs["logs"]][-1] == "a line"
    history = json.loads(wire.http(t, path + "/history").body)
    assert history["task_id"] == slashed and history["events"]
    r = wire.http(t, path + "/cancel", method="POST", body=b'{"reason": "by path"}',
                  headers={"Content-Type": "application/json"})
    assert r.status == 202 and json.loads(r.body)["task_id"] == slashed, (r.status, r.body)
    assert t.get_task_progress_sync(slashed)["cancel_requested"] is True
    assert t.get_task_progress_sync("b")["cancel_requested"] is False
