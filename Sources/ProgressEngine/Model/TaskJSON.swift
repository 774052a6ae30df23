/// A consistent copy of a task's state, taken under the shard lock in a few copies and reference-count bumps,
/// so that encoding it (microseconds) happens after the lock is released.
struct TaskSnapshot: Sendable {
    let id: String
    let templateId: String
    let category: String?
    let quality: String?
    let batchId: String?
    private(set) var status: TaskStatus
    private(set) var currentStage: Int
    private(set) var stages: ContiguousArray<StageState>
    private(set) var overallProgress: Double
    private(set) var resources: ResourceUsage
    let resourcePeaks: ResourceUsage
    private(set) var seq: UInt64
    let createdAt: Double
    private(set) var updatedAt: Double
    private(set) var startedAt: Double?
    private(set) var completedAt: Double?
    private(set) var error: String?
    private(set) var previewURL: String?
    /// Kept once recorded; `cancelPending` says whether it still stands.
    var cancelRequest: CancelRequest?
    let metadata: JSONValue?
    let resourceConfig: JSONValue?
    let resourceKey: String?
    let queueLine: QueueBoard.Key?
    let live: LiveRate
    /// Filled in by `EngineCore.estimate` once the shard lock is released; nil until then and when unknown.
    var eta: ETAEstimate?

    init(_ task: TaskRecord) {
        id = task.id
        templateId = task.templateId
        category = task.category
        quality = task.quality
        batchId = task.batchId
        status = task.status
        currentStage = task.currentStage
        stages = task.stages
        overallProgress = task.overallProgress
        resources = task.resources
        resourcePeaks = task.resourcePeaks
        seq = task.seq
        createdAt = task.createdAt
        updatedAt = task.updatedAt
        startedAt = task.startedAt
        completedAt = task.completedAt
        error = task.error
        previewURL = task.previewURL
        cancelRequest = task.cancelRequest
        metadata = task.metadata
        resourceConfig = task.resourceConfig
        resourceKey = task.resourceKey
        queueLine = task.queueLine
        live = task.live
    }

    /// A task's state as storage holds it (`StoredTask.parse`): what TaskProgress carries. What only a live record
    /// has (its queue line, its live step rate, the ETA) is empty; `TaskRecord(restoring:)` rebuilds the rest.
    init(id: String, templateId: String, category: String?, quality: String?, batchId: String?, status: TaskStatus,
         currentStage: Int, stages: ContiguousArray<StageState>, overallProgress: Double, resources: ResourceUsage,
         resourcePeaks: ResourceUsage, seq: UInt64, createdAt: Double, updatedAt: Double, startedAt: Double?,
         completedAt: Double?, error: String?, previewURL: String?, metadata: JSONValue?, resourceConfig: JSONValue?,
         cancelRequest: CancelRequest?) {
        self.id = id
        self.templateId = templateId
        self.category = category
        self.quality = quality
        self.batchId = batchId
        self.status = status
        self.currentStage = currentStage
        self.stages = stages
        self.overallProgress = overallProgress
        self.resources = resources
        self.resourcePeaks = resourcePeaks
        self.seq = seq
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.error = error
        self.previewURL = previewURL
        self.metadata = metadata
        self.resourceConfig = resourceConfig
        self.cancelRequest = cancelRequest
        resourceKey = resourceConfig.map(CompletionHistory.resourceKey)
        queueLine = nil
        live = LiveRate()
    }

    /// The task as it stood at its history event `e`, for a replay on `resume` (SPEC §7: every `progress.update`
    /// carries a TaskProgress): what the event records (seq, time, status, current stage with its progress and
    /// message, overall progress); the stages before it as they finished (stages only move forward) and those
    /// after it not started yet; null for what the history does not record (ETA, resource usage, preview).
    func asOf(_ e: HistoryEvent) -> TaskSnapshot {
        var s = self
        s.seq = e.seq
        s.updatedAt = e.timestamp
        s.status = e.status
        s.currentStage = min(max(e.stage, 0), stages.count - 1)
        s.overallProgress = e.overallProgress
        s.resources = ResourceUsage()
        s.previewURL = nil
        s.eta = nil
        if e.status == .queued { s.startedAt = nil }
        if !e.status.isTerminal { s.completedAt = nil }
        if e.status != .failed { s.error = nil }
        if let request = s.cancelRequest, e.seq < request.seq { s.cancelRequest = nil }
        for i in s.stages.indices where i >= s.currentStage {
            if i > s.currentStage {
                s.stages[i].status = .pending
                s.stages[i].progress = 0
                s.stages[i].startedAt = nil
                s.stages[i].completedAt = nil
                s.stages[i].message = nil
                continue
            }
            // The event's own stage: finished by then only if it finished at the event or before (by seq when
            // known; a step's time may equal the event before it).
            let stage = s.stages[i]
            let finished = stage.completedAt.map { stage.completedSeq != 0 ? stage.completedSeq <= e.seq : $0 <= e.timestamp }
            if finished != true {
                s.stages[i].completedAt = nil
                s.stages[i].status = e.status == .queued || e.type == .created ? .pending : .inProgress
            }
            if let started = s.stages[i].startedAt, started > e.timestamp { s.stages[i].startedAt = nil }
            s.stages[i].progress = e.progress
            s.stages[i].message = e.message
        }
        return s
    }

