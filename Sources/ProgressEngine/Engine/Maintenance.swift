import Glibc
import Synchronization

/// The maintenance thread's round: step counters, resource samples, the retention sweep.
extension EngineCore {
    /// One round of the maintenance thread: poll counters; once a second, sweep expired tasks and look for cancel
    /// requests left unanswered.
    /// - Returns: seconds until the next round.
    @discardableResult
    func maintenanceRound() -> Double {
        let ids = counterTasks.withLock { Array($0) }
        let now = clock.now()
        for counted in ids {
            let key = TaskKey(owning: counted.id)
            table.shard(for: key).withLock { shard in
                guard let task = shard.tasks[key] else { return }
                let before = task.status, seq = task.seq
                // A counter's first steps also move a queued task to its main stage.
                if pollCounter(task, at: max(now, task.lastTimestamp)) || task.status != before {
                    afterChange(task, &shard, seqBefore: seq, statusBefore: before)
                }
            }
        }
        if resourceSampler.withLock({ $0.isDue(now: monotonicNow(), intervalMs: config.resourceIntervalMs) }) {
            sampleResources(now: now)
        }
        let sweepDue = lastSweep.withLock { last in
            guard now - last >= 1 else { return false }
            last = now
            return true
        }
        if sweepDue {
            sweep(now: now)
            warnUnansweredCancels(now: now)
        }
        let idle = min(1, Double(config.resourceIntervalMs) / 1000)
        guard !ids.isEmpty else { return idle }
        return max(0.001, min(Double(config.throttleMs), 50, idle * 1000) / 1000)
    }

    /// Drops finished tasks older than `retention_seconds`.
    func sweep(now: Double) {
        var gone: [(String, String?)] = []
        var files: [String] = []
        for shard in table.allShards {
            shard.withLock { state in
                let before = gone.count
                for task in state.tasks.values where task.isExpired(now: now, retention: config.retentionSeconds) {
                    state.tasks[task.key] = nil
                    gone.append((task.id, task.batchId))
                    files += task.previewFiles
                }
                // Told under the lock, before a task made anew under one of these ids can note a change: the
                // listener then forgets what its clients were sent of the old task before the new one's states.
                if gone.count > before { listener?.noteExpired(taskIds: gone[before...].map { $0.0 }) }
            }
        }
        // Deleted after the shard locks are released: updates of a shard never wait on the file system.
        if let dir = previewDirectory {
            for file in files { unlink(dir + "/" + file) }
        }
        guard !gone.isEmpty else { return }
        purged.add(gone.count, ordering: .relaxed)
        let expiredIds = Set(gone.map { IdKey($0.0) })
        batches.withLock { all in
            for batch in Set(gone.compactMap { $0.1.map(IdKey.init) }) {
                all[batch]?.removeAll { expiredIds.contains(IdKey($0)) }
                if all[batch]?.isEmpty == true { all[batch] = nil }
            }
        }
    }
}
