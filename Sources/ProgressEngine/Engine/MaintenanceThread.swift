import Glibc

/// The engine's one background thread: reads attached step counters and purges expired tasks.
/// Started in `init`, stopped and joined by `stop()`; it never calls user code.
final class MaintenanceThread: @unchecked Sendable {
    private let worker = WorkerThread()
    private let body: @Sendable () -> Double

    /// - Parameter body: one round of work; returns how many seconds to sleep before the next round.
    init(body: @escaping @Sendable () -> Double) throws {
        self.body = body
        try worker.start("the engine's maintenance thread", name: "pe-maintenance") { [self] in self.loop() }
    }

    private func loop() {
        worker.lock()
        while !worker.stopping {
            worker.unlock()
            let sleep = body()
            worker.lock()
            if worker.stopping { break }
            worker.wait(seconds: sleep)
        }
        worker.unlock()
    }

    /// Wakes the thread for an early round (a counter was attached).
    func wake() {
        worker.lock()
        worker.signal()
        worker.unlock()
    }

    /// Stops the thread and waits for it; idempotent.
    func stop() {
        worker.stop()
    }
}
