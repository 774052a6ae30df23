import Glibc
import CProgress

/// A message argument as it arrives: absent, a caller's C string (copied only when it differs from the
/// current message, so the hot path does not allocate for a repeated message), or a Swift string.
enum MessageArgument {
    case none
    case cString(UnsafePointer<CChar>)
    case string(String)

    /// The message to store, or nil to keep `current`.
    /// - Throws: `EngineError.invalidArgument` for a C string that is not valid UTF-8.
    func resolve(current: String?) throws -> String? {
        switch self {
        case .none:
            return nil
        case let .string(s):
            return s == current ? nil : s
        case let .cString(p):
            if var current {
                let same = current.withUTF8 { buf in
                    strlen(p) == buf.count && (buf.isEmpty || memcmp(p, buf.baseAddress!, buf.count) == 0)
                }
                if same { return nil }
            }
            guard let s = String(validatingCString: p) else {
                throw EngineError.invalidArgument("message is not valid UTF-8")
            }
            return s
        }
    }
}

/// Caller-owned step counter memory attached to a task (`progress_task_attach_counter`).
struct CounterBinding {
    let pointer: UnsafePointer<CLongLong>
    var lastStep: Int64
    var lastTotal: Int64

    func read() -> (step: Int64, total: Int64) {
        (Int64(CProgress_load_relaxed(pointer)), Int64(CProgress_load_relaxed(pointer + 1)))
    }
}

/// The full live state of one task. Not thread-safe by itself: every access happens under the lock of the
/// task table shard that holds it (hence `@unchecked Sendable`: the shard lock is the synchronisation).
final class TaskRecord: @unchecked Sendable {
    static let historyCapacity = 4096
    static let logCapacity = 1000

    let id: String
    let key: TaskKey
    let templateId: String
    let category: String?
    let quality: String?
    let batchId: String?
    let resourceConfig: JSONValue?
    /// `resourceConfig` as `CompletionHistory.resourceKey`, for matching history on every read.
    let resourceKey: String?
    let metadata: JSONValue?

    private(set) var stages: ContiguousArray<StageState>
    /// The stage of largest weight, where `progress_update` jumps to from the first stages.
    let mainStage: Int
    private(set) var currentStage = 0
    private(set) var status: TaskStatus = .queued
    private(set) var seq: UInt64 = 0
    let createdAt: Double
    private(set) var updatedAt: Double
    private(set) var startedAt: Double?
    private(set) var completedAt: Double?
    /// The latest time of any change; explicit timestamps may not go before it.
    private(set) var lastTimestamp: Double
    private(set) var error: String?
    private(set) var resources = ResourceUsage()
    private(set) var resourcePeaks = ResourceUsage()
    private(set) var history = Ring<HistoryEvent>(capacity: TaskRecord.historyCapacity)
    private(set) var logs = Ring<LogEntry>(capacity: TaskRecord.logCapacity)
    var counter: CounterBinding?
    /// The current stage's pace, for the ETA.
    private(set) var live = LiveRate()
    /// How each completed stage that reported progress spent its time, for the completion record.
    private(set) var profiles: [Int: StageProfile] = [:]
    /// History keeps at most one progress event per stage per this many seconds (the newest), so a flood
    /// of steps does not push stage changes out of the bounded history.
    let historyCoalesceSeconds: Double
    private var lastKeptProgressTime = -Double.infinity

    /// Creates a task in `queued` state. A first stage named "queue" is entered at once.
    init(id: String, key: TaskKey, templateId: String, category: String?, quality: String?, batchId: String?,
         resourceConfig: JSONValue?, metadata: JSONValue?, stages definitions: [StageDefinition],
         timestamp: Double, historyCoalesceSeconds: Double) {
        self.id = id
        self.key = key
        self.templateId = templateId
        self.category = category
        self.quality = quality
        self.batchId = batchId
        self.resourceConfig = resourceConfig
        self.resourceKey = resourceConfig.map(CompletionHistory.resourceKey)
        self.metadata = metadata
        self.stages = ContiguousArray(definitions.map { StageState(definition: $0) })
        var main = 0
        for (i, d) in definitions.enumerated() where d.weight > definitions[main].weight { main = i }
        self.mainStage = main
        self.createdAt = timestamp
        self.updatedAt = timestamp
        self.lastTimestamp = timestamp
        self.historyCoalesceSeconds = historyCoalesceSeconds
        if isQueueStage(0) {
            stages[0].status = .inProgress
            stages[0].startedAt = timestamp
        }
        recordChange(.created, at: timestamp)
    }

    private func isQueueStage(_ index: Int) -> Bool { index == 0 && stages[0].definition.name == "queue" }

    /// The line a task with a queue stage waits in (`QueueBoard`); nil for tasks without one.
    var queueLine: QueueBoard.Key? {
        isQueueStage(0) ? QueueBoard.Key(template: templateId, resource: resourceKey) : nil
    }

    // MARK: - Time

