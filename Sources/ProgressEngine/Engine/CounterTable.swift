/// One counter of the engine as `progress_engine_stats_get` and `/metrics` show it. `CounterTable` is the one
/// list both are written from; tests/test_abi.py checks the header's list of stats keys against the engine.
struct CounterRow<Source>: Sendable {
    /// Its key in the stats JSON.
    let stats: String
    /// Its Prometheus name.
    let metric: String
    /// "counter" (only grows) or "gauge".
    let kind: String
    /// The metric's HELP text.
    let help: String
    let value: @Sendable (Source) -> Int
}

enum CounterTable {
    static let engine: [CounterRow<EngineCore.Counters>] = [
        CounterRow(stats: "tasks", metric: "progress_tasks", kind: "gauge", help: "Tasks held in memory.",
                   value: { $0.tasks }),
        CounterRow(stats: "updates", metric: "progress_updates_received_total", kind: "counter",
                   help: "Accepted task updates.", value: { $0.updates }),
        CounterRow(stats: "invalid_updates", metric: "progress_invalid_updates_total", kind: "counter",
                   help: "Rejected task updates (refused, counted and logged).", value: { $0.invalidUpdates }),
        CounterRow(stats: "events", metric: "progress_events_total", kind: "counter", help: "Runner events received.",
                   value: { $0.events }),
        CounterRow(stats: "logs", metric: "progress_logs_total", kind: "counter", help: "Log entries received.",
                   value: { $0.logs }),
        CounterRow(stats: "purged_tasks", metric: "progress_purged_tasks_total", kind: "counter",
                   help: "Finished tasks removed after retention_seconds.", value: { $0.purgedTasks }),
        CounterRow(stats: "attached_counters", metric: "progress_attached_counters", kind: "gauge",
                   help: "Step counters attached to tasks.", value: { $0.attachedCounters }),
        CounterRow(stats: "previews_written", metric: "progress_previews_written_total", kind: "counter",
                   help: "Preview PNGs written.", value: { $0.previewsWritten }),
        CounterRow(stats: "previews_failed", metric: "progress_previews_failed_total", kind: "counter",
                   help: "Previews that could not be decoded, encoded or written.", value: { $0.previewsFailed }),
        CounterRow(stats: "previews_dropped", metric: "progress_previews_dropped_total", kind: "counter",
                   help: "Previews dropped because 8 were already waiting.", value: { $0.previewsDropped }),
    ]

    /// With `redis_url` only.
    static let redis: [CounterRow<RedisMetrics>] = [
        CounterRow(stats: "redis_connected", metric: "progress_redis_connected", kind: "gauge",
                   help: "1 while the Redis writer is connected.", value: { $0.connected.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_queue_depth", metric: "progress_redis_queue_depth", kind: "gauge",
                   help: "Tasks with changes not yet written to Redis.",
                   value: { $0.queueDepth.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_task_writes", metric: "progress_redis_task_writes_total", kind: "counter",
                   help: "Task writes acknowledged by Redis.", value: { $0.taskWrites.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_commands", metric: "progress_redis_commands_total", kind: "counter",
                   help: "Commands sent to Redis by the writer.", value: { $0.commands.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_command_errors", metric: "progress_redis_command_errors_total", kind: "counter",
                   help: "Writer commands Redis rejected.", value: { $0.commandErrors.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_dropped_events", metric: "progress_redis_dropped_events_total", kind: "counter",
                   help: "History events not written to Redis (buffer bound or flood thinning).",
                   value: { $0.droppedEvents.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_dropped_logs", metric: "progress_redis_dropped_logs_total", kind: "counter",
                   help: "Log entries not written to Redis (buffer bound).",
                   value: { $0.droppedLogs.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_dropped_writes", metric: "progress_redis_dropped_writes_total", kind: "counter",
                   help: "Template, ETA, preview and closing writes dropped.",
                   value: { $0.droppedWrites.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_reconnects", metric: "progress_redis_reconnects_total", kind: "counter",
                   help: "Reconnections to Redis (writer and subscriber).",
                   value: { $0.reconnects.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_remote_updates", metric: "progress_redis_remote_updates_total", kind: "counter",
                   help: "Other engines' updates applied from the channel.",
                   value: { $0.remoteUpdates.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_workers_lost", metric: "progress_redis_workers_lost_total", kind: "counter",
                   help: "Tasks failed with \"worker lost\".", value: { $0.workersLost.load(ordering: .relaxed) }),
        CounterRow(stats: "redis_previews_too_large", metric: "progress_redis_previews_too_large_total", kind: "counter",
                   help: "Previews not written to Redis: larger than redis_preview_max_bytes.",
                   value: { $0.previewsTooLarge.load(ordering: .relaxed) }),
    ]
}
