import CProgress
import Synchronization

/// A ProgressEngine for Swift hosts: the same engine as the C ABI of include/progress.h (live task state,
/// the listener, Redis write-through, previews, ETA), with Swift values instead of JSON and status codes.
///
/// ```swift
/// let engine = try Engine(configJSON: #"{"listen": "127.0.0.1:0"}"#)
/// try engine.createTask("render-1", templateID: "sdxl", category: "image_generation")
/// for step in 1...30 { try engine.update("render-1", step: step, total: 30) }
/// try engine.complete("render-1")
/// print(try engine.task("render-1").status)   // .completed
/// engine.close()
/// ```
///
/// Every method may be called from any thread or task. The reporting calls (`update`, `updateStage`,
/// `enterStage`, `log`, `complete`, `fail`, `cancel`, `preview`) are runner-safe: a problem of the reported
/// data (a step past the total, an unknown, finished or expired task, a bad image) is refused, counted and
/// logged by the engine, and does not throw, so a progress report never ends the host's work. Open the engine
/// with `strict: true` to get those errors thrown (for tests and development). Reads (`task`, `batch`) always
/// throw, `ProgressError.Code.notFound` for an unknown task.
public final class Engine: Sendable {
    let core: EngineCore
    private let closed = Atomic<Bool>(false)
    /// Whether the reporting calls throw data errors too.
    public let strict: Bool

    /// Opens an engine.
    /// - Parameters:
    ///   - configJSON: the configuration object of `progress_engine_open` (`listen`, `redis_url`,
    ///     `throttle_ms`, `retention_seconds`, ...: the table in include/progress.h); an unknown key is an error.
    ///   - strict: throw data errors from the reporting calls too (see above).
    /// - Throws: `ProgressError` with `.config` or `.json` for a bad configuration, `.io` when the listen
    ///   address cannot be bound or a thread cannot start.
    public init(configJSON: String = "{}", strict: Bool = false) throws(ProgressError) {
        self.strict = strict
        core = try ProgressError.mapping { try EngineCore(config: try EngineConfig.parse(configJSON)) }
    }

    deinit {
        core.close()
    }

    /// The engine's version, MAJOR.MINOR.PATCH (`PROGRESS_VERSION_*` of include/progress.h).
    public static var version: String {
        let n = CProgress_version_number()
        return "\(n / 10000).\(n / 100 % 100).\(n % 100)"
    }

    /// The form of the engine's log lines on standard error, for every engine of the process.
    public enum LogFormat: Sendable {
        /// One JSON object per line: `{"ts", "level", "component", "event", …}` (the default).
        case json
        /// `TIME LEVEL progress-engine: component=C KEY=VALUE … [ProgressEngine] EVENT`, swift-log's
        /// StreamLogHandler form (a value with a blank, a quote or an '=' quoted as a JSON string).
        case text
    }

    /// The form of every engine's log lines in this process (progress-server's `--log-format`); `.json` until set.
    public static var logFormat: LogFormat {
        get { EngineLog.text.load(ordering: .relaxed) ? .text : .json }
        set { EngineLog.text.store(newValue == .text, ordering: .relaxed) }
    }

    /// The listener's bound TCP port (the one picked for port 0), nil without `listen` or once closed.
    public var port: Int? {
        let port = core.port
        return port >= 0 && !closed.load(ordering: .acquiring) ? port : nil
    }

    /// Stops the listener and the background threads, reads every step counter a last time and flushes the
    /// Redis writes; every stream of `changes(of:)` ends. Idempotent; the engine also closes when released.
    public func close() {
        closed.store(true, ordering: .releasing)
        core.close()
    }

    // MARK: - Reporting (runner-safe)

    /// Creates a task in `queued` state (SPEC §3), or, with `options.resume`, takes over a stored one.
    /// - Parameters:
    ///   - templateID: its stages are those registered for this template, else `category`'s defaults, else
    ///     queue / processing / finalizing.
    ///   - category: `image_generation`, `video_generation`, `audio_generation` or nil.
    /// - Throws: `.exists` for a task with that id, `.invalidArgument` for a bad id. Always, strict or not:
    ///   creating a task is not a progress report.
    public func createTask(_ id: String, templateID: String, category: String? = nil,
                           options: TaskOptions = TaskOptions()) throws(ProgressError) {
        try ProgressError.mapping {
            try core.createTask(id: id, templateId: templateID, category: category, options: options.engineOptions)
        }
    }