    /// A cancel request stands: recorded, and the task has not finished (`cancel_requested`).
    var cancelPending: Bool { cancelRequest != nil && !status.isTerminal }

    /// The predicted completion as epoch seconds: completed_at once completed, else updated_at + eta_seconds.
    var etaTime: Double? {
        guard let eta else { return nil }
        return status == .completed ? completedAt : updatedAt + eta.seconds
    }
}

/// The TaskProgress document (SPEC §6): the seed's fields plus the engine's own; every key always present,
/// null where unknown, so clients can rely on one shape.
enum TaskJSON {
    static func write(_ task: TaskSnapshot, to w: inout JSONWriter) {
        w.beginObject()
        writeMembers(task, to: &w)
        w.endObject()
    }

    /// The document's members, for a writer that adds members of its own (the stored form's `stored_times`).
    static func writeMembers(_ task: TaskSnapshot, to w: inout JSONWriter) {
        w.key("task_id"); w.string(task.id)
        w.key("template_id"); w.string(task.templateId)
        w.key("template_category"); w.string(task.category)
        w.key("quality"); w.string(task.quality)
        w.key("batch_id"); w.string(task.batchId)
        w.key("status"); w.string(task.status.name)
        w.key("current_stage"); w.integer(task.currentStage)
        w.key("total_stages"); w.integer(task.stages.count)
        w.key("overall_progress"); w.number(task.overallProgress)
        // eta_seconds counts from the latest event (updated_at), so the estimate stays a pure function of the
        // task's events and replays give the same figures as live runs.
        w.key("eta"); w.timestamp(task.etaTime)
        w.key("eta_seconds"); w.number(task.eta?.seconds)
        w.key("eta_confidence"); w.number(task.eta?.confidence)
        w.key("preview_url"); w.string(task.previewURL)
        w.key("stages"); w.beginObject()
        for (index, stage) in task.stages.enumerated() {
            w.key(String(index)); w.beginObject()
            w.key("name"); w.string(stage.definition.name)
            w.key("description"); w.string(stage.definition.description)
            w.key("weight"); w.number(stage.definition.weight)
            w.key("status"); w.string(stage.status.name)
            w.key("progress"); w.number(stage.progress)
            w.key("duration"); w.number(stage.duration)
            w.key("message"); w.string(stage.message)
            w.key("started_at"); w.timestamp(stage.startedAt)
            w.key("completed_at"); w.timestamp(stage.completedAt)
            w.endObject()
        }
        w.endObject()
        w.key("resource_usage"); writeUsage(task.resources, to: &w)
        w.key("resource_peaks"); writeUsage(task.resourcePeaks, to: &w)
        w.key("seq"); w.integer(task.seq)
        w.key("created_at"); w.timestamp(task.createdAt)
        w.key("updated_at"); w.timestamp(task.updatedAt)
        w.key("started_at"); w.timestamp(task.startedAt)
        w.key("completed_at"); w.timestamp(task.completedAt)
        w.key("error"); w.string(task.error)
        w.key("cancel_requested"); w.bool(task.cancelPending)
        w.key("cancel_reason"); w.string(task.cancelPending ? task.cancelRequest?.reason : nil)
        w.key("metadata"); w.value(task.metadata ?? .null)
        w.key("resource_config"); w.value(task.resourceConfig ?? .null)
    }

    private static func writeUsage(_ u: ResourceUsage, to w: inout JSONWriter) {
        w.beginObject()
        w.key("cpu_percent"); w.number(u.cpuPercent)
        w.key("memory_mb"); w.number(u.memoryMB)
        w.key("gpu_percent"); w.number(u.gpuPercent)
        w.key("gpu_memory_mb"); w.number(u.gpuMemoryMB)
        w.endObject()
    }
}

/// The two spellings of a history event or a log entry, written by one function each so their field lists
/// cannot drift apart: the API's (REST, WebSocket: ISO-8601 times, SPEC names) and storage's (Redis and the
/// update channel: epoch seconds, so nothing is lost to ISO-8601's milliseconds; read by `StoredEvents`).
enum RecordForm {
    case api
    case stored
}

extension JSONWriter {
    fileprivate mutating func time(_ epoch: Double, _ form: RecordForm) {
        switch form {
        case .api: key("timestamp"); timestamp(epoch)
        case .stored: key("ts"); number(epoch)
        }
    }
}

extension HistoryEvent {
    /// api: {seq, timestamp, type, stage, progress, overall_progress, status, message};
    /// stored: the same with `ts` and `overall`.
    func write(to w: inout JSONWriter, form: RecordForm) {
        w.beginObject()
        w.key("seq"); w.integer(seq)
        w.time(timestamp, form)
        w.key("type"); w.string(type.name)
        w.key("stage"); w.integer(stage)
        w.key("progress"); w.number(progress)
        w.key(form == .api ? "overall_progress" : "overall"); w.number(overallProgress)
        w.key("status"); w.string(status.name)
        w.key("message"); w.string(message)
        w.endObject()
    }
}

extension LogEntry {
    /// api (REST `logs`, WebSocket `task.log`): {timestamp, level, message, stage}; stored: `ts` for `timestamp`.
    func write(to w: inout JSONWriter, form: RecordForm = .api) {
        w.beginObject()
        w.time(timestamp, form)
        w.key("level"); w.string(level.name)
        w.key("message"); w.string(message)
        w.key("stage"); w.integer(stage)
        w.endObject()
    }
}
