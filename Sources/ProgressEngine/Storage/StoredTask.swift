/// A task as Redis holds it: the TaskProgress JSON (SPEC §6) that `TaskJSON` writes, plus `stored_times`, read
/// back into a `TaskSnapshot` (one field list for a task's state, live or stored). Everything a `TaskRecord`
/// needs to go on from where its engine left it is in there (stages with their weights, statuses, progress,
/// times and messages; status, seq, error, resources), so a restarted runner's task or another engine's task is
/// rebuilt with `TaskRecord(restoring:)` and keeps its seq.
enum StoredTask {
    /// Parses stored TaskProgress JSON.
    /// - Throws: `EngineError.json` when the document is not a TaskProgress this engine wrote.
    static func parse(_ text: String) throws -> TaskSnapshot {
        try parse(try JSONParser.parse(text, context: "stored task"))
    }

    static func parse(_ value: JSONValue) throws -> TaskSnapshot {
        let r = try JSONObjectReader(value, context: "stored task")
        func required<T>(_ v: T?, _ key: String) throws -> T {
            guard let v else { throw EngineError.json("stored task has no \"\(key)\"") }
            return v
        }
        func time(_ key: String, _ reader: JSONObjectReader) throws -> Double? {
            guard let text = try reader.string(key) else { return nil }
            guard let t = ISO8601.parse(text) else { throw EngineError.json("stored task: \(key) \"\(text)\" is not a time") }
            return t
        }
        let statusName = try required(r.string("status"), "status")
        guard let status = TaskStatus.all.first(where: { $0.name == statusName }) else {
            throw EngineError.json("stored task: unknown status \"\(statusName)\"")
        }
        guard case let .object(stageMembers)? = try r.object("stages"), !stageMembers.isEmpty else {
            throw EngineError.json("stored task has no stages")
        }
        var stages: [StageState] = []
        for (index, (key, value)) in stageMembers.enumerated() {
            guard key == String(index) else { throw EngineError.json("stored task: stage keys must be 0, 1, ...") }
            let s = try JSONObjectReader(value, context: "stored stage \(key)")
            let definition = StageDefinition(name: try required(s.string("name"), "name"),
                                             description: try s.string("description") ?? "",
                                             weight: try required(s.number("weight"), "weight"))
            let statusName = try required(s.string("status"), "stage status")
            guard let stageStatus = [StageStatus.pending, .inProgress, .completed, .failed, .skipped]
                .first(where: { $0.name == statusName }) else {
                throw EngineError.json("stored task: unknown stage status \"\(statusName)\"")
            }
            var stage = StageState(definition: definition)
            stage.status = stageStatus
            stage.progress = try s.number("progress") ?? 0
            stage.startedAt = try time("started_at", s)
            stage.completedAt = try time("completed_at", s)
            stage.message = try s.string("message")
            stages.append(stage)
        }
        let current = Int(try r.integer("current_stage") ?? 0)
        guard current >= 0, current < stages.count else { throw EngineError.json("stored task: current_stage out of range") }
        // stored_times: the precise times (TaskProgress shows milliseconds), so a restored task reports exactly
        // the same durations.
        let precise = try StoredTimes(r.value("stored_times"), stages: stages.count)
        let created = try precise.created ?? required(time("created_at", r), "created_at")
        for (i, pair) in precise.stages.enumerated() {
            if let started = pair.0 { stages[i].startedAt = started }
            if let completed = pair.1 { stages[i].completedAt = completed }
        }
        for (i, seq) in precise.completedSeqs.enumerated() where stages[i].completedAt != nil {
            stages[i].completedSeq = seq
        }
        let seq = UInt64(max(0, try r.integer("seq") ?? 0))
        let updated = try precise.updated ?? time("updated_at", r) ?? created
        // A request standing when the state was written, as of that state's seq and time.
        let cancel = try r.bool("cancel_requested") == true
            ? CancelRequest(reason: try r.string("cancel_reason"), seq: seq, requestedAt: updated) : nil
        return TaskSnapshot(
            id: try required(r.string("task_id"), "task_id"),
            templateId: try required(r.string("template_id"), "template_id"),
            category: try r.string("template_category"), quality: try r.string("quality"),
            batchId: try r.string("batch_id"), status: status, currentStage: current, stages: ContiguousArray(stages),
            overallProgress: try r.number("overall_progress") ?? 0,
            resources: try usage(r.object("resource_usage")), resourcePeaks: try usage(r.object("resource_peaks")),
            seq: seq, createdAt: created, updatedAt: updated,
            startedAt: try precise.started ?? time("started_at", r),
            completedAt: try precise.completed ?? time("completed_at", r), error: try r.string("error"),
            previewURL: try r.string("preview_url"),
            metadata: r.value("metadata").flatMap { $0.isNull ? nil : $0 },
            resourceConfig: r.value("resource_config").flatMap { $0.isNull ? nil : $0 }, cancelRequest: cancel)
    }

    private static func usage(_ value: JSONValue?) throws -> ResourceUsage {
        guard let value else { return ResourceUsage() }
        let u = try JSONObjectReader(value, context: "stored resource usage")
        return ResourceUsage(cpuPercent: try u.number("cpu_percent"), memoryMB: try u.number("memory_mb"),
                             gpuPercent: try u.number("gpu_percent"), gpuMemoryMB: try u.number("gpu_memory_mb"))
    }

