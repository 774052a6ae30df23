import CProgress
import Glibc
import Synchronization

/// One message ready for the wire: allocated once with libwebsockets' LWS_PRE scratch bytes in front and
/// shared by every client it goes to, so a fan-out to N clients serialises once and copies nothing.
final class WireMessage {
    let buffer: UnsafeMutablePointer<UInt8>
    let length: Int

    init(_ bytes: [UInt8]) {
        let pre = CProgress_ws_pre()
        let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: pre + max(bytes.count, 1))
        bytes.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { (storage + pre).update(from: base, count: bytes.count) }
        }
        buffer = storage
        length = bytes.count
    }

    convenience init(_ writer: JSONWriter) {
        self.init(writer.bytes)
    }

    deinit {
        buffer.deallocate()
    }
}

/// A WebSocket client of the listener. Lives on the service thread only.
final class ClientConnection {
    /// What is waiting to be written, oldest first.
    private struct Outgoing {
        var message: WireMessage
        /// The task a replaceable progress update is about (a newer state of the task replaces it in place).
        let replaceableTask: String?
    }

    let id: UInt64
    let wsi: UnsafeMutableRawPointer
    let clientId: String
    let peer: String
    var subscriptions: Set<String> = []
    var wildcard = false
    private var queue: [Outgoing] = []
    private var head = 0
    /// Task id → index in `queue` of its unsent, replaceable progress update.
    private var replaceable: [String: Int] = [:]
    /// Task id → seq of the newest update queued for it, so no state is sent twice or out of order.
    private var lastSeq: [String: UInt64] = [:]
    private(set) var queuedBytes = 0
    /// Set when the connection is to be closed with this code once its queue reaches the front.
    private(set) var closing: (code: Int32, reason: String)?

    init(id: UInt64, wsi: UnsafeMutableRawPointer, clientId: String, peer: String) {
        self.id = id
        self.wsi = wsi
        self.clientId = clientId
        self.peer = peer
    }

    var pendingCount: Int { queue.count - head }

    func isSubscribed(to taskId: String) -> Bool { wildcard || subscriptions.contains(taskId) }

    /// Queues a message. A progress update (`replaceableTask` set) replaces the task's previous unsent one,
    /// so a client that reads slowly gets the latest state per task rather than a backlog.
    func send(_ message: WireMessage, replaceableTask: String? = nil) {
        guard closing == nil else { return }
        if let task = replaceableTask, let index = replaceable[task] {
            queuedBytes += message.length - queue[index].message.length
            queue[index].message = message
            return
        }
        if let task = replaceableTask {
            replaceable[task] = queue.count
        }
        queue.append(Outgoing(message: message, replaceableTask: replaceableTask))
        queuedBytes += message.length
        requestWritable()
    }

    /// An urgent update of a task: queued after everything before it, and no later update may overtake it
    /// by replacing an older entry, so the task's seq only increases on the wire.
    func sendUrgent(_ message: WireMessage, task: String) {
        replaceable[task] = nil
        send(message)
    }

    /// Queues a task's state (or a replayed event) unless the client already has that seq or a newer one.
    func sendProgress(_ message: WireMessage, task: String, seq: UInt64, urgent: Bool) {
        if let last = lastSeq[task], seq <= last { return }
        lastSeq[task] = seq
        if urgent { sendUrgent(message, task: task) } else { send(message, replaceableTask: task) }
    }

    /// Forgets a task's seq once the client no longer watches it.
    func forget(task: String) {
        lastSeq[task] = nil
    }

    /// Forgets the seqs of every task not subscribed by id (the client left "*").
    func forgetAllButSubscriptions() {
        lastSeq = lastSeq.filter { subscriptions.contains($0.key) }
    }

    /// Closes with `code` after what is already queued (or at once when `immediately`).
    func close(code: Int32, reason: String, immediately: Bool = false) {
        guard closing == nil else { return }
        if immediately {
            queue.removeAll()
            head = 0
            replaceable.removeAll()
            queuedBytes = 0
        }
        closing = (code, reason)
        requestWritable()
        // If the close frame cannot be written (the client stopped reading), the connection goes anyway.
        CProgress_ws_close_within(wsi, 5)
    }

    /// Asks libwebsockets for a writable callback. Asked again on every queued message rather than
    /// remembered: libwebsockets folds repeated requests into one, and a remembered "already asked" would stop
    /// the connection for good if one request ever went unanswered.
    private func requestWritable() {
        CProgress_ws_request_writable(wsi)
    }

    /// Writes the next queued message.
    /// - Parameter sent: incremented when a message was written.
    /// - Returns: 1 if more is waiting, 0 if not, -1 to close the connection.
    func writeNext(sent: borrowing Atomic<Int>) -> Int32 {
        guard head < queue.count else {
            if let closing {
                CProgress_ws_set_close(wsi, closing.code, closing.reason)
                return -1
            }
            return 0
        }
        let next = queue[head]
        head += 1
        if let task = next.replaceableTask, replaceable[task] == head - 1 { replaceable[task] = nil }
        queuedBytes -= next.message.length
        if head == queue.count {
            queue.removeAll(keepingCapacity: queue.capacity <= 64)
            head = 0
        } else if head >= 1024 && head * 2 >= queue.count {
            compact()
        }
        guard CProgress_ws_write(wsi, next.message.buffer, next.message.length) == 0 else { return -1 }
        sent.add(1, ordering: .relaxed)
        return head < queue.count || closing != nil ? 1 : 0
    }

    /// Drops the sent prefix of the queue and renumbers the replaceable index.
    private func compact() {
        queue.removeFirst(head)
        replaceable = replaceable.mapValues { $0 - head }
        head = 0
    }
}
