"""Redis killed, Redis stopped, a runner killed: every acknowledged update accounted for (docs/RELIABILITY.md)."""

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from faults_support import RedisServer, account, read_runner, read_stream, start_runner

#: 4 tasks, one update of each every 10 ms, throttle 20 ms: about 2 events per task per write, so the stream is
#: exact while Redis is up; an outage's backlog (100-200 events per task) is written whole (a write carries up to
#: 1,024 events; beyond that it is thinned and counted, which the accounting classifies as superseded).
RUN = dict(tasks=4, interval=0.01, seconds=3.0)


def engine(redis, **extra):
    return dict(redis_url=redis.url, throttle_ms=20, **extra)


def check_common(acc, result, redis):
    assert acc.lost == 0, [vars(a) for a in acc.lost_acks[:10]]
    # Every update the runner could not write as such is counted by the engine (whose counter also counts
    # thinned events of other kinds: resource samples).
    assert acc.superseded <= result["stats"]["redis_dropped_events"], (acc.figures(), result["stats"])
    acc.notes["redis_dropped_events"] = result["stats"]["redis_dropped_events"]
    # The final state of every task is in Redis: its last stream entry ends at the final seq.
    for task, seq in result["final"].items():
        assert read_stream(redis, task)[-1].last == seq, task
    # An update never waits on Redis.
    assert result["p99"] < 0.001 and result["slowest"] < 0.3, (result["p99"], result["slowest"])


def test_redis_sigkill_and_restart_loses_no_acknowledged_update(redis, procs):
    runner = start_runner(procs, engine=engine(redis), **RUN)
    time.sleep(0.8)
    redis.signal(signal.SIGKILL)
    time.sleep(1.0)
    redis.start()  # the same folder: the AOF (fsync always) brings back every write Redis acknowledged
    acks, result = read_runner(runner)
    assert result["stats"]["redis_reconnects"] >= 1
    acc = account("redis_sigkill_restart", acks, redis)
    acc.notes["redis_reconnects"] = result["stats"]["redis_reconnects"]
    check_common(acc, result, redis)


def test_redis_sigstop_loses_no_acknowledged_update(redis, procs):
    runner = start_runner(procs, engine=engine(redis), **RUN)
    time.sleep(0.8)
    redis.signal(signal.SIGSTOP)
    time.sleep(1.5)  # past the writer's 1 s I/O timeout: it gives up the connection and retries
    redis.signal(signal.SIGCONT)
    acks, result = read_runner(runner)
    acc = account("redis_sigstop", acks, redis)
    acc.notes["redis_reconnects"] = result["stats"]["redis_reconnects"]
    check_common(acc, result, redis)


def test_runner_sigkill_loses_at_most_the_last_write_window(redis, procs):
    """A runner killed with SIGKILL cannot flush: what it acknowledged in its last throttle window (plus the
    write in flight) may be lost, and nothing older."""
    runner = start_runner(procs, engine=engine(redis), tasks=4, interval=0.01, seconds=30)
    time.sleep(1.5)
    runner.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    acks, result = read_runner(runner)
    assert result is None and acks
    acc = account("runner_sigkill", acks, redis)
    window = max((killed - a.at for a in acc.lost_acks), default=0.0)
    acc.notes["lost_window_ms"] = round(window * 1000, 1)
    assert acc.superseded == 0
    # throttle_ms 20: lost updates are those of the last ~20 ms (200 ms allowed for a loaded machine).
    assert all(killed - a.at < 0.2 for a in acc.lost_acks), [(a.task, a.step, killed - a.at) for a in acc.lost_acks]
    assert acc.persisted + acc.lost == acc.acknowledged



@pytest.fixture(scope="module")
def power_loss_lib(tmp_path_factory):
    """tests/faults/aof_power_loss.c built as an LD_PRELOAD library for redis-server."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build tests/faults/aof_power_loss.c")
    out = tmp_path_factory.mktemp("aof-power-loss") / "aof_power_loss.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(Path(__file__).with_name("aof_power_loss.c")),
                    "-ldl", "-lpthread"], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("crash", ["process", "machine"])
def test_redis_everysec_sigkill_loses_nothing_the_engine_still_holds(tmp_path, procs, power_loss_lib, crash):
    """Redis with `appendfsync everysec` acknowledges writes that it fsyncs up to a second later. Killed with SIGKILL
    ("process"), Redis loses nothing it handed to the kernel. A machine crash also loses the page cache: "machine"
    emulates it with aof_power_loss.so, which holds Redis' AOF writes in memory until Redis syncs them, so that the
    SIGKILL loses exactly what was not synced yet (up to a second of acknowledged writes). The runner's engine, alive
    through the restart, sees another Redis run and writes again what Redis no longer holds: nothing acknowledged is
    lost (the previous engine lost 16-368 updates, all acknowledged within the last second), and the final state of
    every task is in Redis."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    log = tmp_path / "aof-power-loss.log"
    env = {"LD_PRELOAD": str(power_loss_lib), "AOF_POWER_LOSS_LOG": str(log)} if crash == "machine" else None
    redis = RedisServer(tmp_path / "redis-data", appendfsync="everysec", env=env)
    redis.folder.mkdir()
    redis.start()
    try:
        # No resource samples, so the seq the runner reads back after each update is that update's: each
        # acknowledged update is classified by its own seq.
        runner = start_runner(procs, engine=dict(redis_url=redis.url, throttle_ms=20, resource_interval_ms=3600000),
                              tasks=4, interval=0.01, seconds=5.0, seqs=True)
        time.sleep(2.5)
        redis.signal(signal.SIGKILL)
        killed = time.monotonic()
        time.sleep(1.0)
        redis.env = None  # the machine comes back: the AOF holds what was synced
        redis.start()
        acks, result = read_runner(runner)
        acc = account(f"redis_everysec_sigkill_{crash}", acks, redis)
        ages = sorted(killed - a.at for a in acc.lost_acks)
        acc.notes["lost_window_ms"] = round(ages[-1] * 1000, 1) if ages else 0.0
        acc.notes["redis_reconnects"] = result["stats"]["redis_reconnects"]
        if crash == "machine":
            held = [line.split() for line in log.read_text().splitlines()]
            written = sum(int(n) for kind, n in held if kind == "write")
            synced = sum(int(n) for kind, n in held if kind == "sync")
            # The library was loaded and held the AOF: Redis synced through it at least once.
            assert synced > 0, held[-10:]
            acc.notes["aof_unsynced_bytes_at_kill"] = written - synced
        assert acc.lost == 0, ([round(a, 3) for a in ages[:10]], acc.figures())
        assert acc.superseded <= result["stats"]["redis_dropped_events"], (acc.figures(), result["stats"])
        assert acc.persisted + acc.superseded + acc.lost == acc.acknowledged
        # Written again after the restart: the final state of every task.
        for task, seq in result["final"].items():
            assert read_stream(redis, task)[-1].last == seq, task
        assert result["p99"] < 0.001 and result["slowest"] < 0.3, (result["p99"], result["slowest"])
    finally:
        redis.stop()
