/// The state of one task, as the listener sends it in `progress.update` (the TaskProgress document of
/// docs and the header), as Swift values. Times are seconds since 1970 (UTC); `nil` where unknown.
public struct TaskProgress: Sendable, Equatable {
    /// Where a task is in its life.
    public enum Status: String, Sendable, CaseIterable {
        case queued, executing, completed, failed, cancelled

        /// Completed, failed or cancelled: the task changes no more.
        public var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }
    }

    /// Where a stage is.
    public enum StageStatus: String, Sendable, CaseIterable {
        case pending, inProgress = "in_progress", completed, failed, skipped
    }

    /// One stage of the task's template.
    public struct Stage: Sendable, Equatable {
        public let name: String
        public let description: String
        /// Share of the task's overall progress; the weights of a task's stages sum to 1.
        public let weight: Double
        public let status: StageStatus
        /// 0...1.
        public let progress: Double
        /// Seconds from entering to finishing the stage; nil until it finished.
        public let duration: Double?
        public let message: String?
        public let startedAt: Double?
        public let completedAt: Double?
    }

    /// Process CPU %, resident memory and GPU figures; nil for what was never sampled or reported.
    public struct ResourceUsage: Sendable, Equatable {
        public let cpuPercent: Double?
        public let memoryMB: Double?
        public let gpuPercent: Double?
        public let gpuMemoryMB: Double?
    }

    public let taskID: String
    public let templateID: String
    public let category: String?
    public let quality: String?
    public let batchID: String?
    public let status: Status
    /// Index into `stages`.
    public let currentStage: Int
    public let stages: [Stage]
    /// 0...100.
    public let overallProgress: Double
    /// The predicted completion time; `completedAt` once completed.
    public let eta: Double?
    /// Seconds from `updatedAt` to the predicted completion.
    public let etaSeconds: Double?
    /// 0...1: how far the prediction can be trusted.
    public let etaConfidence: Double?
    /// The latest preview's path on the listener (`/api/v1/previews/...`, with `?task_id=` when previews are shared
    /// through Redis), nil before the first.
    public let previewURL: String?
    public let resourceUsage: ResourceUsage
    public let resourcePeaks: ResourceUsage
    /// Increases with every change of the task; a host forwarding updates can drop any it has seen.
    public let seq: UInt64
    public let createdAt: Double
    public let updatedAt: Double
    public let startedAt: Double?
    public let completedAt: Double?
    /// Why the task failed or was cancelled.
    public let error: String?
    /// Someone asked the runner to stop and the task has not finished yet; `cancelReason` is why, when given.
    public let cancelRequested: Bool
    public let cancelReason: String?
    /// The task's `metadata` and `resource_config` as given at creation, as JSON text (they are the host's own
    /// documents), nil when none was given.
    public let metadataJSON: String?
    public let resourceConfigJSON: String?

    init(_ s: TaskSnapshot) {
        taskID = s.id
        templateID = s.templateId
        category = s.category
        quality = s.quality
        batchID = s.batchId
        status = Status(s.status)
        currentStage = s.currentStage
        stages = s.stages.map { stage in
            Stage(name: stage.definition.name, description: stage.definition.description,
                  weight: stage.definition.weight, status: StageStatus(stage.status), progress: stage.progress,
                  duration: stage.duration, message: stage.message, startedAt: stage.startedAt,
                  completedAt: stage.completedAt)
        }
        overallProgress = s.overallProgress
        eta = s.etaTime
        etaSeconds = s.eta?.seconds
        etaConfidence = s.eta?.confidence
        previewURL = s.previewURL
        resourceUsage = ResourceUsage(s.resources)
        resourcePeaks = ResourceUsage(s.resourcePeaks)
        seq = s.seq
        createdAt = s.createdAt
        updatedAt = s.updatedAt
        startedAt = s.startedAt
        completedAt = s.completedAt
        error = s.error
        cancelRequested = s.cancelPending
        cancelReason = s.cancelPending ? s.cancelRequest?.reason : nil
        metadataJSON = s.metadata.map(TaskProgress.json)
        resourceConfigJSON = s.resourceConfig.map(TaskProgress.json)
    }

    private static func json(_ value: JSONValue) -> String {
        var w = JSONWriter()
        w.value(value)
        return w.output
    }
}

/// A batch's tasks and totals (`GET /api/v1/progress/batch/{id}`), as Swift values.
public struct BatchProgress: Sendable, Equatable {
    public let batchID: String
    /// The tasks found, in the batch's creation order.
    public let tasks: [TaskProgress]
    /// Ids asked for (or recorded as members) that are not known (never created, or expired).
    public let missing: [String]
    /// How many of `tasks` are in each status (every status present, 0 included).
    public let counts: [TaskProgress.Status: Int]
    /// The mean of the tasks' overall progress, 0...100 (0 for no task).
    public let overallProgress: Double
    /// When the batch's last task is predicted to finish; nil when one of the tasks that will finish has no
    /// ETA. Failed and cancelled tasks never finish and do not count.
    public let eta: Double?

    init(batchID: String, found: [TaskSnapshot], missing: [String]) {
        self.batchID = batchID
        tasks = found.map(TaskProgress.init)
        self.missing = missing
        let summary = BatchSummary(found)
        counts = Dictionary(uniqueKeysWithValues: TaskStatus.all.map { (TaskProgress.Status($0), summary.counts[$0] ?? 0) })
        overallProgress = summary.overallProgress
        eta = summary.eta
    }
}

/// The totals of a batch that its JSON and `BatchProgress` both show, computed in one place.
struct BatchSummary {
    /// Tasks per status (a status none is in is absent).
    let counts: [TaskStatus: Int]
    let overallProgress: Double
    let eta: Double?

    init(_ found: [TaskSnapshot]) {
        var counts: [TaskStatus: Int] = [:]
        for task in found { counts[task.status, default: 0] += 1 }
        self.counts = counts
        overallProgress = found.isEmpty ? 0 : found.map(\.overallProgress).reduce(0, +) / Double(found.count)
        // The batch is done when its last task is: the latest ETA of the tasks that will finish.
        let finishing = found.filter { $0.status != .failed && $0.status != .cancelled }
        let etas = finishing.compactMap(\.etaTime)
        eta = etas.count == finishing.count ? etas.max() : nil
    }
}

extension TaskProgress.Status {
    init(_ status: TaskStatus) {
        switch status {
        case .queued: self = .queued
        case .executing: self = .executing
        case .completed: self = .completed
        case .failed: self = .failed
        case .cancelled: self = .cancelled
        }
    }
}

extension TaskProgress.StageStatus {
    init(_ status: StageStatus) {
        switch status {
        case .pending: self = .pending
        case .inProgress: self = .inProgress
        case .completed: self = .completed
        case .failed: self = .failed
        case .skipped: self = .skipped
        }
    }

    var engineStatus: StageStatus {
        switch self {
        case .pending: return .pending
        case .inProgress: return .inProgress
        case .completed: return .completed
        case .failed: return .failed
        case .skipped: return .skipped
        }
    }
}

extension TaskProgress.ResourceUsage {
    init(_ usage: ResourceUsage) {
        cpuPercent = usage.cpuPercent
        memoryMB = usage.memoryMB
        gpuPercent = usage.gpuPercent
        gpuMemoryMB = usage.gpuMemoryMB
    }
}
