import Glibc

/// Resource samples stamped on the executing tasks.
extension EngineCore {
    /// Samples this process's CPU, memory and GPU and fills the executing tasks' `resource_usage` (fields
    /// a runner reported itself are left alone). Called by the maintenance thread every resource_interval_ms.
    func sampleResources(now: Double) {
        guard let usage = resourceSampler.withLock({ $0.sample(now: monotonicNow()) }) else { return }
        let quiet = EngineCore.quietRunnerSeconds(resourceIntervalMs: config.resourceIntervalMs)
        for shard in table.allShards {
            shard.withLock { state in
                // Not a mirror: its process is another engine's, which samples and publishes it itself, and a
                // sample of this process would move the mirror's seq past the runner's states (they'd be ignored).
                for task in state.tasks.values where task.status == .executing && !task.isMirror {
                    let seq = task.seq, runnerAt = task.updatedAt
                    // Stamped at the task's latest event, like a finished preview: never ahead of the runner.
                    try? task.setResources(usage, fromRunner: false, at: task.lastTimestamp)
                    guard task.seq != seq else { continue }
                    if now - runnerAt >= quiet {
                        noteChanged(task)
                    } else {
                        // The runner is reporting: its next update carries these figures to the subscribers. Sent
                        // alone, the sample would open the task's throttle window and hold that update back for up
                        // to throttle_ms. Redis gets it as usual.
                        noteWriteOnly(task)
                    }
                }
            }
        }
    }

    /// How long a task must go without an update of its own before a resource sample is fanned out alone.
    static func quietRunnerSeconds(resourceIntervalMs: Int) -> Double {
        max(2, 2 * Double(resourceIntervalMs) / 1000)
    }
}
