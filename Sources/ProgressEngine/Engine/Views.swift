import Glibc
import Synchronization

/// The engine's JSON views: a task, its logs and history, a batch, ETA records, counters.
extension EngineCore {
    func taskJSON(id: String) throws -> String {
        let snapshot = try snapshot(id: id)
        var w = JSONWriter(capacity: 1024)
        TaskJSON.write(snapshot, to: &w)
        return w.output
    }

    func logsJSON(id: String, since: Double, minLevel: LogLevel) throws -> String {
        var partial = false
        var (entries, dropped): ([LogEntry], Int) = try withStoredFallback({
            try withTask(id: id, isUpdate: false, forReading: true) { task in
                var entries: [LogEntry] = []
                task.logs.forEach { entries.append($0) }
                partial = task.historyGapSeq > 0
                return (entries, task.logs.dropped)
            }
        }, stored: { store in store.stateJSON(id) == nil ? nil : store.logs(id).map { ($0, 0) } })
        // A task this engine restored (a resumed runner) or mirrors may miss entries: the earlier ones, and for a
        // mirror those published while its subscriber was away. Redis has every entry up to its latest write, which
        // a mirror's entries never go past; what memory holds after the last stored entry follows.
        if partial, let stored = store.logs(id), let last = stored.last?.timestamp {
            entries = stored + entries.filter { $0.timestamp > last }
        }
        do {
            var w = JSONWriter(capacity: 1024)
            w.beginObject()
            w.key("task_id"); w.string(id)
            w.key("logs"); w.beginArray()
            entries.forEach { entry in
                guard entry.timestamp >= since, entry.level.rawValue >= minLevel.rawValue else { return }
                entry.write(to: &w)
            }
            w.endArray()
            w.key("dropped"); w.integer(dropped)
            w.endObject()
            return w.output
        }
    }

    func historyJSON(id: String, afterSeq: UInt64) throws -> String {
        var partial = false
        var gap: UInt64 = 0
        let (held, lastSeq): ([HistoryEvent], UInt64) = try withStoredFallback({
            try withTask(id: id, isUpdate: false, forReading: true) { task in
                let events = task.history.newest(while: { _ in true })
                partial = task.historyGapSeq > 0 || (events.first?.seq ?? 1) > 1
                gap = task.historyGapSeq
                return (events, task.seq)
            }
        }, stored: { store in
            guard let task = store.loadTask(id) else { return nil }
            return (store.streamEvents(id, from: 1, before: .max) ?? [], task.seq)
        })
        // Events memory may not hold (older than it holds: a restored or mirrored task, or a long one past the ring;
        // up to `historyGapSeq`: a mirror whose subscriber was away) come from the Redis stream, as far back as it
        // goes; memory's own fill what the stream no longer has.
        var events = held
        let complete = max(held.first?.seq ?? (lastSeq + 1), gap + 1)  // memory holds every event from here on
        if partial, afterSeq + 1 < complete, let stored = store.streamEvents(id, from: afterSeq + 1, before: complete) {
            let storedSeqs = Set(stored.map(\.seq))
            let before = (stored + held.filter { $0.seq < complete && !storedSeqs.contains($0.seq) })
                .sorted { $0.seq < $1.seq }
            events = before + held.filter { $0.seq >= complete }
        }
        do {
            var w = JSONWriter(capacity: 4096)
            w.beginObject()
            w.key("task_id"); w.string(id)
            w.key("first_seq"); w.integer(events.first?.seq ?? 0)
            w.key("last_seq"); w.integer(lastSeq)
            w.key("events"); w.beginArray()
            events.forEach { e in
                guard e.seq > afterSeq else { return }
                e.write(to: &w, form: .api)
            }
            w.endArray()
            w.endObject()
            return w.output
        }
    }

