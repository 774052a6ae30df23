import Glibc


/// Where the engine reads the time. Injected so retention, durations and history are tested without sleeping.
protocol EngineClock: Sendable {
    /// Seconds since the Unix epoch.
    func now() -> Double
    /// The time of a runner's step (`progress_update`), where the precision of `now` is not needed: a step's
    /// time is shown to the millisecond and is never earlier than the task's previous event (the engine takes the
    /// later of the two). It may read in ticks of `stepResolution` seconds.
    func stepTime() -> Double
    /// The tick of `stepTime` (0 when it is as precise as `now`): the live pace takes its intervals over many
    /// ticks, since one shorter than a tick reads as 0 or a whole tick (`LiveRate`).
    var stepResolution: Double { get }
}

extension EngineClock {
    func stepTime() -> Double { now() }
    var stepResolution: Double { 0 }
}

/// The system's real-time clock (vDSO `clock_gettime`, no system call).
struct SystemClock: EngineClock {
    func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// The real-time clock as of the kernel's last tick (up to one tick old, 1-10 ms): about 5 ns instead of 20-30
    /// for a precise read, which was a quarter of a `progress_update` (benchmarks/c/README.md).
    func stepTime() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    var stepResolution: Double { SystemClock.coarseTick }

    /// The kernel's tick as the coarse clock reports it (4 ms at 250 Hz).
    static let coarseTick: Double = {
        var ts = timespec()
        guard clock_getres(CLOCK_REALTIME_COARSE, &ts) == 0 else { return 0.01 }
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }()
}

/// Monotonic seconds (never jumps with the wall clock): what the listener, the Redis writer and the subscriber
/// throttle, coalesce and back off by. Injected like `SystemClock`, so those rules are tested without sleeping.
struct MonotonicClock: EngineClock {
    func now() -> Double { monotonicNow() }
}

/// Monotonic seconds (vDSO `clock_gettime`, no system call).
func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

/// A clock that moves only when told to; for tests. With a `stepTick`, its step time reads in ticks, as the
/// system's coarse clock does.
final class ManualClock: EngineClock {
    private let time: Locked<Double>
    let stepResolution: Double

    init(_ start: Double = 1_700_000_000, stepTick: Double = 0) {
        time = Locked(start)
        stepResolution = stepTick
    }

    func now() -> Double { time.withLock { $0 } }

    func stepTime() -> Double {
        let t = now()
        return stepResolution > 0 ? (t / stepResolution).rounded(.down) * stepResolution : t
    }

    func advance(_ seconds: Double) {
        time.withLock { $0 += seconds }
    }

    func set(_ epoch: Double) {
        time.withLock { $0 = epoch }
    }
}
