#!/usr/bin/env python3
"""The cost of Redis write-through to a runner, side by side in one run (see README.md).

Starts its own redis-server on a free port, then runs bench_runner (a C sampling loop over TASKS tasks) three
times, each for SECONDS, in ROUNDS interleaved rounds (the best round of each is reported):
  off      no redis_url (memory only): the baseline;
  on       write-through to the running Redis;
  paused   write-through while Redis is stopped with SIGSTOP for the whole loop (resumed afterwards).
Reports the update rate, p50 / p99 / max call time, and the Redis commands the writer issued per second
against the bound tasks x (1000 / throttle_ms) task writes per second.
Targets: on >= 0.9 x off in rate; paused p99 <= 1.2 x on p99; commands bounded by task writes, not updates.
Exit status 0 when every target is met.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = int(os.environ.get("BENCH_TASKS", "16"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
THROTTLE_MS = 100
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(config, pause=None, server=None):
    server_cpu = cpu_seconds(server.pid) if server else 0.0
    proc = subprocess.Popen([str(HERE / "bench_runner"), json.dumps(config), str(TASKS), str(SECONDS)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if pause is not None:
        time.sleep(0.2)  # open, connect, create the tasks
        pause.send_signal(signal.SIGSTOP)
        try:
            out, _ = proc.communicate(timeout=SECONDS + 30)
        finally:
            pause.send_signal(signal.SIGCONT)
    else:
        out, _ = proc.communicate(timeout=SECONDS + 30)
    if proc.returncode != 0:
        sys.exit(f"bench_runner failed ({proc.returncode})")
    result = json.loads(out)
    # The server's CPU over the whole run (its last writes land before the runner exits: close flushes them).
    result["server_cpu_s"] = cpu_seconds(server.pid) - server_cpu if server else 0.0
    return result


def main():
    if not (HERE / "bench_runner").exists():
        sys.exit("build bench_runner first: make -C benchmarks/redis bench_runner")
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    folder = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        url = f"redis://127.0.0.1:{port}/0"
        base = {"throttle_ms": THROTTLE_MS, "resource_interval_ms": 3_600_000}
        # Interleaved rounds, best of each: other load on the machine hits every configuration alike.
        rounds = [(run(base), run({**base, "redis_url": url}, server=redis),
                   run({**base, "redis_url": url}, pause=redis))
                  for _ in range(ROUNDS)]
        off, on, paused = (max((r[i] for r in rounds), key=lambda x: x["rate"]) for i in range(3))
    finally:
        redis.send_signal(signal.SIGCONT)
        redis.kill()
        redis.wait()
        shutil.rmtree(folder, ignore_errors=True)

    def delta(r, key):
        return r["stats_after"].get(key, 0) - r["stats_before"].get(key, 0)

    commands_per_s = delta(on, "redis_commands") / on["seconds"]
    writes_per_s = delta(on, "redis_task_writes") / on["seconds"]
    bound_writes = TASKS * 1000 / THROTTLE_MS
    per_write = delta(on, "redis_commands") / max(1, delta(on, "redis_task_writes"))
    print(f"{TASKS} tasks, {SECONDS:g} s per run, best of {ROUNDS} interleaved rounds, throttle_ms {THROTTLE_MS}\n")
    print(f"{'run':<8} {'updates/s':>12} {'p50 ns':>8} {'p99 ns':>8} {'max us':>9}")
    for name, r in (("off", off), ("on", on), ("paused", paused)):
        print(f"{name:<8} {r['rate']:>12,.0f} {r['p50_ns']:>8} {r['p99_ns']:>8} {r['max_ns'] / 1000:>9,.0f}")
    rate_ratio = on["rate"] / off["rate"]
    p99_ratio = paused["p99_ns"] / max(1, on["p99_ns"])
    print()
    print(f"write-through rate: {rate_ratio:.3f} x off (target >= 0.90)")
    print(f"p99 while Redis is SIGSTOPped: {p99_ratio:.2f} x running (target <= 1.20)")
    print(f"Redis commands: {commands_per_s:,.0f}/s for {on['rate']:,.0f} updates/s; task writes {writes_per_s:,.0f}/s "
          f"(bound {bound_writes:,.0f}/s = tasks x 1000/throttle_ms), {per_write:.1f} commands per write")
    print(f"Redis server CPU: {on['server_cpu_s'] * 1e6 / max(1, delta(on, 'redis_task_writes')):.0f} us per task "
          f"write ({on['server_cpu_s'] / on['seconds'] * 100:.1f} % of a core)")
    ok = rate_ratio >= 0.9 and p99_ratio <= 1.2 and writes_per_s <= bound_writes * 1.05
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
