import Glibc

/// A task's ETA when it is read, and the queue's forecast.
extension EngineCore {
    /// The task's ETA from its snapshot and the completion history. Called after the shard lock is released:
    /// the history has its own lock and statistics are cached, so a read costs a few lookups and a little
    /// arithmetic.
    /// - Parameter task: a snapshot of the task.
    /// - Returns: the estimate, nil when nothing is known to base one on (or the task failed or was cancelled).
    func estimate(_ task: TaskSnapshot, now: Double) -> ETAEstimate? {
        predictor(for: task).estimate(task, now: now,
                                      queueStart: task.status == .queued ? queueStart(of: task, now: now) : nil)
    }

    /// The predictor of a task: its similar tasks' history, narrowed to the runs whose current stage ran as the
    /// runner says this one's does (`StageState.variant`), then to the runs nearest its size when its runner gave
    /// one (`Workload`); each narrowing only where enough records are left. A variant narrows only while its stage
    /// lasts: once a cold load is over, what follows it is much like what follows a warm one, and keeping to cold
    /// runs then would only leave fewer records to predict the rest from.
    private func predictor(for task: TaskSnapshot) -> ETAPredictor {
        let narrowed = completions.narrowed(
            template: task.templateId, quality: task.quality, resource: task.resourceKey, category: task.category,
            variant: task.stages[task.currentStage].variant.map { (task.currentStage, $0) },
            workload: Workload(metadata: task.metadata))
        return ETAPredictor(
            history: narrowed?.history, bySize: narrowed?.bySize ?? false, unscaled: narrowed?.unscaled,
            queueHistory: completions.statistics(.resource(template: IdKey(task.templateId), resource: task.resourceKey)))
    }

    /// Queued tasks ahead whose execution is forecast one by one; the rest count at their mean.
    static let forecastAhead = 64

    /// When a queued task will start, from its line (`QueueBoard`): a worker frees up when the task it runs
    /// completes (that task's own ETA), then takes the next task in line for as long as that one's execution is
    /// predicted to take, until the task's turn comes. While the task waits every worker is busy, so the tasks
    /// executing tell how many workers there are. Times count from the engine's time (`eventTime`).
    /// - Parameters:
    ///   - task: a queued task.
    ///   - now: the engine's time.
    /// - Returns: the forecast start (epoch seconds) and its variance; nil when the task waits in no line, no task
    ///   of its line is executing, or the execution of those ahead cannot be predicted.
    private func queueStart(of task: TaskSnapshot, now: Double) -> (time: Double, variance: Double)? {
        guard let key = task.queueLine,
              let line = queues.line(of: task.id, key: key, limit: EngineCore.forecastAhead) else { return nil }
        func snapshot(_ id: String) -> TaskSnapshot? { try? withTask(id: id, isUpdate: false) { TaskSnapshot($0) } }
        let reference = max(task.updatedAt, now)
        var free: [Double] = [], runningVariance = 0.0
        for id in line.running {
            guard let other = snapshot(id), let eta = predictor(for: other).estimate(other, now: reference) else {
                continue
            }
            free.append(other.updatedAt + eta.seconds)
            runningVariance += eta.deviation * eta.deviation
        }
        guard !free.isEmpty else { return nil }
        let workers = Double(free.count)
        var executions: [(seconds: Double, variance: Double)] = []
        for id in line.ahead {
            if let other = snapshot(id), let execution = predictor(for: other).expectedExecution(other) {
                executions.append(execution)
            }
        }
        if executions.isEmpty && line.aheadCount > 0 { return nil }
        free = free.map { max($0, reference) }
        var variance = runningVariance / workers
        for execution in executions {
            let next = free.indices.min { free[$0] < free[$1] } ?? 0
            free[next] += execution.seconds
            variance += execution.variance / workers
        }
        var start = free.min() ?? reference
        // Tasks ahead beyond those forecast one by one (or without a forecast) take the mean of those that were.
        let unforecast = line.aheadCount - executions.count
        if unforecast > 0 {
            let share = Double(unforecast) / Double(executions.count) / workers
            start += share * executions.map(\.seconds).reduce(0, +)
            variance += share * executions.map(\.variance).reduce(0, +)
        }
        return (start, variance)
    }
}
