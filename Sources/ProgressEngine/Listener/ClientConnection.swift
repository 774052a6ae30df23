import CProgress
import Glibc
import Synchronization

/// The listener's scratch buffer for writes: the frames of one flush, copied one after the other behind
/// libwebsockets' LWS_PRE bytes, and handed to the socket in one send. Service thread only.
final class WriteBatch {
    static let preferredBytes = 256 << 10
    @exclusivity(unchecked) private(set) var buffer: UnsafeMutablePointer<UInt8>
    @exclusivity(unchecked) private(set) var capacity: Int
    let pre = CProgress_ws_pre()
    /// Compresses frames for clients with permessage-deflate (only with ws_deflate).
    let deflater: OpaquePointer?

    init(deflate: Bool) {
        capacity = WriteBatch.preferredBytes
        buffer = .allocate(capacity: pre + capacity)
        deflater = deflate ? CProgress_deflater_create(6) : nil
    }

    deinit {
        buffer.deallocate()
        CProgress_deflater_destroy(deflater)
    }

    /// Makes room for `bytes` (one frame larger than the preferred size gets a buffer of its own size).
    func reserve(_ bytes: Int) {
        guard bytes > capacity else { return }
        buffer.deallocate()
        capacity = bytes
        buffer = .allocate(capacity: pre + capacity)
    }

    /// Where the frames go.
    var start: UnsafeMutablePointer<UInt8> { buffer + pre }
}

/// Clients with messages queued since the last flush; flushed by the listener at the end of each round
/// (wake, timer, received message). Service thread only.
final class FlushList {
    @exclusivity(unchecked) var clients: [ClientConnection] = []
    /// The service thread's monotonic time at the start of the current round (drain or timer).
    @exclusivity(unchecked) var now: Double = 0
    /// Clients holding states back for their `interval_ms`, by connection id: the listener's timer releases them.
    @exclusivity(unchecked) var holding: [UInt64: ClientConnection] = [:]
}

/// What one client knows of one task: the newest seq queued for it, and where its unsent replaceable
/// update sits in the client's queue. One dictionary lookup per delivery finds it.
/// Its fields fit the 48-byte allocation the slot had before delta mode (one per client and task).
final class TaskSlot {
    @exclusivity(unchecked) var lastSeq: UInt64 = 0
    /// Delta mode: the `DeltaStep.generation` of the last state queued for the client, which a patch must
    /// start from; 0 when that state was no fan-out's (subscribe, replay) or the client has none.
    @exclusivity(unchecked) var generation: UInt64 = 0
    /// Index in the queue of the task's unsent, replaceable progress update; -1 when there is none (a queue
    /// holds at most `Listener.slowClientMaxMessages` plus what was sent since its last compaction).
    @exclusivity(unchecked) var pending: Int32 = -1
    @exclusivity(unchecked) var hasSeq = false
    /// `ClientConnection.wantsDelta` for this task: 0 not known yet, 1 no, 2 yes.
    @exclusivity(unchecked) var deltaMode: UInt8 = 0
    /// With `interval_ms`: when a state of the task was last queued, in ms since the connection opened (0: never).
    @exclusivity(unchecked) var lastQueuedMs: UInt32 = 0
    /// In the client's `leaving` list: left while an update of it was queued.
    @exclusivity(unchecked) var leaving = false

    /// `pending` of a task whose replaceable update is held back by the client's interval (not in the queue).
    static let held: Int32 = -2
}

/// A WebSocket client of the listener. Lives on the service thread only (so its stored variables, like those
/// of the other classes here, skip the runtime's exclusivity check: `@exclusivity(unchecked)`).
final class ClientConnection {
    /// What is waiting to be written, oldest first.
    private struct Outgoing {
        var message: WireMessage
        /// The task of a replaceable progress update (a newer state of the task replaces it in place).
        let slot: TaskSlot?
    }

