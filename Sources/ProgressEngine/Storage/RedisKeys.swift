/// The Redis key layout (docs/REDIS.md). Every key of one task carries the task id as its hash tag, so a
/// task's keys share a Redis Cluster slot; ids are escaped inside the tag so that no id can end it early.
struct RedisKeys: Sendable {
    let namespace: String

    /// The task id (or batch or template id) as it appears inside `{…}`: `%`, `{` and `}` become `%25`,
    /// `%7B`, `%7D`; every other byte is kept, so ordinary ids stay readable in `redis-cli`.
    static func tag(_ id: String) -> String {
        guard id.utf8.contains(where: { $0 == 0x25 || $0 == 0x7B || $0 == 0x7D }) else { return id }
        var out = ""
        for scalar in id.unicodeScalars {
            switch scalar {
            case "%": out += "%25"
            case "{": out += "%7B"
            case "}": out += "%7D"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// TaskProgress JSON of the task (a string).
    func state(_ id: String) -> String { "\(namespace):task:{\(RedisKeys.tag(id))}:state" }
    /// The task's log, JSON entries oldest first (a list, the newest 1000 kept).
    func logs(_ id: String) -> String { "\(namespace):task:{\(RedisKeys.tag(id))}:logs" }
    /// Who appended the log's newest entries and how many entries that engine had logged then (a string:
    /// `<engine id> <count>`): a write sent again appends only what the log lacks (`RedisWriter.writeTaskScript`).
    func logged(_ id: String) -> String { "\(namespace):task:{\(RedisKeys.tag(id))}:logged" }
    /// The task's event history (a stream whose entry ids are `<last seq>-0`).
    func events(_ id: String) -> String { "\(namespace):task:{\(RedisKeys.tag(id))}:events" }
    /// A cancel request for a task another engine runs (a string: `{"reason", "requested_at"}`), with the task's
    /// expiry; removed by the first write of a new task of the same id.
    func cancel(_ id: String) -> String { "\(namespace):task:{\(RedisKeys.tag(id))}:cancel" }
    /// The task's preview PNGs: file name → PNG bytes (a hash), so any listener serves a preview of any engine.
    func previews(_ id: String) -> String { "\(namespace):task:{\(RedisKeys.tag(id))}:previews" }
    /// Ids of the tasks created with a batch id (a set).
    func batch(_ id: String) -> String { "\(namespace):batch:{\(RedisKeys.tag(id))}" }
    /// Registered template stages: template id → stages JSON (a hash).
    var templates: String { "\(namespace):templates" }
    /// ETA completion records of a template, JSON, oldest first (a list, the newest 1000 kept).
    func eta(_ templateId: String) -> String { "\(namespace):eta:{\(RedisKeys.tag(templateId))}" }
    /// A SCAN pattern matching every `eta` list of this namespace.
    var etaPattern: String {
        var escaped = ""
        for c in namespace {
            if "*?[]\\".contains(c) { escaped.append("\\") }
            escaped.append(c)
        }
        return escaped + ":eta:*"
    }
    /// Every task of the namespace → epoch seconds of its latest write (a sorted set): what a `"*"` subscription
    /// lists of the tasks an engine does not hold. Entries older than the retention are trimmed.
    var tasks: String { "\(namespace):tasks" }
    /// Every task of the namespace in the listing's order (a sorted set, every score 0): members are
    /// `ListPosition.sortKey` (creation time, then id), so `ZREVRANGEBYLEX` pages newest first. Added with a task's
    /// first write; an entry is dropped once its task's state has expired (`RedisWriter.sweepCreationIndex`).
    var tasksByCreation: String { "\(namespace):tasks:created" }
    /// Executing tasks → epoch seconds of their engine's last heartbeat (a sorted set).
    var heartbeats: String { "\(namespace):heartbeats" }
    /// Cancel requests for tasks other engines run (a stream of `{task_id, reason?}`, about the newest 1000 kept),
    /// read by every engine's writer thread.
    var cancels: String { "\(namespace):cancels" }
    /// The pub/sub channel every engine publishes its changes on.
    var channel: String { "\(namespace):updates" }
}
