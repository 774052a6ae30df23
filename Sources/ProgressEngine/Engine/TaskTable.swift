import Glibc


/// A task id as a hash-table key. Stored keys own a copy of the id's bytes; lookup keys borrow the caller's C
/// string for the duration of one call, so the hot path finds a task without allocating. Either way `bytes`
/// is a plain pointer: comparing keys touches no reference count.
struct TaskKey: Hashable, @unchecked Sendable {
    /// Frees an owning key's bytes with the last copy of the key.
    private final class Owner {
        let bytes: UnsafeMutableRawBufferPointer
        init(_ bytes: UnsafeMutableRawBufferPointer) { self.bytes = bytes }
        deinit { bytes.deallocate() }
    }

    /// The id's UTF-8 bytes: valid while this key (an owning one) or the borrowed bytes are.
    let bytes: UnsafeRawBufferPointer
    private let owner: Owner?
    /// FNV-1a of the id's UTF-8 bytes; also picks the shard.
    let hash: UInt64

    /// An owning key for a task id.
    init(owning id: String) {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: id.utf8.count, alignment: 1)
        _ = copy.initializeMemory(as: UInt8.self, from: id.utf8)
        owner = Owner(copy)
        bytes = UnsafeRawBufferPointer(copy)
        hash = TaskKey.fnv1a(bytes)
    }

    /// A key borrowing `bytes`, valid only while `bytes` is.
    init(borrowing bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
        owner = nil
        hash = TaskKey.fnv1a(bytes)
    }

    private static func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3
        }
        return h
    }

    static func sameBytes(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        a.count == b.count && (a.isEmpty || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
    }

    static func == (lhs: TaskKey, rhs: TaskKey) -> Bool {
        lhs.hash == rhs.hash && sameBytes(lhs.bytes, rhs.bytes)
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
    /// Each slot's key bytes, owned by the slot's record (`record.key`): a probe compares ids without loading
    /// the record, so a lookup retains nothing but the record it returns.
    private var keys: ContiguousArray<UnsafeRawBufferPointer>
    private var records: ContiguousArray<TaskRecord?>
    private var mask: Int
    private(set) var count = 0

    init() {
        hashes = ContiguousArray(repeating: 0, count: 16)
        keys = ContiguousArray(repeating: UnsafeRawBufferPointer(start: nil, count: 0), count: 16)
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
            if stored == h, TaskKey.sameBytes(keys[i], key.bytes) { return i }
            i = (i + 1) & mask
        }
    }

    /// The record of `key` without a retain, for the update path: valid while the caller holds the shard's lock
    /// (the map keeps the record until a removal or a replacement, each under that lock). The slot is read as a
    /// plain pointer, so no reference count is touched. `mutating` only so that the caller reaches the map in
    /// place: a read of the shard's map would copy it, retaining its three arrays.
    @inline(__always)
    mutating func borrow(_ key: TaskKey) -> Unmanaged<TaskRecord>? {
        guard let i = find(key) else { return nil }
        // `find` answers filled slots only.
        let raw = records.withUnsafeBufferPointer { $0.unretainedReference(at: i).unsafelyUnwrapped }
        return Unmanaged<TaskRecord>.fromOpaque(raw)
    }

    subscript(key: TaskKey) -> TaskRecord? {
        get { find(key).map { records[$0]! } }
        set {
            if let newValue {
                if let i = find(key) {
                    keys[i] = newValue.key.bytes  // the old record, and with it its key's bytes, may go now
                    records[i] = newValue
                    return
                }
                if (count + 1) * 2 > hashes.count { grow() }
                insertNew(newValue)
                count += 1
            } else if let i = find(key) {
                remove(at: i)
            }
        }
    }

    private mutating func insertNew(_ record: TaskRecord) {
        let h = TaskMap.slotHash(record.key)
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while hashes[i] != 0 { i = (i + 1) & mask }
        hashes[i] = h
        keys[i] = record.key.bytes
        records[i] = record
    }

    private mutating func grow() {
        let oldRecords = records
        hashes = ContiguousArray(repeating: 0, count: oldRecords.count * 2)
        keys = ContiguousArray(repeating: UnsafeRawBufferPointer(start: nil, count: 0), count: oldRecords.count * 2)
        records = ContiguousArray(repeating: nil, count: oldRecords.count * 2)
        mask = hashes.count - 1
        for case let record? in oldRecords { insertNew(record) }
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
                keys[hole] = keys[i]
                records[hole] = records[i]
                hole = i
            }
            i = (i + 1) & mask
        }
        hashes[hole] = 0
        keys[hole] = UnsafeRawBufferPointer(start: nil, count: 0)
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
    /// The latest event time of the shard's tasks (`EngineCore.eventTime`).
    var latestEvent = 0.0
}

/// One shard: its tasks behind its own lock (`Locked` pads itself against false sharing).
typealias TaskShard = Locked<ShardState>

/// Task state split over 64 independently locked shards: no global lock on the update path.
final class TaskTable: @unchecked Sendable {
    static let shardCount = 64
    private let shards: [TaskShard] = (0..<TaskTable.shardCount).map { _ in TaskShard(ShardState()) }

    private static func index(_ key: TaskKey) -> Int {
        // The low bits of FNV-1a mix poorly for short keys; fold the high half in.
        Int(truncatingIfNeeded: (key.hash ^ (key.hash >> 32)) & UInt64(TaskTable.shardCount - 1))
    }

    func shard(for key: TaskKey) -> TaskShard {
        shards[TaskTable.index(key)]
    }

    /// `body` with the shard of `key`, borrowed: the table keeps every shard for its lifetime, so no reference
    /// count is touched.
    @inline(__always)
    func withShard<R>(for key: TaskKey, _ body: (TaskShard) throws -> R) rethrows -> R {
        let raw = shards.withUnsafeBufferPointer { $0.unretainedReference(at: TaskTable.index(key)).unsafelyUnwrapped }
        return try Unmanaged<TaskShard>.fromOpaque(raw)._withUnsafeGuaranteedRef(body)
    }

    var allShards: [TaskShard] { shards }
}
