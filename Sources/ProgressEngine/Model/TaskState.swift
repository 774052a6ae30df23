/// A task's lifecycle: `queued` → `executing` → `completed` | `failed` | `cancelled`.
enum TaskStatus: UInt8, Sendable {
    case queued, executing, completed, failed, cancelled

    var name: String {
        switch self {
        case .queued: return "queued"
        case .executing: return "executing"
        case .completed: return "completed"
        case .failed: return "failed"
        case .cancelled: return "cancelled"
        }
    }

    @inline(__always)
    var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }

    static let all: [TaskStatus] = [.queued, .executing, .completed, .failed, .cancelled]
}

/// A stage's status; raw values are the C header's `progress_stage_status`.
enum StageStatus: Int32, Sendable {
    case pending = 0, inProgress = 1, completed = 2, failed = 3, skipped = 4

    var name: String {
        switch self {
        case .pending: return "pending"
        case .inProgress: return "in_progress"
        case .completed: return "completed"
        case .failed: return "failed"
        case .skipped: return "skipped"
        }
    }

    /// Still to be done or being done: moving past such a stage completes it.
    @inline(__always)
    var isOpen: Bool { self == .pending || self == .inProgress }
    /// Counts as fully done in `overall_progress`.
    @inline(__always)
    var countsAsDone: Bool { self == .completed || self == .skipped }
}

/// Log levels; raw values are the C header's `progress_log_level`.
enum LogLevel: Int32, Sendable {
    case debug = 0, info = 1, warning = 2, error = 3

    var name: String {
        switch self {
        case .debug: return "debug"
        case .info: return "info"
        case .warning: return "warning"
        case .error: return "error"
        }
    }

    init?(name: String) {
        switch name.lowercased() {
        case "debug": self = .debug
        case "info": self = .info
        case "warning", "warn": self = .warning
        case "error": self = .error
        default: return nil
        }
    }
}

/// The live state of one stage of a task.
struct StageState: Sendable {
    let definition: StageDefinition
    var status: StageStatus = .pending
    /// 0...1.
    var progress: Double = 0
    var startedAt: Double?
    var completedAt: Double?
    /// The seq of the task's first event with this stage finished (0: not finished, or not known, as for a task
    /// stored by an engine that did not keep it). A replay tells by it whether the stage had finished at an event:
    /// times cannot, since a step's time may equal the previous event's (the coarse step clock, clamped).
    var completedSeq: UInt64 = 0
    var message: String?
    /// How the stage runs this time, as the runner said when entering it ("variant" of a stage event: "cold" when
    /// it had to read the model from disk, "cached" when the model was resident). The ETA reads this stage's
    /// history from runs with the same variant: a cold load takes 15 times a warm one, and only the runner knows
    /// which it is doing. Kept in the completion record; not published or stored with the task.
    var variant: String?

    /// Seconds from entering to finishing the stage; nil until it finished. A stage finished without ever
    /// being entered (the runner jumped past it) lasted 0 s.
    var duration: Double? {
        guard let completedAt else { return nil }
        // Microseconds: finer digits are clock noise (5.2000000000000455).
        return ((completedAt - (startedAt ?? completedAt)) * 1e6).rounded() / 1e6
    }
}

/// Resource figures of a running task; nil where unknown.
struct ResourceUsage: Sendable {
    var cpuPercent: Double?
    var memoryMB: Double?
    var gpuPercent: Double?
    var gpuMemoryMB: Double?
}

/// What kind of change an entry of a task's history records.
enum HistoryType: UInt8, Sendable, CaseIterable {
    case created, progress, stage, completed, failed, cancelled, resources, resumed, preview, cancelRequested

    /// Changes of this kind wait for `throttle_ms` like a step unless they also change a stage (SPEC §7: only
    /// creation, stage changes, terminal states and a resume go out at once; so does a cancel request, which the
    /// runner and every client should see without delay).
    @inline(__always)
    var waitsForThrottle: Bool { self == .progress || self == .resources || self == .preview }

    var name: String {
        switch self {
        case .created: return "created"
        case .progress: return "progress"
        case .stage: return "stage"
        case .completed: return "completed"
        case .failed: return "failed"
        case .cancelled: return "cancelled"
        case .resources: return "resources"
        case .resumed: return "resumed"
        case .preview: return "preview"
        case .cancelRequested: return "cancel_requested"
        }
    }
}

/// One entry of a task's event history (SPEC §8 `history`).
struct HistoryEvent: Sendable {
    var seq: UInt64
    var timestamp: Double
    var type: HistoryType
    var stage: Int
    var progress: Double
    var overallProgress: Double
    var status: TaskStatus
    var message: String?
}

/// One entry of a task's log.
struct LogEntry: Sendable {
    var timestamp: Double
    var level: LogLevel
    var message: String
    var stage: Int
}

/// A fixed-capacity ring that keeps the newest elements. Storage grows on demand up to the capacity, so a
/// task that logs little costs little.
struct Ring<Element> {
    private var storage: ContiguousArray<Element> = []
    private var head = 0
    let capacity: Int
    /// Elements pushed out by newer ones.
    private(set) var dropped = 0

    init(capacity: Int) {
        self.capacity = capacity
    }

    var count: Int { storage.count }

    mutating func append(_ element: consuming Element) {
        if storage.count < capacity {
            storage.append(element)
        } else {
            storage[head] = element
            // A compare instead of `%`: a division would cost more than the rest of the append.
            head += 1
            if head == capacity { head = 0 }
            dropped += 1
        }
    }

    /// The newest element.
    var last: Element? {
        guard !storage.isEmpty else { return nil }
        return storage[(head + storage.count - 1) % storage.count]
    }

    /// Mutates the newest element in place (history coalescing), without copying it out and back.
    mutating func updateLast(_ body: (inout Element) -> Void) {
        guard !storage.isEmpty else { return }
        body(&storage[(head + storage.count - 1) % storage.count])
    }

    /// Oldest first.
    func forEach(_ body: (Element) throws -> Void) rethrows {
        for i in 0..<storage.count {
            try body(storage[(head + i) % storage.count])
        }
    }

    var first: Element? { storage.isEmpty ? nil : storage[head % storage.count] }

    /// The newest elements for which `take` holds, walking back from the newest; oldest first. Costs what it
    /// returns, not the ring's size (the Redis writer takes the events since its last write this way).
    func newest(while take: (Element) -> Bool) -> [Element] {
        var out: [Element] = []
        var i = storage.count - 1
        while i >= 0 {
            let element = storage[(head + i) % storage.count]
            guard take(element) else { break }
            out.append(element)
            i -= 1
        }
        out.reverse()
        return out
    }

    /// The newest `n` elements (fewer if the ring holds fewer), oldest first.
    func newest(_ n: Int) -> [Element] {
        var remaining = min(n, storage.count)
        return newest(while: { _ in
            remaining -= 1
            return remaining >= 0
        })
    }

    /// Elements ever appended (held and dropped).
    var appended: Int { dropped + storage.count }
}
