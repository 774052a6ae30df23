#!/usr/bin/env python3
"""(b) of the fan-out benchmark: a Python `websockets` server speaking the subset of SPEC §7 the load
harness uses, broadcasting the same update stream the C runner drives through ProgressEngine.

    python_server.py TASKS TEMPLATE_FILE

TEMPLATE_FILE is a TaskProgress JSON (`runner dump`); each update sets the task's id, seq, step progress
and its main stage's message "t=<CLOCK_REALTIME ns>" and serialises the whole progress.update message
with json.dumps, so the frames have the listener's size and shape.

Protocol: `connection.established` on connect; `subscribe` {task_ids} answered with `subscribed` and the
task's current state (progress.update); `unsubscribe`; anything else gets an `error`. Updates go to the
task's subscribers with `websockets.broadcast` (one encoding per update, no per-client coalescing).

Prints `READY {"port","pid"}` and obeys lines on stdin, like `runner`:
    run SECONDS PERIOD_MS   PERIOD_MS > 0: each task once every PERIOD_MS, staggered over the period;
                            0: saturation (rounds over every task back to back, yielding to the event
                            loop after each round). Prints `DONE {"updates","wall_s","late_ms"}`.
    quit
"""
import asyncio
import copy
import json
import os
import resource
import sys
import time

import websockets
from websockets.asyncio.server import broadcast, serve

MAIN_STAGE = "2"  # the stage the template's "t=" message is in


class Server:
    def __init__(self, ntasks, template):
        self.ids = ["task-%04d" % i for i in range(ntasks)]
        self.subscribers = {tid: set() for tid in self.ids}
        self.data = {}
        self.current = {}
        self.seq = {}
        self.step = {}
        for tid in self.ids:
            d = copy.deepcopy(template)
            d["task_id"] = tid
            d["stages"][MAIN_STAGE]["message"] = "t=0"
            self.data[tid] = d
            self.seq[tid] = d["seq"]
            self.step[tid] = 0
            self.current[tid] = self.encode(tid)
        self.running = None

    def encode(self, tid):
        d = self.data[tid]
        return json.dumps({"type": "progress.update", "task_id": tid, "seq": self.seq[tid], "data": d},
                          separators=(",", ":"))

    def update(self, tid):
        """One runner call: new state, encoded once, broadcast to the task's subscribers."""
        self.step[tid] = self.step[tid] % 999 + 1
        self.seq[tid] += 1
        d = self.data[tid]
        stage = d["stages"][MAIN_STAGE]
        stage["progress"] = self.step[tid] / 1000
        stage["message"] = "t=%d" % time.time_ns()
        d["seq"] = self.seq[tid]
        d["overall_progress"] = round(20.0 + 70.0 * self.step[tid] / 1000, 1)
        message = self.encode(tid)
        self.current[tid] = message
        subs = self.subscribers[tid]
        if subs:
            broadcast(subs, message)

    async def handler(self, ws):
        mine = set()
        try:
            await ws.send(json.dumps({"type": "connection.established", "client_id": "client-%d" % id(ws)}))
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                    kind = msg["type"]
                except (ValueError, KeyError, TypeError):
                    await ws.send(json.dumps({"type": "error", "code": "invalid_message", "message": "bad JSON"}))
                    continue
                if kind in ("subscribe", "unsubscribe"):
                    ids = [t for t in msg.get("task_ids", []) if t in self.subscribers]
                    for tid in ids:
                        if kind == "subscribe":
                            self.subscribers[tid].add(ws)
                            mine.add(tid)
                        else:
                            self.subscribers[tid].discard(ws)
                            mine.discard(tid)
                    reply = "subscribed" if kind == "subscribe" else "unsubscribed"
                    await ws.send(json.dumps({"type": reply, "task_ids": ids}))
                    if kind == "subscribe":
                        for tid in ids:
                            await ws.send(self.current[tid])
                else:
                    await ws.send(json.dumps({"type": "error", "code": "unknown_type", "message": kind}))
        except websockets.ConnectionClosed:
            pass
        finally:
            for tid in mine:
                self.subscribers[tid].discard(ws)

    async def run(self, seconds, period_ms):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + seconds
        updates = 0
        late = 0.0
        n = len(self.ids)
        if period_ms > 0:
            # as runner.c: catch up after a stall, but never sooner than 0.6 periods after a task's last update
            period = period_ms / 1000
            slot = period / n
            last = [float("-inf")] * n
            k = 0
            while True:
                due = t0 + k * slot
                if due >= end:
                    break
                i = k % n
                now = loop.time()
                if now >= due:
                    late = max(late, now - due)
                due = max(due, last[i] + 0.6 * period)
                if now < due:
                    await asyncio.sleep(due - now)
                last[i] = loop.time()
                self.update(self.ids[i])
                updates += 1
                k += 1
        else:
            while loop.time() < end:
                for tid in self.ids:
                    self.update(tid)
                updates += n
                await asyncio.sleep(0)
        print("DONE " + json.dumps({"updates": updates, "receivers": 0, "wall_s": loop.time() - t0,
                                    "late_ms": late * 1000}), flush=True)


async def main():
    ntasks = int(sys.argv[1])
    with open(sys.argv[2]) as f:
        template = json.load(f)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = Server(ntasks, template)
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    pending = []

    buffered = b""

    def on_stdin():
        nonlocal buffered
        chunk = os.read(sys.stdin.fileno(), 4096)
        if not chunk:
            chunk = b"quit\n"
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            parts = line.decode().split()
            if parts[:1] == ["quit"]:
                if not done.done():
                    done.set_result(None)
                return
            if len(parts) == 3 and parts[0] == "run":
                pending.append(asyncio.ensure_future(server.run(float(parts[1]), int(parts[2]))))
            else:
                print('ERROR {"line":"bad command"}', flush=True)

    # No compression (the listener sends none either), no keepalive pings, a deep accept backlog.
    async with serve(server.handler, "127.0.0.1", 0, compression=None, ping_interval=None,
                     max_queue=None, backlog=4096) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        print("READY " + json.dumps({"port": port, "pid": os.getpid()}), flush=True)
        loop.add_reader(sys.stdin.fileno(), on_stdin)
        await done
        loop.remove_reader(sys.stdin.fileno())
        for task in pending:
            task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