    let id: UInt64
    let wsi: UnsafeMutableRawPointer
    let clientId: String
    let peer: String
    @exclusivity(unchecked) var subscriptions: Set<IdKey> = []
    /// permessage-deflate was negotiated: frames go out compressed (`WireMessage.deflated`).
    @exclusivity(unchecked) var deflate = false
    /// With `deflate`, when the client keeps its window between messages: small messages are compressed for
    /// this client against the last one it got (docs/API.md, "Compression"); nil otherwise.
    @exclusivity(unchecked) var window: OpaquePointer?
    @exclusivity(unchecked) var wildcard = false
    /// Ever subscribed with `delta` (then `wantsDelta` decides per task).
    @exclusivity(unchecked) var usesDelta = false
    /// Tasks subscribed by id with `delta`; `wildcardDelta`: "*" was subscribed with it.
    @exclusivity(unchecked) var deltaIds: Set<IdKey> = []
    @exclusivity(unchecked) var wildcardDelta = false
    /// A "*" subscribe's current states not queued yet.
    @exclusivity(unchecked) var wildcardStates: WildcardStates?
    /// Messages the client sent while `wildcardStates` was pending, handled once the last state is queued, so that
    /// every reply follows the states of the subscribe before it (as the pong after a resubscribe promises).
    @exclusivity(unchecked) var deferred: [(bytes: [UInt8], binary: Bool)] = []
    @exclusivity(unchecked) var deferredBytes = 0
    /// The connection is not read while too much is deferred (`setReading`).
    @exclusivity(unchecked) private(set) var readingPaused = false
    /// Messages ever written; with `pendingCount`, the count of messages ever queued. The next slice of
    /// `wildcardStates` goes once everything queued up to the previous one is written (`wildcardMark`), whatever
    /// else the client is sent meanwhile.
    @exclusivity(unchecked) private(set) var writtenTotal = 0
    @exclusivity(unchecked) var wildcardMark = 0
    @exclusivity(unchecked) private var queue: [Outgoing] = []
    @exclusivity(unchecked) private var head = 0
    /// Task id → what this client was sent of it, so no state is sent twice or out of order.
    @exclusivity(unchecked) private var slots: [IdKey: TaskSlot] = [:]
    /// Tasks the client stopped watching while an update of theirs was still queued: their slots go once the queue
    /// is written out (one pass then, not one per write).
    @exclusivity(unchecked) private var leaving: [IdKey] = []
    @exclusivity(unchecked) private(set) var queuedBytes = 0
    /// Set when the connection is to be closed with this code once its queue reaches the front.
    @exclusivity(unchecked) private(set) var closing: (code: Int32, reason: String)?
    private let flushList: FlushList
    /// On `flushList` now.
    fileprivate(set) var scheduled = false
    /// False once libwebsockets reported the connection closed.
    @exclusivity(unchecked) var isOpen = true
    /// A write outside the writable callback failed: the next callback closes the connection.
    @exclusivity(unchecked) private var writeFailed = false

    /// The client's `interval_ms` (its latest subscribe that gave one): at most one state of a task per interval
    /// goes to it, the latest; 0: every state (docs/API.md, "Update interval").
    @exclusivity(unchecked) var intervalMs: UInt32 = 0
    /// The states held back by the interval, one per task (by its slot), each replaced by the task's next.
    @exclusivity(unchecked) private var held: [ObjectIdentifier: (message: WireMessage, slot: TaskSlot)] = [:]
    /// When the earliest held state is due (the service thread's monotonic seconds); infinity when none.
    @exclusivity(unchecked) private(set) var heldDue = Double.infinity
    private let openedAt: Double

    init(id: UInt64, wsi: UnsafeMutableRawPointer, clientId: String, peer: String, flushList: FlushList) {
        self.id = id
        self.wsi = wsi
        self.clientId = clientId
        self.peer = peer
        self.flushList = flushList
        openedAt = flushList.now
    }

    deinit {
        CProgress_window_destroy(window)
    }

    var pendingCount: Int { queue.count - head }

    func isSubscribed(to taskId: String) -> Bool { wildcard || subscriptions.contains(IdKey(taskId)) }

