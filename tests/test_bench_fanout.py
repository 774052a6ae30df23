"""The fan-out benchmark's own programs (benchmarks/fanout) still do what its README says, so that a figure
it prints means what the README claims: floor_server speaks WebSocket to a real client (Python
`websockets`), and the load harness counts exactly the deliveries each server sends, against floor_server
and against the listener (`runner engine`). Small N and short runs: these check the tools, not speed."""

import asyncio
import json
import subprocess
import sys
import time

import pytest
import websockets

from test_abi import ROOT

FANOUT = ROOT / "benchmarks" / "fanout"
sys.path.insert(0, str(FANOUT))
from run import Proc  # noqa: E402  (the benchmark's own process wrapper: READY/DONE lines, timeouts)


@pytest.fixture(scope="module")
def built():
    out = subprocess.run(["make", "-C", str(FANOUT), "all"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def template(built, tmp_path_factory):
    dump = subprocess.run([str(FANOUT / "runner"), "dump"], capture_output=True, text=True, timeout=30, check=True)
    path = tmp_path_factory.mktemp("fanout") / "task.json"
    path.write_text(dump.stdout)
    return path


@pytest.fixture
def procs():
    yield
    Proc.stop_all()


def start_floor(template, tasks):
    server = Proc(["./floor_server", str(tasks), str(template)], "floor_server")
    return server, server.expect("READY", 30)["port"]


def test_floor_server_speaks_websocket(template, procs):
    """Handshake, connection.established, subscribe → subscribed + current state, updates with a growing
    seq and a fresh stamp, the listener's frame size, unsubscribe, an error for anything else."""
    server, port = start_floor(template, 4)

    async def scenario():
        async with websockets.connect(f"ws://127.0.0.1:{port}/api/v1/progress/ws?client_id=t",
                                      compression=None) as ws:
            assert json.loads(await ws.recv())["type"] == "connection.established"
            await ws.send(json.dumps({"type": "subscribe", "task_ids": ["task-0001", "task-0003", "nope"]}))
            assert json.loads(await ws.recv()) == {"type": "subscribed", "task_ids": ["task-0001", "task-0003"]}
            first = [json.loads(await ws.recv()) for _ in range(2)]
            assert [m["task_id"] for m in first] == ["task-0001", "task-0003"]
            assert first[0]["data"]["stages"]["2"]["message"] == "t=0000000000000000000"
            server.send("run 0.5 100")  # each of the 4 tasks 5 times; this client follows 2 of them
            updates = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(10)]
            for task in ("task-0001", "task-0003"):
                mine = [m for m in updates if m["task_id"] == task]
                assert len(mine) == 5
                assert [m["seq"] for m in mine] == sorted({m["seq"] for m in mine})
                assert all(m["data"]["task_id"] == task for m in mine)
                stamps = [int(m["data"]["stages"]["2"]["message"][2:]) for m in mine]
                assert stamps == sorted(stamps) and stamps[0] > 1_700_000_000 * 10**9
            # the listener's TaskProgress, as `runner dump` printed it, but for the task id and the stamp
            expected = json.loads(template.read_text())
            data = updates[0]["data"]
            expected["task_id"] = data["task_id"]
            expected["stages"]["2"]["message"] = data["stages"]["2"]["message"]
            assert data == expected
            await ws.send(json.dumps({"type": "unsubscribe", "task_ids": ["task-0001"]}))
            assert json.loads(await ws.recv())["type"] == "unsubscribed"
            await ws.send(json.dumps({"type": "ping"}))
            assert json.loads(await ws.recv())["type"] == "error"
        assert ws.close_code == 1000  # the server answered the close handshake

    asyncio.run(scenario())
    assert server.expect("DONE", 10)["updates"] == 20


def deliveries(template, kind, tasks, subs, subscribe, command, updates, expected):
    """20 load clients on `subs` of `tasks` tasks of floor_server or the listener (`runner engine`), subscribed with
    `subscribe`, the server running `command`: asserts it made `updates` updates and the harness counted exactly
    `expected` deliveries, one latency sample each, none repeated; returns the last report."""
    if kind == "floor":
        server, port = start_floor(template, tasks)
    else:
        server = Proc(["./runner", "engine", "100", str(tasks), "84", '"resource_interval_ms":3600000'],
                      "runner engine")
        port = server.expect("READY", 30)["port"]
    client = Proc(["./loadclient", "ws", str(port), "20", str(tasks), str(subs)], "loadclient")
    assert client.expect("CONNECTED", 30)["open"] == 20
    client.send(subscribe)
    assert client.expect("SUBSCRIBED", 30)["subscribed"] == 20
    client.send("reset")
    client.expect("RESET", 10)
    server.send(command)
    assert server.expect("DONE", 30)["updates"] == updates
    deadline = time.monotonic() + 10
    while True:
        # As run.py polls: `status` while deliveries arrive, `report` (which sorts the samples) after.
        client.send("status")
        st = client.expect("STATUS", 10)
        if st["deliveries"] >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    client.send("report")
    rep = client.expect("REPORT", 10)
    assert st["deliveries"] == rep["deliveries"] == expected, (st, rep)
    assert rep["samples"] == expected and rep["repeats"] == 0 and rep["errors"] == 0, rep
    return rep


@pytest.mark.parametrize("kind", ["floor", "listener"])
def test_load_client_counts_every_delivery(template, procs, kind):
    """20 clients × 2 of 10 tasks, each task updated 5 times: the harness counts exactly 5 × 40
    deliveries, one latency sample each, none repeated, whichever server sends them."""
    # 300 ms apart (and never under 0.6 x 300 ms after a stall): far from the listener's 100 ms throttle
    rep = deliveries(template, kind, tasks=10, subs=2, subscribe="sub", command="run 1.5 300", updates=50,
                     expected=200)
    assert rep["open"] == 20 and rep["closed"] == 0, rep


@pytest.mark.parametrize("kind", ["floor", "listener"])
def test_burst_updates_every_task_at_each_instant_to_every_client(template, procs, kind):
    """The burst shape (run.py --burst): 20 clients on all of 3 tasks (the listener's through "*", `sub star`),
    the 3 tasks updated at each instant 300 ms apart for 1 s (4 instants): exactly 4 x 3 x 20 deliveries, one
    latency sample each, none repeated."""
    deliveries(template, kind, tasks=3, subs=3, subscribe="sub star" if kind == "listener" else "sub",
               command="burst 1.0 300", updates=12, expected=240)