    /// The batch's tasks this engine or Redis knows, and the ids it does not.
    /// - Parameter taskIds: the tasks to report; nil for the batch's recorded members.
    /// - Throws: `.invalidArgument` (batch id).
    func batch(batchId: String, taskIds: [String]?) throws -> (found: [TaskSnapshot], missing: [String]) {
        try EngineCore.validateId(batchId, what: "batch_id")
        var ids = taskIds ?? batches.withLock { $0[IdKey(batchId)] ?? [] }
        if taskIds == nil {
            // Other engines' tasks of the batch, and this engine's own from before a restart.
            let known = Set(ids.map(IdKey.init))
            ids += store.batchMembers(batchId).filter { !known.contains(IdKey($0)) }
        }
        var found: [TaskSnapshot] = []
        var missing: [String] = []
        let now = eventTime()
        for id in ids {
            // `snapshot` reads a task this engine does not hold from Redis.
            if let snapshot = try? snapshot(id: id, now: now) {
                found.append(snapshot)
            } else {
                missing.append(id)
            }
        }
        return (found, missing)
    }

    /// BatchProgress (SPEC §6); `taskIds` nil means the tasks created with this batch_id.
    func batchJSON(batchId: String, taskIds: [String]?) throws -> String {
        var w = JSONWriter(capacity: 1024)
        try writeBatch(batchId: batchId, taskIds: taskIds, into: &w)
        return w.output
    }

    /// BatchProgress as the next value of `w` (a member of a WebSocket message, say).
    func writeBatch(batchId: String, taskIds: [String]?, into w: inout JSONWriter) throws {
        let (found, missing) = try batch(batchId: batchId, taskIds: taskIds)
        let summary = BatchSummary(found)
        w.beginObject()
        w.key("batch_id"); w.string(batchId)
        w.key("total_tasks"); w.integer(found.count)
        for status in TaskStatus.all {
            w.key("\(status.name)_tasks"); w.integer(summary.counts[status] ?? 0)
        }
        w.key("counts"); w.beginObject()
        for status in TaskStatus.all {
            w.key(status.name); w.integer(summary.counts[status] ?? 0)
        }
        w.endObject()
        w.key("overall_progress"); w.number(summary.overallProgress)
        w.key("eta"); w.timestamp(summary.eta)
        w.key("tasks"); w.beginObject()
        for t in found {
            w.key(t.id); w.beginObject()
            w.key("status"); w.string(t.status.name)
            w.key("overall_progress"); w.number(t.overallProgress)
            w.key("eta"); w.timestamp(t.etaTime)
            w.endObject()
        }
        w.endObject()
        w.key("missing"); w.beginArray()
        for id in missing { w.string(id) }
        w.endArray()
        w.endObject()
    }

    func etaRecordsJSON(templateId: String, quality: String?) -> String {
        var w = JSONWriter(capacity: 1024)
        w.beginObject()
        w.key("template_id"); w.string(templateId)
        w.key("quality"); w.string(quality)
        w.key("records"); w.beginArray()
        for r in completions.records(template: templateId, quality: quality) { r.write(to: &w) }
        w.endArray()
        w.endObject()
        return w.output
    }

    /// EngineCore counters, for `progress_engine_stats_get` and `/metrics`.
    struct Counters {
        var tasks = 0, updates = 0, invalidUpdates = 0, events = 0, logs = 0, purgedTasks = 0, attachedCounters = 0
        var previewsWritten = 0, previewsFailed = 0, previewsDropped = 0
    }

    func counters() -> Counters {
        var c = Counters()
        for shard in table.allShards {
            shard.withLock { s in
                c.tasks += s.tasks.count
                c.updates += s.updates
                c.invalidUpdates += s.invalidUpdates
            }
        }
        c.invalidUpdates += misses.load(ordering: .relaxed)
        c.events = events.load(ordering: .relaxed)
        c.logs = logCount.load(ordering: .relaxed)
        c.purgedTasks = purged.load(ordering: .relaxed)
        c.attachedCounters = counterTasks.withLock { $0.count }
        c.previewsWritten = previewsWritten.load(ordering: .relaxed)
        c.previewsFailed = previewsFailed.load(ordering: .relaxed)
        c.previewsDropped = previewsDropped.load(ordering: .relaxed)
        return c
    }

    func statsJSON() -> String {
        let c = counters()
        var w = JSONWriter()
        w.beginObject()
        for row in CounterTable.engine {
            w.key(row.stats); w.integer(row.value(c))
        }
        if let m = store.redisMetrics {
            for row in CounterTable.redis {
                w.key(row.stats); w.integer(row.value(m))
            }
        }
        w.endObject()
        return w.output
    }
}