    /// Queues a message that is never replaced (responses, logs, urgent updates).
    func send(_ message: WireMessage) {
        enqueue(message, slot: nil)
    }

    private func enqueue(_ message: WireMessage, slot: TaskSlot?) {
        guard closing == nil else { return }
        if let slot { slot.pending = Int32(queue.count) }
        queue.append(Outgoing(message: message, slot: slot))
        queuedBytes += message.length
        if !scheduled {
            scheduled = true
            flushList.clients.append(self)
        }
    }

    /// Queues a task's state (or a replayed event) unless the client already has that seq or a newer one.
    /// A non-urgent update replaces the task's previous unsent one in place, so a client that reads slowly
    /// gets the latest state per task rather than a backlog. An urgent one (stage change, terminal state,
    /// replayed event) is queued after everything before it, and no later update may overtake it by
    /// replacing an older entry, so the task's seq only increases on the wire.
    /// `again`: the state goes even when the client was last sent that same seq (a delta subscribe's current state:
    /// that seq may have gone as a patch, and a delta client whose base went subscribes again to get the whole state,
    /// docs/API.md "Delta updates"); never an older one.
    func sendProgress(_ message: WireMessage, task: String, seq: UInt64, urgent: Bool, again: Bool = false) {
        sendProgress(message, slot: slot(task), seq: seq, urgent: urgent, again: again)
    }

    private func sendProgress(_ message: WireMessage, slot: TaskSlot, seq: UInt64, urgent: Bool, again: Bool = false) {
        // A full state outside the delta path: the next fan-out's patch does not start from it.
        slot.generation = 0
        guard advances(slot, to: seq, again: again) else { return }
        queueState(message, replacement: message, slot: slot, urgent: urgent)
    }

    /// Whether `seq` is newer than what the client has of the task (or, with `again`, that same one); notes it as
    /// the newest when it is.
    private func advances(_ slot: TaskSlot, to seq: UInt64, again: Bool = false) -> Bool {
        if slot.hasSeq && (seq < slot.lastSeq || (seq == slot.lastSeq && !again)) { return false }
        slot.hasSeq = true
        slot.lastSeq = seq
        return true
    }

    /// The ordering rules of both paths: an urgent state is queued after everything before it (the task's held
    /// state first); a non-urgent one replaces the task's unsent state, queued or held, with `replacement`, else is
    /// queued as `fresh` unless the client's interval holds it back.
    private func queueState(_ fresh: WireMessage, replacement: WireMessage, slot: TaskSlot, urgent: Bool) {
        if urgent {
            releaseHeld(slot)
            slot.pending = -1
            if intervalMs > 0 { slot.lastQueuedMs = roundMs }  // the interval counts from any state sent
            enqueue(fresh, slot: nil)
        } else if slot.pending == TaskSlot.held {
            held[ObjectIdentifier(slot)]?.message = replacement
        } else if slot.pending >= 0 {
            guard closing == nil else { return }
            queuedBytes += replacement.length - queue[Int(slot.pending)].message.length
            queue[Int(slot.pending)].message = replacement
        } else if !holdsBack(fresh, slot: slot) {
            enqueue(fresh, slot: slot)
        }
    }

    /// Whether the task's updates go out as merge patches: its subscription by id decides, else "*"'s.
    func wantsDelta(_ task: String) -> Bool {
        let key = IdKey(task)
        return subscriptions.contains(key) ? deltaIds.contains(key) : wildcardDelta
    }

    /// After a subscribe or unsubscribe of a client that uses delta: what `wantsDelta` answers may have changed,
    /// so each slot asks again at its next fan-out. Once per message, over the client's slots.
    func forgetDeltaModes() {
        for slot in slots.values { slot.deltaMode = 0 }
    }

    /// Records the delta choice of a subscribe for the tasks it names.
    func setDelta(_ delta: Bool, for ids: [String]) {
        for task in ids {
            if task == "*" {
                wildcardDelta = delta
            } else if delta {
                deltaIds.insert(IdKey(task))
            } else {
                deltaIds.remove(IdKey(task))
            }
        }
    }