    /// Sets the current stage's progress to `step / total` (moving a task that is still before its main stage
    /// there first); the hot path of a sampling loop.
    public func update(_ id: String, step: Int, total: Int, message: String? = nil) throws(ProgressError) {
        try report {
            try core.update(key: TaskKey(owning: id), describe: { id }, step: Int64(step), total: Int64(total),
                            message: message.map(MessageArgument.string) ?? .none)
        }
    }

    /// Sets a stage's status and progress (0...1); entering a later stage finishes the ones before it.
    public func updateStage(_ id: String, stage: Int, status: TaskProgress.StageStatus, progress: Double = 0,
                            message: String? = nil) throws(ProgressError) {
        try report {
            try core.updateStage(id: id, stage: stage, status: status.engineStatus, progress: progress,
                                 message: message.map(MessageArgument.string) ?? .none)
        }
    }

    /// Enters stage `stage` (its index in the task's stages) with progress 0.
    public func enterStage(_ id: String, stage: Int, message: String? = nil) throws(ProgressError) {
        try updateStage(id, stage: stage, status: .inProgress, progress: 0, message: message)
    }

    /// Adds an entry to the task's log (sent to its WebSocket subscribers as `task.log`).
    public func log(_ id: String, level: LogLevel = .info, _ message: String) throws(ProgressError) {
        try report { try core.log(id: id, level: level.engineLevel, message: message) }
    }

    /// Completes the task: every stage finished, overall progress 100 %.
    public func complete(_ id: String) throws(ProgressError) {
        try report { try core.complete(id: id) }
    }

    /// Fails the task with `error` (the reason a user sees).
    public func fail(_ id: String, error: String? = nil) throws(ProgressError) {
        try report { try core.fail(id: id, error: error) }
    }

    /// Cancels the task; also how a runner answers a cancel request (`cancelRequested(_:)`).
    public func cancel(_ id: String, reason: String? = nil) throws(ProgressError) {
        try report { try core.cancel(id: id, reason: reason) }
    }

    /// Whether someone asked the task's runner to stop (REST `POST …/cancel`, the WebSocket `cancel` message,
    /// `requestCancel(_:reason:)`, or any listener of the fleet): true from the request until the task finishes.
    /// Cheap enough to ask every step: the task's lock only, never Redis.
    /// - Throws: `.notFound` for a task this engine does not hold, `.invalidArgument` for a bad id.
    public func cancelRequested(_ id: String) throws(ProgressError) -> Bool {
        try ProgressError.mapping { try core.cancelRequested(key: TaskKey(owning: id), describe: { id }) }
    }

    /// Asks the task's runner to stop, as `POST /api/v1/progress/tasks/{id}/cancel` does: recorded on the task, or
    /// passed on through Redis to the engine of the fleet that runs it. The engine never stops a runner itself.
    /// - Throws: `.notFound` (unknown task), `.state` (it finished), `.range` (a reason over 1024 bytes),
    ///   `.limit` (Redis' queue is full: nothing was recorded).
    public func requestCancel(_ id: String, reason: String? = nil) throws(ProgressError) {
        try ProgressError.mapping { try core.requestCancel(id: id, reason: reason) }
    }

