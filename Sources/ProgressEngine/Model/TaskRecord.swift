import Glibc
import CProgress

/// The full live state of one task. Not thread-safe by itself: every access happens under the lock of the
/// task table shard that holds it (hence `@unchecked Sendable`: the shard lock is the synchronisation).
/// For the same reason its stored variables are `@exclusivity(unchecked)`: the lock already makes each access
/// exclusive, and the runtime's check on every access cost more than the rest of an update
/// (benchmarks/c/README.md).
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

    @exclusivity(unchecked) private(set) var stages: ContiguousArray<StageState>
    /// The stage of largest weight, where `progress_update` jumps to from the first stages.
    let mainStage: Int
    @exclusivity(unchecked) private(set) var currentStage = 0
    @exclusivity(unchecked) private(set) var status: TaskStatus = .queued
    @exclusivity(unchecked) private(set) var seq: UInt64 = 0
    let createdAt: Double
    @exclusivity(unchecked) private(set) var updatedAt: Double
    @exclusivity(unchecked) private(set) var startedAt: Double?
    @exclusivity(unchecked) private(set) var completedAt: Double?
    /// The latest time of any change; explicit timestamps may not go before it.
    @exclusivity(unchecked) private(set) var lastTimestamp: Double
    @exclusivity(unchecked) private(set) var error: String?
    @exclusivity(unchecked) private(set) var resources = ResourceUsage()
    @exclusivity(unchecked) private(set) var resourcePeaks = ResourceUsage()
    /// Fields the runner reported itself; the sampler leaves those alone.
    @exclusivity(unchecked) private var runnerReported = ResourceUsage()
    /// The step of the latest progress update (a video task's frame index).
    @exclusivity(unchecked) private(set) var lastStep: Int64 = 0
    @exclusivity(unchecked) private(set) var previewURL: String?
    /// Preview files of this task, deleted when it expires.
    @exclusivity(unchecked) private(set) var previewFiles: [String] = []
    /// How many of the configured milestones already have their preview, and the step of the latest one taken by
    /// step multiples: written only by `previewDue` (TaskPreview.swift).
    @exclusivity(unchecked) var capturedMilestones = 0
    @exclusivity(unchecked) var lastPreviewStep: Int64 = -1
    @exclusivity(unchecked) private(set) var history = Ring<HistoryEvent>(capacity: TaskRecord.historyCapacity)
    @exclusivity(unchecked) private(set) var logs = Ring<LogEntry>(capacity: TaskRecord.logCapacity)
    @exclusivity(unchecked) var counter: CounterBinding?
    /// A request that the runner stop (`CancelRequest`), kept once recorded; pending until the task finishes.
    @exclusivity(unchecked) var cancelRequest: CancelRequest?
    /// Whether the latest change must reach watchers without throttling (SPEC §7: the task's creation, a stage
    /// change, a terminal state, a resume; and a cancel request). Progress within a stage, resource usage and a new
    /// preview wait for the throttle like a step; the latest state still goes out when its window ends.
    @exclusivity(unchecked) private(set) var lastChangeUrgent = false
    /// The task's place in the listener's and the Redis writer's feeds (`ChangeFeed`), guarded by the shard lock.
    @exclusivity(unchecked) var fanoutSlot = FeedSlot()
    @exclusivity(unchecked) var storageSlot = FeedSlot()
    /// The state right after the latest urgent change the listener has not taken yet, and earlier such states a
    /// newer urgent change came after before the listener took them (shard lock). Each of these is sent, in order:
    /// SPEC §7, stage changes and terminal states are never coalesced away. Few: stages only move forward.
    @exclusivity(unchecked) var urgentState: TaskSnapshot?
    @exclusivity(unchecked) var heldUrgent: [TaskSnapshot] = []
    /// Rejected updates of this task are logged in its log at most once a second (shard lock).
    @exclusivity(unchecked) var rejectLog = OncePerSecond()
    /// Redis holds the events up to this seq and this many of the log's entries (acknowledged writes).
    @exclusivity(unchecked) var persistedSeq: UInt64 = 0
    @exclusivity(unchecked) var persistedLogs = 0
    /// Being written again after a Redis restart lost its writes (`EngineStorage.writeAgain`), until acknowledged.
    @exclusivity(unchecked) var writtenAgain = false
    /// A copy of another engine's task, kept current from the update channel; never written back.
    @exclusivity(unchecked) var isMirror = false
    /// Another engine's task this engine failed as lost (`failLostWorker`): if Redis refuses that write, the worker
    /// was alive and what it stored stands (`EngineStorage.reclaim`).
    @exclusivity(unchecked) var takenOver = false
    /// History in memory is not complete up to this seq (a restored task, a mirror that missed updates), so a
    /// resume from before it is answered from Redis or not at all.
    @exclusivity(unchecked) var historyGapSeq: UInt64 = 0
    /// The current stage's pace, for the ETA.
    @exclusivity(unchecked) private(set) var live = LiveRate()
    /// How each completed stage that reported progress spent its time, for the completion record.
    @exclusivity(unchecked) private(set) var profiles: [Int: StageProfile] = [:]

    /// Creates a task in `queued` state. A first stage named "queue" is entered at once.
    init(id: String, key: TaskKey, templateId: String, category: String?, quality: String?, batchId: String?,
         resourceConfig: JSONValue?, metadata: JSONValue?, stages definitions: [StageDefinition],
         timestamp: Double) {
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
        if isQueueStage(0) {
            stages[0].status = .inProgress
            stages[0].startedAt = timestamp
        }
        recordChange(.created, at: timestamp)
    }

    private func isQueueStage(_ index: Int) -> Bool { index == 0 && stages[0].definition.name == "queue" }

    /// The line a task with a queue stage waits in (`QueueBoard`); nil for tasks without one.
    var queueLine: QueueBoard.Key? {
        isQueueStage(0) ? QueueBoard.Key(template: IdKey(templateId), resource: resourceKey) : nil
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

    @inline(__always)
    private func ensureActive() throws {
        if status.isTerminal { throw finishedError() }
    }

    @inline(never)
    private func finishedError() -> EngineError {
        EngineError.state("task \"\(id)\" is \(status.name) and accepts no further updates")
    }

    // MARK: - Derived values

    /// 100 × Σ weightᵢ × progressᵢ, completed and skipped stages counting 1; kept up to date by every change.
    private(set) var overallProgress = 0.0
    /// Σ weightᵢ × progressᵢ over every stage but the current one, so a step costs one multiply-add.
    private var otherStagesSum = 0.0
    private static let roundingBias = 6_755_399_441_055_744.0  // 1.5 x 2^52

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
        // Rounded to 1e-9 so that hand-computed figures (55.0) come out exactly, not 55.00000000000001. Adding and
        // subtracting 1.5 x 2^52 rounds to the nearest integer (ties to even) in two additions: the scaled value
        // is at most 1e11, far below 2^51, and `rounded()` is a call into libm on baseline x86-64 (2 % of an update).
        let scaled = 100 * total * 1e9
        overallProgress = min(100, max(0, ((scaled + TaskRecord.roundingBias) - TaskRecord.roundingBias) / 1e9))
    }

    @inline(__always)
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
        // The change being made is the next event.
        stages[index].completedSeq = seq &+ 1
        if final == .completed { stages[index].progress = 1 }
        if final == .completed, live.stage == index, let startedAt = stages[index].startedAt,
           let profile = StageProfile.measured(live, startedAt: startedAt, endedAt: ts) {
            profiles[index] = profile
        }
    }

    /// - Parameter stageChanged: the change moved the task to another stage or changed a stage's status (urgent
    ///   for watchers). Creation, terminal states and a resume are urgent by their type.
    private func recordChange(_ type: HistoryType, at ts: Double, stageChanged: Bool = false) {
        if type == .progress { refreshCurrentStage() } else { refreshOverall() }
        lastChangeUrgent = type.waitsForThrottle || type == .stage ? stageChanged : true
        seq &+= 1
        updatedAt = ts
        lastTimestamp = ts
        let event = HistoryEvent(seq: seq, timestamp: ts, type: type, stage: currentStage,
                                 progress: stages[currentStage].progress, overallProgress: overallProgress,
                                 status: status, message: stages[currentStage].message)
        if type == .resources {
            // Sampled every resource_interval_ms: only the latest of a run of samples stays in history.
            var replaced = false
            history.updateLast { last in
                if last.type == .resources {
                    last = event
                    replaced = true
                }
            }
            if replaced { return }
        }
        history.append(event)
    }

    /// `progress_update`: the current stage's progress to step / total (moving to the main stage first
    /// while the task is before it). `minSpan`: the shortest interval of the live pace (`LiveRate.note`).
    func applyStep(step: Int64, total: Int64, message: MessageArgument, at ts: Double, minSpan: Double = 0) throws {
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
        // Without a message the current one is not even read (reading it retains it).
        let newMessage: String?
        if case .none = message { newMessage = nil } else { newMessage = try message.resolve(current: stages[target].message) }
        let entering = target != currentStage || stages[target].status == .pending
        if entering { enterStage(target, at: ts) }
        stages[target].progress = Double(step) / Double(total)
        lastStep = step
        live.note(progress: stages[target].progress, steps: total, at: ts, minSpan: minSpan)
        if let newMessage { stages[target].message = newMessage }
        if entering { refreshOverall() }
        recordChange(.progress, at: ts, stageChanged: entering)
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
        let (statusBefore, currentBefore) = (stages[index].status, currentStage)
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
            // The error is the message passed (now the stage's message), else "stage NAME failed"; never the
            // stage's last progress text.
            let error: String
            if case .none = message { error = "stage \(name) failed" } else { error = stages[index].message ?? "" }
            fail(error: error, stageIndex: index, at: ts)
            return
        }
        if let newMessage { stages[index].message = newMessage }
        // Progress or a message within the stage the task is in is not a stage change: throttled like a step.
        recordChange(.stage, at: ts, stageChanged: stages[index].status != statusBefore || currentStage != currentBefore)
    }

    /// Enters the stage named `name` (a runner event named after a stage), noting the runner's `variant` of it.
    func enterStage(named name: String, progress: Double?, message: MessageArgument, variant: String? = nil,
                    at ts: Double) throws {
        guard let index = stages.firstIndex(where: { $0.definition.name == name }) else {
            throw EngineError.invalidArgument("task \"\(id)\" has no stage \"\(name)\"")
        }
        try updateStage(index, status: .inProgress, progress: progress ?? stages[index].progress, message: message, at: ts)
        if let variant { stages[index].variant = variant }
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

    /// Records a cancel request; urgent for watchers, by its type. - Returns: false when one was recorded already.
    /// - Throws: `.state` for a finished task.
    func requestCancel(reason: String?, at ts: Double) throws -> Bool {
        try ensureActive()
        guard cancelRequest == nil else { return false }
        cancelRequest = CancelRequest(reason: reason, seq: seq &+ 1, requestedAt: ts)
        recordChange(.cancelRequested, at: ts)
        return true
    }

    /// A restarted runner reopened the task (`resume`); recorded so watchers see it.
    func markResumed(at ts: Double) {
        recordChange(.resumed, at: ts)
    }

    /// Goes on past `storedSeq`, another engine's state of this task in Redis (`EngineCore.reclaim`): the next event
    /// is a "resumed" one, or, for a finished task, its terminal event again.
    func reclaim(after storedSeq: UInt64, at ts: Double) {
        seq = max(seq, storedSeq)
        switch status {
        case .completed: recordChange(.completed, at: ts)
        case .failed: recordChange(.failed, at: ts)
        case .cancelled: recordChange(.cancelled, at: ts)
        case .queued, .executing: recordChange(.resumed, at: ts)
        }
    }

    /// Resource figures: from the runner (`fromRunner`, they take precedence from then on) or the sampler
    /// (only the fields the runner never reported). Peaks are kept.
    func setResources(_ usage: ResourceUsage, fromRunner: Bool, at ts: Double) throws {
        try ensureActive()
        var changed = false
        func merge(_ new: Double?, _ current: inout Double?, _ peak: inout Double?, _ reported: inout Double?) {
            guard let new, fromRunner || reported == nil else { return }
            if fromRunner { reported = new }
            changed = changed || current != new
            current = new
            peak = max(peak ?? new, new)
        }
        merge(usage.cpuPercent, &resources.cpuPercent, &resourcePeaks.cpuPercent, &runnerReported.cpuPercent)
        merge(usage.memoryMB, &resources.memoryMB, &resourcePeaks.memoryMB, &runnerReported.memoryMB)
        merge(usage.gpuPercent, &resources.gpuPercent, &resourcePeaks.gpuPercent, &runnerReported.gpuPercent)
        merge(usage.gpuMemoryMB, &resources.gpuMemoryMB, &resourcePeaks.gpuMemoryMB, &runnerReported.gpuMemoryMB)
        if changed { recordChange(.resources, at: ts) }
    }

    /// A preview file was written.
    func setPreview(file: String, url: String, at ts: Double) {
        previewFiles.append(file)
        previewURL = url
        recordChange(.preview, at: ts)
    }

    /// Appends to the log. Logs are accepted for finished tasks too (a runner's last words).
    /// - Returns: the entry, for watchers.
    /// - Parameter advancesTime: false for the engine's own entries (a rejected update), which must not move the
    ///   task's time past what a runner replaying with explicit timestamps reports next.
    @discardableResult
    func log(_ level: LogLevel, _ message: String, at ts: Double, advancesTime: Bool = true) -> LogEntry {
        let entry = LogEntry(timestamp: ts, level: level, message: message, stage: currentStage)
        logs.append(entry)
        if advancesTime { lastTimestamp = max(lastTimestamp, ts) }
        return entry
    }

    /// Per-stage durations of a completed task, for the ETA history.
    var stageDurations: [(Int, Double)] {
        stages.indices.compactMap { i in stages[i].duration.map { (i, $0) } }
    }

    /// Keeps the next heap object (often another task) off this one's last cache line: its header holds the
    /// reference count that every update of *that* task writes, and the fields above are written by every
    /// update of this one. Measured: two threads on two adjacent tasks ran 2x slower without it. Declared
    /// last, so it is laid out last.
    private let trailingPadding: (Int64, Int64, Int64, Int64, Int64, Int64, Int64, Int64) = (0, 0, 0, 0, 0, 0, 0, 0)
}