    /// A fan-out's state for a client that subscribed something with `delta`: as `sendDelta` when the task
    /// is a delta subscription (`step` builds the shared patch, at most once per fan-out), else as
    /// `sendProgress`. One slot lookup; the task's choice is cached in its slot.
    func sendFanout(_ full: WireMessage, task: String, seq: UInt64, urgent: Bool, step: () -> DeltaStep) {
        let slot = self.slot(task)
        if slot.deltaMode == 0 { slot.deltaMode = wantsDelta(task) ? 2 : 1 }
        if slot.deltaMode == 2 {
            sendDelta(full: full, step: step(), slot: slot, seq: seq, urgent: urgent)
        } else {
            sendProgress(full, slot: slot, seq: seq, urgent: urgent)
        }
    }

    /// A fan-out's state for a delta subscriber: the shared patch when the client holds exactly its base,
    /// else the full state (which becomes the client's base). Same ordering rules as `sendProgress`; a
    /// non-urgent state that replaces an unsent one is always the full state, since the client never gets the
    /// replaced state the patch would start from.
    private func sendDelta(full: WireMessage, step: DeltaStep, slot: TaskSlot, seq: UInt64, urgent: Bool) {
        guard advances(slot, to: seq) else { return }
        let fits = step.patch != nil && step.baseGeneration != 0 && slot.generation == step.baseGeneration
        slot.generation = step.generation
        // An urgent patch goes after the task's held state, the one it starts from.
        queueState(fits ? step.patch! : full, replacement: full, slot: slot, urgent: urgent)
    }

    // MARK: - The update interval

    /// The round's time in ms since the connection opened, never 0 (which means "never queued").
    private var roundMs: UInt32 { UInt32(truncatingIfNeeded: Int64((flushList.now - openedAt) * 1000)) | 1 }

    /// With an interval: holds a replaceable state back when the task's last one was queued less than the interval
    /// ago, else notes that it is queued now. Without: false.
    private func holdsBack(_ message: WireMessage, slot: TaskSlot) -> Bool {
        guard intervalMs > 0 else { return false }
        let now = roundMs
        let since = now &- slot.lastQueuedMs
        guard slot.lastQueuedMs != 0, since < intervalMs, closing == nil else {
            slot.lastQueuedMs = now
            return false
        }
        held[ObjectIdentifier(slot)] = (message, slot)
        slot.pending = TaskSlot.held
        heldDue = min(heldDue, flushList.now + Double(intervalMs - since) / 1000)
        flushList.holding[id] = self
        return true
    }

    /// Queues the task's held state, if it has one (before an urgent state of the task, or when it is due).
    private func releaseHeld(_ slot: TaskSlot) {
        guard slot.pending == TaskSlot.held, let entry = held.removeValue(forKey: ObjectIdentifier(slot)) else { return }
        slot.pending = -1
        slot.lastQueuedMs = roundMs
        enqueue(entry.message, slot: slot)
    }

    /// The listener's timer: queues the held states whose interval is over; `heldDue` becomes the next one's time.
    func releaseDueStates() {
        let now = roundMs
        var next = UInt32.max
        for entry in held.values {
            let since = now &- entry.slot.lastQueuedMs
            // Within a millisecond counts as due (the timer fires on the ms); no interval any more: all due.
            if intervalMs <= 1 || since >= intervalMs - 1 {
                releaseHeld(entry.slot)
            } else {
                next = min(next, intervalMs - since)
            }
        }
        heldDue = held.isEmpty ? .infinity : flushList.now + Double(next) / 1000
    }

    /// The task's slot, made on first use.
    private func slot(_ task: String) -> TaskSlot {
        let key = IdKey(task)
        if let known = slots[key] { return known }
        let slot = TaskSlot()
        slots[key] = slot
        return slot
    }

    /// Forgets a task's seq once the client no longer watches it (an unsent update of it still goes, and
    /// is still replaced by a newer one). A state the interval holds back is dropped: kept, it would go out after
    /// the current state a later subscribe sends, a seq going back.
    func forget(task: String) { forget(IdKey(task)) }