    /// The time of a change: an explicit timestamp (checked not to go backwards) or the clock's, never
    /// before the task's latest change.
    func resolveTimestamp(explicit: Double?, now: Double) throws -> Double {
        guard let explicit else { return max(now, lastTimestamp) }
        guard explicit.isFinite, explicit >= 0 else {
            throw EngineError.range("timestamp \(explicit) is not a valid epoch time in seconds")
        }
        guard explicit >= lastTimestamp else {
            throw EngineError.range("timestamp \(explicit) is earlier than task \"\(id)\"'s latest change at "
                + "\(lastTimestamp); timestamps of a task must not go backwards")
        }
        return explicit
    }

    private func ensureActive() throws {
        guard !status.isTerminal else {
            throw EngineError.state("task \"\(id)\" is \(status.name) and accepts no further updates")
        }
    }

    // MARK: - Derived values

    /// 100 × Σ weightᵢ × progressᵢ, completed and skipped stages counting 1; kept up to date by every change.
    private(set) var overallProgress = 0.0
    /// Σ weightᵢ × progressᵢ over every stage but the current one, so a step costs one multiply-add.
    private var otherStagesSum = 0.0

    /// Recomputes both sums after a change that may touch any stage.
    private func refreshOverall() {
        var sum = 0.0
        for i in stages.indices where i != currentStage {
            sum += stageContribution(i)
        }
        otherStagesSum = sum
        refreshCurrentStage()
    }

    /// After a change to the current stage only.
    private func refreshCurrentStage() {
        let total = otherStagesSum + stageContribution(currentStage)
        // Rounded to 1e-9 so that hand-computed figures (55.0) come out exactly, not 55.00000000000001.
        overallProgress = min(100, max(0, (100 * total * 1e9).rounded() / 1e9))
    }

    private func stageContribution(_ i: Int) -> Double {
        stages[i].definition.weight * (stages[i].status.countsAsDone ? 1 : stages[i].progress)
    }

    func isExpired(now: Double, retention: Double) -> Bool {
        guard status.isTerminal, let completedAt else { return false }
        return now - completedAt > retention
    }

    // MARK: - Changes

    /// Completes every open stage before `index` and enters `index`.
    private func enterStage(_ index: Int, at ts: Double) {
        for i in 0..<index where stages[i].status.isOpen {
            finishStage(i, as: .completed, at: ts)
        }
        if stages[index].status == .pending {
            stages[index].status = .inProgress
            stages[index].startedAt = ts
        }
        if live.stage != index { live.enter(stage: index) }
        currentStage = index
        if status == .queued && !isQueueStage(index) {
            status = .executing
            startedAt = ts
        }
    }

    private func finishStage(_ index: Int, as final: StageStatus, at ts: Double) {
        if stages[index].startedAt == nil { stages[index].startedAt = ts }
        stages[index].status = final
        stages[index].completedAt = ts
        if final == .completed { stages[index].progress = 1 }
        if final == .completed, live.stage == index, let startedAt = stages[index].startedAt,
           let profile = StageProfile.measured(live, startedAt: startedAt, endedAt: ts) {
            profiles[index] = profile
        }
    }

    private func recordChange(_ type: HistoryType, at ts: Double) {
        if type == .progress { refreshCurrentStage() } else { refreshOverall() }
        seq &+= 1
        updatedAt = ts
        lastTimestamp = ts
        let event = HistoryEvent(seq: seq, timestamp: ts, type: type, stage: currentStage,
                                 progress: stages[currentStage].progress, overallProgress: overallProgress,
                                 status: status, message: stages[currentStage].message)
        if type == .progress {
            // Replace the previous progress event of the same stage inside the coalescing window.
            var replaced = false
            let stage = currentStage, window = ts - lastKeptProgressTime < historyCoalesceSeconds
            history.updateLast { last in
                if window, last.type == .progress, last.stage == stage {
                    last = event
                    replaced = true
                }
            }
            if replaced { return }
            lastKeptProgressTime = ts
        }
        history.append(event)
    }

    /// `progress_update`: the current stage's progress to step / total (moving to the main stage first
    /// while the task is before it).
    func applyStep(step: Int64, total: Int64, message: MessageArgument, at ts: Double) throws {
        try ensureActive()
        guard total > 0, step >= 0, step <= total else {
            throw EngineError.range("step \(step) of total_steps \(total) is out of range; "
                + "need total_steps > 0 and 0 <= step <= total_steps")
        }
        let target = currentStage < mainStage ? mainStage : currentStage
        guard stages[target].status.isOpen else {
            throw EngineError.state("stage \(target) (\"\(stages[target].definition.name)\") of task \"\(id)\" is "
                + "\(stages[target].status.name); enter the next stage before reporting steps")
        }
        let newMessage = try message.resolve(current: stages[target].message)
        let entering = target != currentStage || stages[target].status == .pending
        if entering { enterStage(target, at: ts) }
        stages[target].progress = Double(step) / Double(total)
        live.note(progress: stages[target].progress, steps: total, at: ts)
        if let newMessage { stages[target].message = newMessage }
        if entering { refreshOverall() }
        recordChange(.progress, at: ts)
    }

