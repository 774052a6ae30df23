/// A consistent copy of a task's state, taken under the shard lock in a few copies and reference-count bumps,
/// so that encoding it (microseconds) happens after the lock is released.
struct TaskSnapshot: Sendable {
    let id: String
    let templateId: String
    let category: String?
    let quality: String?
    let batchId: String?
    let status: TaskStatus
    let currentStage: Int
    let stages: ContiguousArray<StageState>
    let overallProgress: Double
    let resources: ResourceUsage
    let resourcePeaks: ResourceUsage
    let seq: UInt64
    let createdAt: Double
    let updatedAt: Double
    let startedAt: Double?
    let completedAt: Double?
    let error: String?
    let previewURL: String?
    let metadata: JSONValue?
    let resourceConfig: JSONValue?

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
        metadata = task.metadata
        resourceConfig = task.resourceConfig
    }
}

/// The TaskProgress document (SPEC §6): the seed's fields plus the engine's own; every key always present,
/// null where unknown, so clients can rely on one shape.
enum TaskJSON {
    static func write(_ task: TaskSnapshot, to w: inout JSONWriter) {
        w.beginObject()
        w.key("task_id"); w.string(task.id)
        w.key("template_id"); w.string(task.templateId)
        w.key("template_category"); w.string(task.category)
        w.key("quality"); w.string(task.quality)
        w.key("batch_id"); w.string(task.batchId)
        w.key("status"); w.string(task.status.name)
        w.key("current_stage"); w.integer(task.currentStage)
        w.key("total_stages"); w.integer(task.stages.count)
        w.key("overall_progress"); w.number(task.overallProgress)
        // ETA prediction is its own piece of work; until it lands these stay null.
        w.key("eta"); w.null()
        w.key("eta_seconds"); w.null()
        w.key("eta_confidence"); w.null()
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
        w.key("metadata"); w.value(task.metadata ?? .null)
        w.key("resource_config"); w.value(task.resourceConfig ?? .null)
        w.endObject()
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
