import Glibc


/// A task id as a dictionary key. Stored keys own their bytes; lookup keys borrow the caller's C string for
/// the duration of one call, so the hot path finds a task without allocating.
struct TaskKey: Hashable, @unchecked Sendable {
    private enum Storage {
        case owned(ContiguousArray<UInt8>)
        case borrowed(UnsafeRawBufferPointer)
    }

    private let storage: Storage
    /// FNV-1a of the id's UTF-8 bytes; also picks the shard.
    let hash: UInt64

    /// An owning key for a task id.
    init(owning id: String) {
        let bytes = ContiguousArray(id.utf8)
        storage = .owned(bytes)
        hash = bytes.withUnsafeBytes { TaskKey.fnv1a($0) }
    }

    /// A key borrowing `bytes`, valid only while `bytes` is.
    init(borrowing bytes: UnsafeRawBufferPointer) {
        storage = .borrowed(bytes)
        hash = TaskKey.fnv1a(bytes)
    }

    private static func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3
        }
        return h
    }

    private func withBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        switch storage {
        case let .owned(a): return a.withUnsafeBytes(body)
        case let .borrowed(b): return body(b)
        }
    }

    static func == (lhs: TaskKey, rhs: TaskKey) -> Bool {
        guard lhs.hash == rhs.hash else { return false }
        return lhs.withBytes { a in
            rhs.withBytes { b in
                a.count == b.count && (a.isEmpty || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
            }
        }
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(hash)
    }
}

/// An open-addressing hash table of tasks keyed by the id's FNV-1a hash (linear probing, backward-shift
/// deletion). Hand-rolled rather than `Dictionary` because the hot path already has the hash: re-hashing with
/// SipHash cost more than the rest of an update.
struct TaskMap {
    private var hashes: ContiguousArray<UInt64>
    private var records: ContiguousArray<TaskRecord?>
    private var mask: Int
    private(set) var count = 0

    init() {
        hashes = ContiguousArray(repeating: 0, count: 16)
        records = ContiguousArray(repeating: nil, count: 16)
        mask = 15
    }

    /// Hash 0 marks an empty slot, so stored hashes are forced non-zero.
    private static func slotHash(_ key: TaskKey) -> UInt64 { key.hash | 1 }

    private func find(_ key: TaskKey) -> Int? {
        let h = TaskMap.slotHash(key)
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while true {
            let stored = hashes[i]
            if stored == 0 { return nil }
            if stored == h, records[i]!.key == key { return i }
            i = (i + 1) & mask
        }
    }

    subscript(key: TaskKey) -> TaskRecord? {
        get { find(key).map { records[$0]! } }
        set {
            if let newValue {
                if let i = find(key) {
                    records[i] = newValue
                    return
                }
                if (count + 1) * 2 > hashes.count { grow() }
                insertNew(TaskMap.slotHash(key), newValue)
                count += 1
            } else if let i = find(key) {
                remove(at: i)
            }
        }
    }

    private mutating func insertNew(_ h: UInt64, _ record: TaskRecord) {
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while hashes[i] != 0 { i = (i + 1) & mask }
        hashes[i] = h
        records[i] = record
    }

    private mutating func grow() {
        let oldRecords = records
        hashes = ContiguousArray(repeating: 0, count: oldRecords.count * 2)
        records = ContiguousArray(repeating: nil, count: oldRecords.count * 2)
        mask = hashes.count - 1
        for case let record? in oldRecords { insertNew(TaskMap.slotHash(record.key), record) }
    }

    /// Backward-shift deletion keeps every probe chain unbroken without tombstones.
    private mutating func remove(at index: Int) {
        var hole = index
        var i = (index + 1) & mask
        while hashes[i] != 0 {
            let home = Int(truncatingIfNeeded: hashes[i] >> 7) & mask
            // Move the entry into the hole if its home is not cyclically within (hole, i].
            let distanceToEntry = (i - home) & mask
            let distanceToHole = (i - hole) & mask
            if distanceToEntry >= distanceToHole {
                hashes[hole] = hashes[i]
                records[hole] = records[i]
                hole = i
            }
            i = (i + 1) & mask
        }
        hashes[hole] = 0
        records[hole] = nil
        count -= 1
    }

    /// Every task, in no particular order.
    var values: [TaskRecord] { records.compactMap { $0 } }
}

/// The tasks of one shard and its counters, guarded together by the shard's lock.
struct ShardState {
    var tasks = TaskMap()
    /// Accepted updates of tasks in this shard. Counted here, under the lock already held, rather than in a
    /// shared atomic that every updating thread would fight over.
    var updates = 0
    var invalidUpdates = 0
    /// The latest event time of the shard's tasks (`Engine.eventTime`).
    var latestEvent = 0.0
}

/// One shard: its tasks behind its own lock (`Locked` pads itself against false sharing).
typealias TaskShard = Locked<ShardState>

/// Task state split over 64 independently locked shards: no global lock on the update path.
final class TaskTable: @unchecked Sendable {
    static let shardCount = 64
    private let shards: [TaskShard] = (0..<TaskTable.shardCount).map { _ in TaskShard(ShardState()) }

    func shard(for key: TaskKey) -> TaskShard {
        // The low bits of FNV-1a mix poorly for short keys; fold the high half in.
        shards[Int(truncatingIfNeeded: (key.hash ^ (key.hash >> 32)) & UInt64(TaskTable.shardCount - 1))]
    }

    var allShards: [TaskShard] { shards }
}