    /// Offers a preview image: 8-bit gray (1 channel), RGB (3) or RGBA (4) rows, `stride` bytes apart
    /// (`width * channels` when nil). Taken only when one is due (the `preview_every_*` options); then the
    /// pixels are copied and encoded to PNG off the caller's thread, and `previewURL` points at it.
    public func preview(_ id: String, pixels: UnsafeRawBufferPointer, width: Int, height: Int, channels: Int,
                        stride: Int? = nil) throws(ProgressError) {
        let rowBytes = stride ?? width * channels
        try report {
            guard let base = pixels.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
                throw EngineError.invalidArgument("pixels is empty")
            }
            // The engine reads height rows of width x channels bytes, the last one not padded to the stride.
            let needed = height > 0 ? rowBytes * (height - 1) + width * channels : 0
            guard pixels.count >= needed else {
                throw EngineError.invalidArgument("pixels holds \(pixels.count) bytes; \(width)x\(height)x\(channels)"
                    + " with stride \(rowBytes) needs \(needed)")
            }
            try core.previewPixels(id: id, pixels: base, width: width, height: height, stride: rowBytes,
                                   channels: channels)
        }
    }

    /// `preview(_:pixels:width:height:channels:stride:)` from an array of bytes.
    public func preview(_ id: String, pixels: [UInt8], width: Int, height: Int, channels: Int) throws(ProgressError) {
        var failure: ProgressError?
        pixels.withUnsafeBytes { buffer in
            do throws(ProgressError) {
                try preview(id, pixels: buffer, width: width, height: height, channels: channels)
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
    }

    // MARK: - Reads

    /// The task's current state (from Redis for a task of another engine of the fleet).
    /// - Throws: `.notFound` for an unknown or expired task, `.invalidArgument` for a bad id.
    public func task(_ id: String) throws(ProgressError) -> TaskProgress {
        try ProgressError.mapping { TaskProgress(try core.snapshot(id: id)) }
    }

    /// A batch's tasks and totals.
    /// - Parameter taskIDs: the tasks to report; nil for every task created with this `batchID`.
    /// - Throws: `.invalidArgument` for a bad batch id.
    public func batch(_ batchID: String, taskIDs: [String]? = nil) throws(ProgressError) -> BatchProgress {
        try ProgressError.mapping {
            let (found, missing) = try core.batch(batchId: batchID, taskIds: taskIDs)
            return BatchProgress(batchID: batchID, found: found, missing: missing)
        }
    }

    /// The states of the given tasks as they change, for a host that forwards them over its own transport,
    /// with the listener's rules (SPEC §7): each task's current state first (once it exists), then a change of
    /// stage or status at once, preceded by any stage change or terminal state it moved past; other changes
    /// coalesced, at most one per task per `throttle_ms`. The stream ends when every task has delivered its
    /// terminal state, when the engine closes, or when the consumer stops iterating.
    public func changes(of ids: [String]) -> AsyncStream<TaskProgress> {
        stream(filter: Set(ids.map(IdKey.init)))
    }

    /// Every task's state as it changes (the tasks held now first), with the rules of `changes(of:)`; ends when
    /// the engine closes or the consumer stops iterating.
    public func changes() -> AsyncStream<TaskProgress> {
        stream(filter: nil)
    }

    private func stream(filter: Set<IdKey>?) -> AsyncStream<TaskProgress> {
        let (output, out) = AsyncStream<TaskProgress>.makeStream()
        let (wakes, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let stream = ChangeStream(filter: filter, wake: wake)
        let core = self.core
        let token = core.watchers.add(stream)
        stream.note(all: filter ?? Set(core.wildcardItems().map { IdKey($0.id) }))
        let delivery = Task.detached {
            var rules = ChangeDelivery(core: core, throttle: Double(core.config.throttleMs) / 1000)
            for await _ in wakes {
                if Task.isCancelled || rules.round(stream.take(), stream: stream, to: out) { break }
            }
            core.watchers.remove(token)
            out.finish()
        }
        out.onTermination = { _ in
            delivery.cancel()
            core.watchers.remove(token)
            wake.finish()
        }
        return output
    }

    /// Runs a reporting call: data errors are thrown only when strict (the engine has counted and logged them).
    private func report(_ body: () throws -> Void) throws(ProgressError) {
        do {
            try ProgressError.mapping(body)
        } catch {
            if strict || !error.isRunnerData { throw error }
        }
    }
}

extension Engine {
    /// Options of `createTask` (the `options_json` of `progress_task_create`).
    public struct TaskOptions: Sendable {
        /// Quality tier, matched in the ETA history ("draft", "high", ...).
        public var quality: String?
        /// Groups tasks for `batch(_:)`.
        public var batchID: String?
        /// Takes over the stored task of that id (after a restart, with Redis) instead of failing with `.exists`.
        public var resume: Bool
        /// Replaces a finished task of that id (the id used for another run) instead of failing with `.exists`;
        /// not with `resume`.
        public var reuse: Bool
        /// The creation time (seconds since 1970) instead of now, for replays.
        public var timestamp: Double?

        public init(quality: String? = nil, batchID: String? = nil, resume: Bool = false, reuse: Bool = false,
                    timestamp: Double? = nil) {
            self.quality = quality
            self.batchID = batchID
            self.resume = resume
            self.reuse = reuse
            self.timestamp = timestamp
        }

        var engineOptions: ProgressEngine.TaskOptions {
            var options = ProgressEngine.TaskOptions()
            options.quality = quality
            options.batchId = batchID
            options.resume = resume
            options.reuse = reuse
            options.timestamp = timestamp
            return options
        }
    }

    /// Severity of a log entry.
    public enum LogLevel: Sendable, CaseIterable {
        case debug, info, warning, error

        var engineLevel: ProgressEngine.LogLevel {
            switch self {
            case .debug: return .debug
            case .info: return .info
            case .warning: return .warning
            case .error: return .error
            }
        }
    }
}
