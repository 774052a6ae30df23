"""Ids are their UTF-8 bytes (docs/API.md "Ids"): two ids that differ only in Unicode normalisation ("café" written
with U+00E9 and with "e" + U+0301) are two tasks and two batches, kept apart in what reaches Redis and comes back
after a restart."""

import json

from redis_support import flushed, task_key
from progress_engine import ProgressTracker

NFC = "caf\u00e9"
NFD = "cafe\u0301"


def test_normalisation_twins_are_written_through_apart(redis):
    assert NFC != NFD and NFC.encode() != NFD.encode()
    with ProgressTracker(redis_url=redis.url, throttle_ms=0) as t:
        t.register_template_stages_sync("tpl", [{"name": "sample", "weight": 1}])
        t.create_task_progress_sync(task_id=NFC, template_id="tpl", batch_id="b-" + NFC)
        t.create_task_progress_sync(task_id=NFD, template_id="tpl", batch_id="b-" + NFD)
        flushed(t)
        # Both change before the writer's next round: both are queued for it at once.
        for step in range(1, 21):
            t.update_progress_sync(NFC, step, 20, "nfc")
            t.update_progress_sync(NFD, step // 2, 20, "nfd")
        flushed(t)
        local = {tid: t.get_task_progress_sync(tid) for tid in (NFC, NFD)}

    for tid in (NFC, NFD):
        stored = json.loads(redis.cli("GET", task_key("state", tid)))
        stored.pop("stored_times")
        assert stored == local[tid], tid
    assert local[NFC]["stages"]["0"]["message"] == "nfc" and local[NFD]["stages"]["0"]["message"] == "nfd"
    assert redis.lines("SMEMBERS", "progress:batch:{b-" + NFC + "}") == [NFC]
    assert redis.lines("SMEMBERS", "progress:batch:{b-" + NFD + "}") == [NFD]

    with ProgressTracker(redis_url=redis.url) as again:
        for tid in (NFC, NFD):
            assert again.get_task_progress_sync(tid)["seq"] == local[tid]["seq"], tid