    /// `progress_stage_update`.
    func updateStage(_ index: Int, status newStatus: StageStatus, progress: Double, message: MessageArgument,
                     at ts: Double) throws {
        try ensureActive()
        guard index >= 0, index < stages.count else {
            throw EngineError.range("stage \(index) is out of range; task \"\(id)\" has stages 0...\(stages.count - 1)")
        }
        guard progress.isFinite, progress >= 0, progress <= 1 else {
            throw EngineError.range("progress \(progress) is out of range; it must be a number within 0...1")
        }
        let newMessage = try message.resolve(current: stages[index].message)
        let name = stages[index].definition.name
        switch newStatus {
        case .pending:
            throw EngineError.invalidArgument("a stage cannot be set back to pending; stages only move forward")
        case .inProgress:
            guard stages[index].status.isOpen else {
                throw EngineError.state("stage \(index) (\"\(name)\") of task \"\(id)\" is already "
                    + "\(stages[index].status.name); stages only move forward")
            }
            enterStage(index, at: ts)
            stages[index].progress = progress
            // Entering a stage names no progress (0); only real progress measures its pace.
            if progress > 0 { live.note(progress: progress, steps: 0, at: ts) }
        case .completed, .skipped:
            guard stages[index].status.isOpen else {
                throw EngineError.state("stage \(index) (\"\(name)\") of task \"\(id)\" is already \(stages[index].status.name)")
            }
            if index > currentStage { enterStage(index, at: ts) }
            finishStage(index, as: newStatus, at: ts)
        case .failed:
            if index > currentStage { enterStage(index, at: ts) }
            if let newMessage { stages[index].message = newMessage }
            fail(error: stages[index].message ?? "stage \(name) failed", stageIndex: index, at: ts)
            return
        }
        if let newMessage { stages[index].message = newMessage }
        recordChange(.stage, at: ts)
    }

    /// Enters the stage named `name` (a runner event named after a stage).
    func enterStage(named name: String, progress: Double?, message: MessageArgument, at ts: Double) throws {
        guard let index = stages.firstIndex(where: { $0.definition.name == name }) else {
            throw EngineError.invalidArgument("task \"\(id)\" has no stage \"\(name)\"")
        }
        try updateStage(index, status: .inProgress, progress: progress ?? stages[index].progress, message: message, at: ts)
    }

    func complete(at ts: Double) throws {
        try ensureActive()
        for i in stages.indices where stages[i].status.isOpen {
            finishStage(i, as: .completed, at: ts)
        }
        currentStage = stages.count - 1
        if startedAt == nil { startedAt = ts }
        status = .completed
        completedAt = ts
        recordChange(.completed, at: ts)
    }

    func fail(error message: String?, at ts: Double) throws {
        try ensureActive()
        fail(error: message ?? "unknown error", stageIndex: currentStage, at: ts)
    }

    private func fail(error message: String, stageIndex: Int, at ts: Double) {
        if stages[stageIndex].status.isOpen { finishStage(stageIndex, as: .failed, at: ts) }
        currentStage = stageIndex
        status = .failed
        error = message
        completedAt = ts
        recordChange(.failed, at: ts)
    }

    func cancel(reason: String?, at ts: Double) throws {
        try ensureActive()
        status = .cancelled
        error = reason
        completedAt = ts
        recordChange(.cancelled, at: ts)
    }

    /// A restarted runner reopened the task (`resume`); recorded so watchers see it.
    func markResumed(at ts: Double) {
        recordChange(.resumed, at: ts)
    }

    func setResources(_ usage: ResourceUsage, at ts: Double) throws {
        try ensureActive()
        func merge(_ new: Double?, _ current: inout Double?, _ peak: inout Double?) {
            guard let new else { return }
            current = new
            peak = max(peak ?? new, new)
        }
        merge(usage.cpuPercent, &resources.cpuPercent, &resourcePeaks.cpuPercent)
        merge(usage.memoryMB, &resources.memoryMB, &resourcePeaks.memoryMB)
        merge(usage.gpuPercent, &resources.gpuPercent, &resourcePeaks.gpuPercent)
        merge(usage.gpuMemoryMB, &resources.gpuMemoryMB, &resourcePeaks.gpuMemoryMB)
        recordChange(.resources, at: ts)
    }

    /// Appends to the log. Logs are accepted for finished tasks too (a runner's last words).
    func log(_ level: LogLevel, _ message: String, at ts: Double) {
        logs.append(LogEntry(timestamp: ts, level: level, message: message, stage: currentStage))
        lastTimestamp = max(lastTimestamp, ts)
    }

    /// Per-stage durations of a completed task, for the ETA history.
    var stageDurations: [(Int, Double)] {
        stages.indices.compactMap { i in stages[i].duration.map { (i, $0) } }
    }
}