    /// The document Redis stores: the TaskProgress JSON of a record plus `stored_times`, its times as epoch
    /// seconds (TaskProgress shows milliseconds), so a restored task reports exactly the same durations.
    static func json(_ s: TaskSnapshot) -> String {
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        TaskJSON.writeMembers(s, to: &w)
        w.key("stored_times"); w.beginObject()
        w.key("created"); w.number(s.createdAt)
        w.key("updated"); w.number(s.updatedAt)
        w.key("started"); w.number(s.startedAt)
        w.key("completed"); w.number(s.completedAt)
        w.key("stages"); w.beginArray()
        for stage in s.stages {
            w.beginArray(); w.number(stage.startedAt); w.number(stage.completedAt); w.endArray()
        }
        w.endArray()
        // A key of its own, so that an engine reading `stages` as pairs still reads them.
        w.key("stages_completed_seq"); w.beginArray()
        for stage in s.stages { w.integer(stage.completedSeq) }
        w.endArray()
        w.endObject()
        w.endObject()
        return w.output
    }
}

/// `stored_times` of a stored task: its times as epoch seconds.
private struct StoredTimes {
    var created: Double?
    var updated: Double?
    var started: Double?
    var completed: Double?
    /// (started, completed) per stage; empty when absent or not one pair per stage.
    var stages: [(Double?, Double?)] = []
    /// `StageState.completedSeq` per stage; empty when absent or not one per stage.
    var completedSeqs: [UInt64] = []

    init(_ value: JSONValue?, stages count: Int) throws {
        guard let value else { return }
        let t = try JSONObjectReader(value, context: "stored_times")
        created = try t.number("created")
        updated = try t.number("updated")
        started = try t.number("started")
        completed = try t.number("completed")
        if case let .array(seqs)? = t.value("stages_completed_seq"), seqs.count == count {
            completedSeqs = seqs.map { if case let .number(n) = $0, n >= 0, n < 1e18 { UInt64(n) } else { 0 } }
        }
        guard case let .array(pairs)? = t.value("stages"), pairs.count == count else { return }
        stages = pairs.map { pair in
            guard case let .array(p) = pair, p.count == 2 else { return (nil, nil) }
            var out: (Double?, Double?) = (nil, nil)
            if case let .number(n) = p[0] { out.0 = n }
            if case let .number(n) = p[1] { out.1 = n }
            return out
        }
    }
}

/// History events and log entries as Redis and the update channel carry them (epoch-second timestamps, so
/// nothing is lost to ISO-8601's milliseconds).
enum StoredEvents {
    static func parseEvent(_ value: JSONValue) throws -> HistoryEvent {
        let r = try JSONObjectReader(value, context: "stored event")
        guard let seq = try r.integer("seq"), seq > 0, let ts = try r.number("ts"), let typeName = try r.string("type"),
              let type = HistoryType.allCases.first(where: { $0.name == typeName }),
              let statusName = try r.string("status"), let status = TaskStatus.all.first(where: { $0.name == statusName })
        else { throw EngineError.json("stored event is incomplete") }
        return HistoryEvent(seq: UInt64(seq), timestamp: ts, type: type, stage: Int(try r.integer("stage") ?? 0),
                            progress: try r.number("progress") ?? 0, overallProgress: try r.number("overall") ?? 0,
                            status: status, message: try r.string("message"))
    }

    /// A JSON array of events.
    static func parseEvents(_ value: JSONValue) throws -> [HistoryEvent] {
        guard case let .array(items) = value else { throw EngineError.json("stored events must be an array") }
        return try items.map(parseEvent)
    }

    static func parseLog(_ value: JSONValue) throws -> LogEntry {
        let r = try JSONObjectReader(value, context: "stored log entry")
        guard let ts = try r.number("ts"), let levelName = try r.string("level"), let level = LogLevel(name: levelName),
              let message = try r.string("message")
        else { throw EngineError.json("stored log entry is incomplete") }
        return LogEntry(timestamp: ts, level: level, message: message, stage: Int(try r.integer("stage") ?? 0))
    }

    static func logJSON(_ entry: LogEntry) -> String {
        var w = JSONWriter()
        entry.write(to: &w, form: .stored)
        return w.output
    }

    /// Of a run of events taken for one write, the ones that go to Redis: all of them up to `limit`; beyond,
    /// every event but a progress step that another progress step of the same stage follows, unless it is the
    /// run's first or the first of its stage (a step can enter a stage: that is a stage change). So a flood of
    /// steps costs two events per write and one per stage it crossed, while stage changes and terminal states
    /// are all kept. Gaps this leaves in seq are how readers know history is not complete (resume then reports
    /// recovered: false).
    static func thin(_ events: [HistoryEvent], limit: Int) -> [HistoryEvent] {
        guard events.count > limit else { return events }
        var out: [HistoryEvent] = []
        for (i, e) in events.enumerated() {
            let entersStage = i == 0 || events[i - 1].stage != e.stage
            if e.type == .progress, !entersStage, i + 1 < events.count, events[i + 1].type == .progress,
               events[i + 1].stage == e.stage { continue }
            out.append(e)
        }
        return out
    }
}
