import Glibc

/// The engine's one background thread: reads attached step counters and purges expired tasks.
/// Started in `init`, stopped and joined by `stop()`; it never calls user code.
final class MaintenanceThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var stopping = false
    private var running = false
    private let body: @Sendable () -> Double

    /// - Parameter body: one round of work; returns how many seconds to sleep before the next round.
    init(body: @escaping @Sendable () -> Double) throws {
        self.body = body
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
        thread = try startThread("the engine's maintenance thread") { [self] in self.loop() }
        running = true
    }

    private func loop() {
        pthread_mutex_lock(mutex)
        while !stopping {
            pthread_mutex_unlock(mutex)
            let sleep = body()
            pthread_mutex_lock(mutex)
            if stopping { break }
            var deadline = timespec()
            clock_gettime(CLOCK_MONOTONIC, &deadline)
            let ns = Int(deadline.tv_nsec) + Int(sleep * 1e9)
            deadline.tv_sec += ns / 1_000_000_000
            deadline.tv_nsec = ns % 1_000_000_000
            pthread_cond_timedwait(cond, mutex, &deadline)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Wakes the thread for an early round (a counter was attached).
    func wake() {
        pthread_mutex_lock(mutex)
        pthread_cond_signal(cond)
        pthread_mutex_unlock(mutex)
    }

    /// Stops the thread and waits for it; idempotent.
    func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_signal(cond)
        pthread_mutex_unlock(mutex)
        if running {
            pthread_join(thread, nil)
            running = false
        }
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }
}