    private func forget(_ task: IdKey) {
        guard let slot = slots[task] else { return }
        if slot.pending == TaskSlot.held {
            held[ObjectIdentifier(slot)] = nil
            slot.pending = -1
        }
        if slot.pending >= 0 {
            slot.hasSeq = false
            if !slot.leaving {
                slot.leaving = true
                leaving.append(task)
            }
        } else {
            slots[task] = nil
        }
    }

    /// Once the queue is written out: the slots of tasks left with an update queued, unless the client watches the
    /// task again.
    private func dropLeftSlots() {
        for task in leaving {
            guard let slot = slots[task] else { continue }
            slot.leaving = false
            if slot.pending == -1 && !wildcard && !subscriptions.contains(task) { slots[task] = nil }
        }
        leaving.removeAll()
    }

    /// A subscribe set the interval: states held longer than the new one allows go at once (all of them for 0).
    func intervalChanged(to ms: UInt32) {
        intervalMs = ms
        if !held.isEmpty { releaseDueStates() }
    }

    /// Forgets a task that expired: a new task under its id starts again at a low seq. An unsent update of the
    /// expired task still goes.
    func forgetExpired(task: String) {
        slots[IdKey(task)] = nil
    }

    var taskSlotCount: Int { slots.count }

    /// Forgets the seqs of every task not subscribed by id (the client left "*").
    func forgetAllButSubscriptions() {
        for task in slots.keys where !subscriptions.contains(task) { forget(task) }
    }

    /// Closes with `code` after what is already queued (or at once when `immediately`).
    func close(code: Int32, reason: String, immediately: Bool = false) {
        guard closing == nil else { return }
        held.removeAll()
        heldDue = .infinity
        wildcardStates = nil
        deferred.removeAll()
        deferredBytes = 0
        if immediately {
            for slot in slots.values { slot.pending = -1 }
            queue.removeAll()
            head = 0
            queuedBytes = 0
        }
        closing = (code, reason)
        // The close frame is written from the writable callback, after whatever is still queued.
        CProgress_ws_request_writable(wsi)
        // If the close frame cannot be written (the client stopped reading), the connection goes anyway.
        CProgress_ws_close_within(wsi, 5)
    }

    /// End of a round, outside this connection's callbacks: writes what is queued at once unless
    /// libwebsockets still holds part of an earlier write (then its writable callback continues).
    func flushNow(_ batch: WriteBatch, sent: borrowing Atomic<Int>) {
        scheduled = false
        // Nothing to write (a pending close goes from the writable callback close() asked for), or
        // libwebsockets still holds part of an earlier write and will call writable itself.
        guard isOpen, !writeFailed, CProgress_ws_buffered(wsi) == 0 else { return }
        guard head < queue.count else {
            // A "*" subscribe's states go from the writable callback, a slice at a time.
            if wildcardStates != nil { CProgress_ws_request_writable(wsi) }
            return
        }
        switch writeQueued(batch, sent: sent) {
        case 0: break
        case 1: CProgress_ws_request_writable(wsi)
        default:
            writeFailed = true
            CProgress_ws_request_writable(wsi)
        }
    }

    // MARK: - Cache hints for the listener's loops over clients

    /// Calls `body` on each of `clients` in order, with cache hints: each send's kernel work evicts the next
    /// clients' state, so it is fetched while the current one is served, in the order the pointers lead. The
    /// object two ahead is hinted through its unretained reference (a retain would write its header, the miss
    /// the hint is for); `ahead` hints what the object one ahead points to.
    static func serve(_ clients: [ClientConnection], ahead: (ClientConnection) -> Void,
                      _ body: (ClientConnection) -> Void) {
        clients.withUnsafeBufferPointer { buffer in
            for i in buffer.indices {
                if i + 2 < buffer.count, let next = buffer.unretainedReference(at: i + 2) {
                    CProgress_prefetch(next, 4)
                }
                if i + 1 < buffer.count { ahead(buffer[i + 1]) }
                body(buffer[i])
            }
        }
    }

