"""Redis killed, Redis stopped, a runner killed: every acknowledged update accounted for (docs/RELIABILITY.md)."""

import signal
import time

from faults_support import account, read_runner, read_stream, start_runner

#: 4 tasks, one update of each every 10 ms, throttle 20 ms: about 2 events per task per write, so the stream is
#: exact while Redis is up; an outage's backlog (> 64 events per task) is written thinned and counted.
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