// MARK: - Restoring from storage

extension TaskRecord {
    /// A task rebuilt from what Redis holds (a restarted runner's task, another engine's task). It keeps its
    /// seq, so watchers see no regression; its history and log start empty (Redis has the earlier ones).
    convenience init(restoring stored: TaskSnapshot) {
        self.init(id: stored.id, key: TaskKey(owning: stored.id), templateId: stored.templateId,
                  category: stored.category, quality: stored.quality, batchId: stored.batchId,
                  resourceConfig: stored.resourceConfig, metadata: stored.metadata,
                  stages: stored.stages.map(\.definition), timestamp: stored.createdAt)
        history = Ring(capacity: TaskRecord.historyCapacity)
        restore(from: stored)
        persistedSeq = stored.seq
        historyGapSeq = stored.seq
    }

    /// Takes every changing field from `stored` (identity fields are the task's own).
    func restore(from stored: TaskSnapshot) {
        stages = ContiguousArray(stored.stages)
        currentStage = min(max(0, stored.currentStage), stages.count - 1)
        status = stored.status
        seq = stored.seq
        updatedAt = stored.updatedAt
        startedAt = stored.startedAt
        completedAt = stored.completedAt
        lastTimestamp = max(lastTimestamp, stored.updatedAt)
        error = stored.error
        previewURL = stored.previewURL
        resources = stored.resources
        resourcePeaks = stored.resourcePeaks
        cancelRequest = CancelRequest(restoring: stored, keeping: cancelRequest)
        refreshOverall()
        lastChangeUrgent = true
    }

    /// A mirror's newer state from the update channel, with the events that led to it.
    /// - Returns: whether anything was newer than what the mirror had.
    func applyRemote(_ stored: TaskSnapshot, events: [HistoryEvent]) -> Bool {
        guard stored.seq > seq else { return false }
        let urgent = stored.status != status || stored.currentStage != currentStage
            || events.contains { !$0.type.waitsForThrottle }
        appendRemoteHistory(events.filter { $0.seq <= stored.seq })
        restore(from: stored)
        if let e = events.last(where: { $0.type == .cancelRequested }) { cancelRequest?.seq = e.seq }
        lastChangeUrgent = urgent
        return true
    }

    /// Appends another engine's events that are newer than the history's newest.
    func appendRemoteHistory(_ events: [HistoryEvent]) {
        var last = history.last?.seq ?? 0
        for e in events where e.seq > last {
            history.append(e)
            last = e.seq
        }
    }

    /// Appends log entries received from another engine (not counted as this engine's to write).
    func appendRemoteLog(_ entry: LogEntry) {
        logs.append(entry)
        persistedLogs = logs.appended
    }
}