    /// What `flushNow` reads behind the object: the queue's next entry and libwebsockets' connection.
    func prefetchForFlush() {
        queue.withUnsafeBufferPointer { if let base = $0.baseAddress { CProgress_prefetch(base + head, 1) } }
        CProgress_prefetch(wsi, 4)
    }

    /// The slot table a fan-out looks the task up in. A native Dictionary is one reference to its storage (a
    /// header, then the bucket bitmap, keys and values); with any other layout there is no hint.
    func prefetchSlots() {
        guard MemoryLayout<[IdKey: TaskSlot]>.size == MemoryLayout<UnsafeRawPointer>.size else { return }
        CProgress_prefetch(unsafeBitCast(slots, to: UnsafeRawPointer.self), 4)
    }

    /// Stops or resumes reading the client's messages.
    func setReading(_ reading: Bool) {
        guard readingPaused == reading else { return }
        readingPaused = !reading
        CProgress_ws_set_reading(wsi, reading ? 1 : 0)
    }

    /// Nothing stops this connection's writes: no failed write, no close on its way.
    var canWrite: Bool { !writeFailed && closing == nil }

    /// The writable callback: writes what is queued.
    /// - Returns: 1 if more is waiting, 0 if not, -1 to close the connection.
    func writable(_ batch: WriteBatch, sent: borrowing Atomic<Int>) -> Int32 {
        if writeFailed { return -1 }
        return writeQueued(batch, sent: sent)
    }

    /// Writes the queued frames, as many as fit one batch, in one send (libwebsockets keeps and later sends
    /// whatever the socket does not take at once, ahead of anything else on the connection).
    /// - Returns: 1 if more is waiting (or a close), 0 if not, -1 to close the connection.
    private func writeQueued(_ batch: WriteBatch, sent: borrowing Atomic<Int>) -> Int32 {
        guard head < queue.count else {
            if let closing {
                CProgress_ws_set_close(wsi, closing.code, closing.reason)
                return -1
            }
            // A slice of a "*" subscribe's states may queue nothing (the client has them all): on to the next.
            return wildcardStates != nil ? 1 : 0
        }
        var used = 0
        var count = 0
        while head < queue.count {
            let message = queue[head].message
            if let window, message.length > 0, message.length <= windowMessageMax {
                let bound = 4 + CProgress_window_bound(message.length)
                if used > 0 && used + bound > batch.capacity { break }
                if used == 0 { batch.reserve(bound) }
                used += message.writeDeflated(with: window, to: batch.start + used)
            } else {
                let (frame, frameLength) = deflate ? message.deflated(with: batch.deflater) : (message.frame, message.frameLength)
                if used > 0 && used + frameLength > batch.capacity { break }
                if used == 0 { batch.reserve(frameLength) }
                (batch.start + used).update(from: frame, count: frameLength)
                used += frameLength
                // A compressed message that did not go through the window is in the client's window now.
                if let window, frame != message.frame { CProgress_window_forget(window) }
            }
            count += 1
            if let slot = queue[head].slot, Int(slot.pending) == head { slot.pending = -1 }
            queuedBytes -= message.length
            head += 1
            writtenTotal += 1
        }
        if head == queue.count {
            queue.removeAll(keepingCapacity: queue.capacity <= 64)
            head = 0
            if !leaving.isEmpty { dropLeftSlots() }
        } else if head >= 1024 && head * 2 >= queue.count {
            compact()
        }
        guard CProgress_ws_write_frames(wsi, batch.buffer, used) == 0 else { return -1 }
        sent.add(count, ordering: .relaxed)
        return head < queue.count || closing != nil || wildcardStates != nil ? 1 : 0
    }

    /// Drops the sent prefix of the queue and renumbers the replaceable entries.
    private func compact() {
        for i in head..<queue.count {
            if let slot = queue[i].slot, Int(slot.pending) == i { slot.pending = Int32(i - head) }
        }
        queue.removeFirst(head)
        head = 0
    }
}
