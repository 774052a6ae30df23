import CProgress
import Glibc
import Synchronization

/// The embedded libwebsockets listener: WebSocket + REST on one port (SPEC §7, §8).
///
/// Threads: one service thread, started by `init` and joined by `stop()`, owns every socket, every
/// `ClientConnection` and all subscription state. Other threads only call `noteChange` / `noteLog`, which
/// append to a locked inbox and wake the service thread with `lws_cancel_service()` (at most one wake in
/// flight). Nothing a runner calls waits on a socket. Its stored variables are `@exclusivity(unchecked)`: one
/// thread owns them, so the runtime's per-access check would only cost.
final class Listener: ChangeConsumer, @unchecked Sendable {
    unowned let engine: any ListenerSource
    @exclusivity(unchecked) private(set) var port = -1
    let throttle: Double
    let maxSubscriptions: Int
    let maxConnections: Int
    let maxConnectionsPerIP: Int?
    let origins: OriginPolicy
    let authToken: String?
    let metrics = ListenerMetrics()
    /// A client whose unsent messages exceed either bound is closed (4008 "client too slow"): it would
    /// otherwise hold memory without ever reading. Both bounds grow with the tasks the client watches: a task's
    /// unsent state is replaced by its next one, so one state per watched task (a `"*"` subscribe's current
    /// states of 10,000 tasks, say) is what any client may have queued; the bounds are for what comes on top
    /// (logs, urgent states).
    static let slowClientMaxMessages = 10_000
    static let slowClientMaxBytes = 32 << 20
    /// What each watched task adds to the bytes bound: about twice a TaskProgress of an image task.
    static let slowClientBytesPerTask = 4096
    static let maxQueuedLogs = 100_000

    @exclusivity(unchecked) private var c: OpaquePointer?
    @exclusivity(unchecked) private var thread = pthread_t()
    @exclusivity(unchecked) private var threadStarted = false
    private let stopping = Atomic<Bool>(false)
    private let wakePending = Atomic<Bool>(false)
    /// Changed task ids and log entries from any thread, drained by the service thread.
    private let inbox = Locked(Inbox())

    struct Inbox {
        var changed: [String] = []
        var logs: [(String, LogEntry)] = []
        var droppedLogs = 0
        /// Tasks removed after retention_seconds: clients forget what they were sent of them.
        var expired: [String] = []
        /// Set by `stop()`: no wake may reach the libwebsockets context any more (it is being destroyed).
        var closed = false
    }

    // Service-thread state.
    @exclusivity(unchecked) var connections: [UInt64: ClientConnection] = [:]
    /// Clients with something queued since the last flush, written at the end of the round.
    private let flushList = FlushList()
    private let batch: WriteBatch
    /// Task id → its subscribers by connection id (the connections themselves, so a fan-out looks nothing up).
    @exclusivity(unchecked) private var subscribers: [IdKey: [UInt64: ClientConnection]] = [:]
    @exclusivity(unchecked) private var wildcards: [UInt64: ClientConnection] = [:] {
        didSet {
            wildcardsChanged = true
            if wildcards.isEmpty { wildcardList = [] }  // no closed client kept alive by the list
        }
    }
    /// `wildcards`' clients in an array, for the fan-out's loop (`forEachSubscriber`); rebuilt after a change.
    @exclusivity(unchecked) private var wildcardList: [ClientConnection] = []
    @exclusivity(unchecked) private var wildcardsChanged = false
    /// Connections that ever subscribed with `delta`; while none is open the fan-out keeps no delta bases.
    @exclusivity(unchecked) private var deltaConnections = 0
    /// Per task, the last state sent to delta subscribers: the base of the next merge patch.
    private let deltas = DeltaBases()
    @exclusivity(unchecked) private var nextConnectionId: UInt64 = 1
    /// Open connections per peer address (kept only with max_connections_per_ip).
    @exclusivity(unchecked) private var connectionsByPeer: [String: Int] = [:]
    /// Throttled task ids and when to look at them again (monotonic seconds).
    @exclusivity(unchecked) private var deferred: [IdKey: Double] = [:]
    @exclusivity(unchecked) private var timerDue = Double.infinity
    /// `EngineCore.eventTime()` for the fan-outs of one round (drain or timer); nil between rounds.
    @exclusivity(unchecked) private var etaTime: Double?

    /// Binds and starts the service thread.
    /// - Throws: `EngineError.io` if the address cannot be bound or the thread cannot start.
    init(engine: any ListenerSource, address: ListenAddress) throws {
        self.engine = engine
        throttle = Double(engine.config.throttleMs) / 1000
        maxSubscriptions = engine.config.maxSubscriptions
        maxConnections = engine.config.maxConnections
        maxConnectionsPerIP = engine.config.maxConnectionsPerIP
        origins = OriginPolicy(allowed: engine.config.allowedOrigins)
        authToken = engine.config.authToken
        batch = WriteBatch(deflate: engine.config.wsDeflate)

        FileLimit.raise(toHold: maxConnections)
        var config = CProgress_listener_config()
        config.port = Int32(address.port)
        config.max_message_bytes = engine.config.maxMessageBytes
        config.max_body_bytes = Routes.maxBodyBytes
        config.header_timeout_secs = 10
        config.deflate = engine.config.wsDeflate ? 1 : 0
        config.callbacks = Listener.callbacks
        // Unretained: the listener outlives the C context, which `stop()` destroys.
        config.callbacks.ctx = Unmanaged.passUnretained(self).toOpaque()
        var boundPort: Int32 = -1
        var err = [CChar](repeating: 0, count: 256)
        var handle: OpaquePointer?
        let rc: Int32 = withOptionalCString(address.host) { iface in
            config.iface = iface
            return CProgress_listener_create(&config, &handle, &boundPort, &err, err.count)
        }
        guard rc == 0, let handle else {
            let why = String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw EngineError.io("listen: \(why); pick another port (0 = any free one) or address")
        }
        c = handle
        port = Int(boundPort)

        do {
            thread = try startThread("the listener thread", name: "pe-listener") { [self] in self.serviceLoop() }
        } catch {
            CProgress_listener_destroy(handle)
            c = nil
            throw error
        }
        threadStarted = true
    }

    private func serviceLoop() {
        while !stopping.load(ordering: .acquiring) {
            if CProgress_listener_service(c) < 0 { break }
        }
    }

    /// Stops the service thread, closes every connection and the listening socket. Idempotent; called by
    /// `EngineCore.close()` from the closing thread.
    func stop() {
        guard threadStarted else { return }
        threadStarted = false
        stopping.store(true, ordering: .releasing)
        // The last wake. Under the inbox lock, as every wake is: a wake from another thread either finished
        // before this (the context was alive) or sees `closed` and leaves the context alone.
        inbox.withLock { inbox in
            inbox.closed = true
            CProgress_listener_wake(c)
        }
        pthread_join(thread, nil)
        // The service thread is gone: destroying the context here runs the close callbacks on this thread.
        CProgress_listener_destroy(c)
        c = nil
        connections.removeAll()
        deltas.removeAll()
        subscribers.removeAll()
        wildcards.removeAll()
        // Clients refer to the flush list: a client left on it (scheduled by a message handled in its writable
        // callback, or holding states for its interval) would keep both alive.
        flushList.clients.removeAll()
        flushList.holding.removeAll()
    }

    /// In a forked child, which has no service thread: closes the child's copies of the listener's sockets without
    /// libwebsockets (see `CProgress_listener_forget_in_child`); the port and its clients stay the parent's. The
    /// caller then abandons this object (`abandonInChild`): `stop()` must never run here.
    func forgetInChild() {
        guard threadStarted, let c else { return }
        CProgress_listener_forget_in_child(c, Int32(port))
    }

    // MARK: - From any thread

    /// A task entered the listener's feed (`ChangeFeed.fanout`); called under its shard lock.
    func enqueue(taskId: String) {
        inbox.withLock { $0.changed.append(taskId) }
        wake()
    }

    /// The time a task entered the feed, on the clock the throttle uses (`FeedSlot.take`).
    func queueTime() -> Double { engine.monotonic.now() }

    /// Tasks the engine removed after retention_seconds (called by the maintenance thread's sweep).
    func noteExpired(taskIds: [String]) {
        guard !taskIds.isEmpty else { return }
        inbox.withLock { $0.expired.append(contentsOf: taskIds) }
        wake()
    }

    /// A log entry for the task's subscribers.
    func noteLog(taskId: String, entry: LogEntry) {
        let queued = inbox.withLock { inbox -> Bool in
            guard inbox.logs.count < Listener.maxQueuedLogs else {
                inbox.droppedLogs += 1
                return false
            }
            inbox.logs.append((taskId, entry))
            return true
        }
        if queued { wake() }
    }

    /// Wakes the service thread unless a wake is already on its way. The context is only touched under the
    /// inbox lock and only until `stop()` marked the inbox closed, so a change that races `stop()` can never
    /// call `lws_cancel_service()` on a context being destroyed.
    private func wake() {
        guard !wakePending.exchange(true, ordering: .acquiringAndReleasing) else { return }
        inbox.withLock { inbox in
            if !inbox.closed, let c { CProgress_listener_wake(c) }
        }
    }

    // MARK: - Service thread: fan-out

    /// A round: what the inbox holds, fanned out, then one send per client. Changes that arrive while the round
    /// fans out (a runner updating many tasks at one instant wakes this thread at its first call) join the round,
    /// up to `drainPasses` passes: each client then gets the instant's frames in one send, and every task of the
    /// instant is taken at the round's time, so none is held by its throttle at the next instant for having been
    /// taken a round later. A task already taken in this round waits for the next one: encoding it again would only
    /// replace the frame it has queued (a runner stepping faster than the listener sends).
    fileprivate func drainInbox() {
        etaTime = nil
        let now = engine.monotonic.now()
        flushList.now = now
        var takenThisRound: Set<IdKey>?  // made only when a second pass has changes
        var nextRound: [String] = []
        var firstPass: [String] = []
        for pass in 0..<Listener.drainPasses {
            wakePending.store(false, ordering: .releasing)
            let (changed, logs, dropped, expired) = inbox.withLock { inbox -> ([String], [(String, LogEntry)], Int, [String]) in
                defer {
                    inbox.changed.removeAll(keepingCapacity: true)
                    inbox.logs.removeAll(keepingCapacity: true)
                    inbox.droppedLogs = 0
                    inbox.expired.removeAll()
                }
                return (inbox.changed, inbox.logs, inbox.droppedLogs, inbox.expired)
            }
            if changed.isEmpty && logs.isEmpty && expired.isEmpty && dropped == 0 { break }
            for id in expired { forgetExpired(taskId: id) }
            metrics.droppedLogs.add(dropped, ordering: .relaxed)
            var fresh = false
            for id in changed {
                if pass > 0 {
                    if takenThisRound == nil { takenThisRound = Set(firstPass.map(IdKey.init)) }
                    guard takenThisRound!.insert(IdKey(id)).inserted else {
                        nextRound.append(id)
                        continue
                    }
                }
                fresh = true
                fanOut(taskId: id, now: now)
            }
            for (id, entry) in logs { fanOutLog(taskId: id, entry: entry) }
            if pass == 0 { firstPass = changed }
            // Only tasks taken already (the runner outpaces the round): send what the round has.
            if pass > 0 && !fresh { break }
        }
        armTimer(now: now)
        flush()
        if !nextRound.isEmpty {
            // Still queued in the change feed (nothing took them): the next round does, woken now.
            inbox.withLock { $0.changed.append(contentsOf: nextRound) }
            wake()
        }
    }

    /// Passes of one round over the inbox (`drainInbox`): enough for a burst, bounded so that a steady stream
    /// cannot hold the round's sends back.
    static let drainPasses = 4

    /// Writes what each client was sent during this round: one send per client with all its new frames,
    /// straight from the service thread rather than a writable callback (which would cost another pass of
    /// the event loop per round).
    fileprivate func flush() {
        guard !flushList.clients.isEmpty else { return }
        ClientConnection.serve(flushList.clients, ahead: { $0.prefetchForFlush() }) {
            $0.flushNow(batch, sent: metrics.messagesSent)
        }
        flushList.clients.removeAll(keepingCapacity: flushList.clients.capacity <= 4096)
    }

    fileprivate func timerFired() {
        timerDue = .infinity
        etaTime = nil
        let now = engine.monotonic.now()
        flushList.now = now
        let due = deferred.filter { $0.value <= now + 0.0005 }.map(\.key)
        for key in due {
            deferred[key] = nil
            fanOut(taskId: key.id, now: now)
        }
        // States held back by clients' intervals (after the fan-outs, which may have replaced them).
        for (id, client) in flushList.holding where client.heldDue <= now + 0.0005 {
            client.releaseDueStates()
            if client.heldDue == .infinity { flushList.holding[id] = nil }
        }
        armTimer(now: now)
        flush()
    }

    private func armTimer(now: Double) {
        var next = deferred.values.min() ?? .infinity
        for client in flushList.holding.values { next = min(next, client.heldDue) }
        guard next < timerDue, next.isFinite else { return }
        timerDue = next
        CProgress_listener_set_timer(c, Int64(max(0, next - now) * 1e6) + 1)
    }

    private func isWatched(_ taskId: String) -> Bool {
        !wildcards.isEmpty || subscribers[IdKey(taskId)]?.isEmpty == false
    }

    private func fanOut(taskId: String, now: Double) {
        switch engine.takeFanout(id: taskId, now: now, throttle: throttle, watched: isWatched(taskId)) {
        case .nothing:
            return
        case let .later(due):
            let key = IdKey(taskId)
            deferred[key] = min(deferred[key] ?? .infinity, due)
        case .send(let snapshot, let urgent, let held):
            // The engine's time for ETAs is read once per round of fan-outs (it visits every shard).
            if etaTime == nil { etaTime = engine.eventTime() }
            deferred[IdKey(taskId)] = nil
            for state in held { send(state, taskId: taskId, urgent: true) }
            send(snapshot, taskId: taskId, urgent: urgent)
        }
    }

    private func send(_ state: TaskSnapshot, taskId: String, urgent: Bool) {
        var snapshot = state
        snapshot.eta = engine.estimate(snapshot, now: etaTime!)
        metrics.fanouts.add(1, ordering: .relaxed)
        guard deltaConnections > 0 else {
            // No client asked for deltas: one frame, and no base kept.
            let message = WireMessage(Messages.progressUpdate(snapshot))
            forEachSubscriber(of: taskId) { $0.sendProgress(message, task: taskId, seq: snapshot.seq, urgent: urgent) }
            return
        }
        let (writer, data) = Messages.progressUpdateAndData(snapshot)
        let full = WireMessage(writer)
        // Built at the first delta subscriber, once for all of them.
        var step: DeltaStep?
        let seq = snapshot.seq
        let terminal = snapshot.status.isTerminal
        forEachSubscriber(of: taskId) { client in
            guard client.usesDelta else { return client.sendProgress(full, task: taskId, seq: seq, urgent: urgent) }
            client.sendFanout(full, task: taskId, seq: seq, urgent: urgent) {
                if let step { return step }
                let made = deltas.advance(taskId: taskId, seq: seq, message: writer.bytes, data: data, terminal: terminal,
                                          metrics: metrics)
                step = made
                return made
            }
        }
        // No delta subscriber took this state: nobody holds it as a base, so none is kept.
        if step == nil { deltas.forget(taskId: taskId) }
    }

    /// A task is gone: no client keeps its seq (a new task under the same id starts again at a low seq), and
    /// nothing is deferred for it.
    private func forgetExpired(taskId: String) {
        deferred[IdKey(taskId)] = nil
        deltas.forget(taskId: taskId)
        for client in wildcards.values { client.forgetExpired(task: taskId) }
        if let watching = subscribers[IdKey(taskId)] {
            for client in watching.values { client.forgetExpired(task: taskId) }
        }
    }

    private func fanOutLog(taskId: String, entry: LogEntry) {
        guard isWatched(taskId) else { return }
        let message = WireMessage(Messages.taskLog(taskId: taskId, entry: entry))
        forEachSubscriber(of: taskId) { $0.send(message) }
    }

    private func forEachSubscriber(of taskId: String, _ body: (ClientConnection) -> Void) {
        if wildcardsChanged {
            wildcardList = Array(wildcards.values)
            wildcardsChanged = false
        }
        ClientConnection.serve(wildcardList, ahead: { $0.prefetchSlots() }) { deliver($0, body) }
        guard let watching = subscribers[IdKey(taskId)] else { return }
        for (id, client) in watching where wildcards.isEmpty || wildcards[id] == nil { deliver(client, body) }
    }

    private func deliver(_ client: ClientConnection, _ body: (ClientConnection) -> Void) {
        body(client)
        let tasks = client.taskSlotCount
        if client.pendingCount > Listener.slowClientMaxMessages + tasks
            || client.queuedBytes > Listener.slowClientMaxBytes + tasks * Listener.slowClientBytesPerTask {
            metrics.slowClientsClosed.add(1, ordering: .relaxed)
            client.close(code: 4008, reason: "client too slow: \(client.pendingCount) messages unread", immediately: true)
        }
    }

    // MARK: - Service thread: connections and subscriptions

    fileprivate func open(wsi: UnsafeMutableRawPointer, path: String, query: [String: String], authorization: String,
                          origin: String, peer: String) -> UInt64 {
        let id = nextConnectionId
        nextConnectionId += 1
        let clientId = query["client_id"].flatMap { $0.isEmpty ? nil : $0 } ?? "client-\(id)"
        let client = ClientConnection(id: id, wsi: wsi, clientId: clientId, peer: peer, flushList: flushList)
        let deflateMode = engine.config.wsDeflate ? CProgress_ws_deflate_mode(wsi) : 0
        client.deflate = deflateMode != 0
        if deflateMode == 2 { client.window = CProgress_window_create() }
        connections[id] = client
        metrics.connectionsOpened.add(1, ordering: .relaxed)
        var fromPeer = 0
        if maxConnectionsPerIP != nil {
            fromPeer = (connectionsByPeer[peer] ?? 0) + 1
            connectionsByPeer[peer] = fromPeer
        }
        if path != Routes.webSocketPath {
            client.close(code: 4404, reason: "no WebSocket endpoint at \(path); use \(Routes.webSocketPath)")
        } else if !isAuthorized(authorization: authorization, query: query) {
            client.close(code: 4401, reason: "unauthorized: pass Authorization: Bearer TOKEN or ?token=TOKEN")
        } else if !origins.allowsWebSocket(origin: origin) {
            client.close(code: 4403, reason: "origin not allowed (allowed_origins)")
        } else if let perIP = maxConnectionsPerIP, fromPeer > perIP {
            metrics.connectionsRefused.add(1, ordering: .relaxed)
            client.close(code: 1013, reason: "too many connections from this address (max_connections_per_ip \(perIP)); try again later")
        } else if connections.count > maxConnections {
            metrics.connectionsRefused.add(1, ordering: .relaxed)
            client.close(code: 1013, reason: "too many connections (max_connections \(maxConnections)); try again later")
        } else if EngineCore.isValidId(clientId) == false {
            client.close(code: 1008, reason: "client_id must be 1-256 printable characters")
        } else {
            client.send(WireMessage(Messages.connectionEstablished(clientId: clientId)))
        }
        return id
    }

    fileprivate func closed(id: UInt64) {
        guard let client = connections.removeValue(forKey: id) else { return }
        flushList.holding[id] = nil
        client.isOpen = false
        if client.usesDelta { deltaConnections -= 1 }
        if maxConnectionsPerIP != nil, let n = connectionsByPeer[client.peer] {
            connectionsByPeer[client.peer] = n > 1 ? n - 1 : nil
        }
        for task in client.subscriptions {
            subscribers[task]?[id] = nil
            if subscribers[task]?.isEmpty == true { subscribers[task] = nil }
        }
        wildcards[id] = nil
        dropUnwatchedBases(client.wildcard ? nil : client.subscriptions)
    }

    /// After a client stopped watching `tasks` (nil: every task, as when it leaves "*"), drops the delta bases of
    /// those nobody watches any more: no fan-out runs for an unwatched task, so no fan-out would drop them.
    private func dropUnwatchedBases(_ tasks: Set<IdKey>?) {
        guard deltas.count > 0 else { return }
        if deltaConnections == 0 { return deltas.removeAll() }
        guard wildcards.isEmpty else { return }
        if let tasks {
            for task in tasks where subscribers[task] == nil { deltas.forget(taskId: task.id) }
        } else {
            deltas.removeAll { subscribers[$0] == nil }
        }
    }

    fileprivate func writable(id: UInt64) -> Int32 {
        guard let client = connections[id] else { return -1 }
        if client.wildcardStates != nil && client.writtenTotal >= client.wildcardMark && client.canWrite {
            flushList.now = engine.monotonic.now()  // the states' time, for the client's interval
            Messages.continueWildcard(self, client: client)
        }
        return client.writable(batch, sent: metrics.messagesSent)
    }

    func isAuthorized(authorization: String, query: [String: String]) -> Bool {
        guard let token = authToken else { return true }
        if authorization == "Bearer \(token)" { return true }
        return query["token"] == token
    }

    /// Adds subscriptions; all or nothing against the per-connection cap. `delta`: the tasks named (or every
    /// task, for "*") get merge patches rather than full states from now on.
    func subscribe(_ client: ClientConnection, to ids: [String], delta: Bool = false, intervalMs: UInt32? = nil) throws {
        let new = Set(ids.lazy.filter { $0 != "*" }.map(IdKey.init)).subtracting(client.subscriptions)
        guard client.subscriptions.count + new.count <= maxSubscriptions else {
            throw ProtocolError(code: "limit", message: "subscribing to \(new.count) more tasks would exceed "
                + "\(maxSubscriptions) subscriptions per connection; subscribe to \"*\" to watch every task")
        }
        for task in new {
            client.subscriptions.insert(task)
            subscribers[task, default: [:]][client.id] = client
        }
        if ids.contains("*") {
            client.wildcard = true
            wildcards[client.id] = client
        }
        if delta && !client.usesDelta {
            client.usesDelta = true
            deltaConnections += 1
        }
        client.setDelta(delta, for: ids)
        if client.usesDelta { client.forgetDeltaModes() }
        // The current states sent next count from now for the connection's interval (the last reading may be old:
        // the listener reads the clock when something wakes it).
        flushList.now = engine.monotonic.now()
        if let intervalMs {
            client.intervalChanged(to: intervalMs)
            if client.heldDue < .infinity { armTimer(now: flushList.now) }  // what stays held may be due sooner
        }
    }

    func unsubscribe(_ client: ClientConnection, from ids: [String]) {
        var left: Set<IdKey>? = []
        for task in ids {
            if task == "*" {
                client.wildcard = false
                client.wildcardDelta = false
                client.wildcardStates = nil
                wildcards[client.id] = nil
                client.forgetAllButSubscriptions()
                left = nil
                continue
            }
            let key = IdKey(task)
            client.subscriptions.remove(key)
            client.deltaIds.remove(key)
            if !client.wildcard { client.forget(task: task) }
            subscribers[key]?[client.id] = nil
            if subscribers[key]?.isEmpty == true { subscribers[key] = nil }
            left?.insert(key)
        }
        if client.usesDelta { client.forgetDeltaModes() }
        dropUnwatchedBases(left)
    }

    var queueDepth: Int { inbox.withLock { $0.changed.count + $0.logs.count } }
    var connectionCount: Int { connections.count }
    var subscriptionCount: Int { connections.values.reduce(0) { $0 + $1.subscriptions.count } }
    var taskSlotCount: Int { connections.values.reduce(0) { $0 + $1.taskSlotCount } }
    var deltaBaseCount: Int { deltas.count }

    // MARK: - C callbacks

    private static func listener(_ ctx: UnsafeMutableRawPointer?) -> Listener {
        Unmanaged<Listener>.fromOpaque(ctx!).takeUnretainedValue()
    }

    private static var callbacks: CProgress_listener_callbacks {
        var cb = CProgress_listener_callbacks()
        cb.on_http = { ctx, conn, method, path, query, queryLen, authorization, origin, peer, body, bodyLen in
            let l = Listener.listener(ctx)
            let request = Routes.Body(bytes: body.map { UnsafeRawBufferPointer(start: $0, count: bodyLen) },
                                      declaredLength: bodyLen)
            Routes.handleHTTP(l, conn: conn!, method: String(cString: method!), path: String(cString: path!),
                              query: parseQuery(query, queryLen), authorization: String(cString: authorization!),
                              origin: String(cString: origin!), peer: String(cString: peer!), body: request)
        }
        cb.on_ws_open = { ctx, conn, path, query, queryLen, authorization, origin, peer in
            let l = Listener.listener(ctx)
            let id = l.open(wsi: conn!, path: String(cString: path!), query: parseQuery(query, queryLen),
                            authorization: String(cString: authorization!), origin: String(cString: origin!),
                            peer: String(cString: peer!))
            l.flush()
            return id
        }
        cb.on_ws_message = { ctx, id, data, len, binary in
            let l = Listener.listener(ctx)
            guard let client = l.connections[id] else { return }
            let bytes = UnsafeRawBufferPointer(start: data, count: len).bindMemory(to: UInt8.self)
            if client.wildcardStates == nil {
                Messages.handle(l, client: client, bytes: bytes, binary: binary != 0)
            } else {
                Messages.deferMessage(l, client: client, bytes: bytes, binary: binary != 0)
            }
            l.flush()
        }
        cb.on_ws_writable = { ctx, id, _ in Listener.listener(ctx).writable(id: id) }
        cb.on_ws_close = { ctx, id in Listener.listener(ctx).closed(id: id) }
        cb.on_wake = { ctx in Listener.listener(ctx).drainInbox() }
        cb.on_timer = { ctx in Listener.listener(ctx).timerFired() }
        return cb
    }
}

/// Query arguments from the C side's NUL-separated "name=value" list; the first of a repeated name wins.
private func parseQuery(_ raw: UnsafePointer<CChar>?, _ len: Int) -> [String: String] {
    guard let raw, len > 0 else { return [:] }
    var out: [String: String] = [:]
    let bytes = UnsafeRawBufferPointer(start: raw, count: len)
    for part in bytes.split(separator: 0, omittingEmptySubsequences: true) {
        let text = String(decoding: part, as: UTF8.self)
        let pair = text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
        let name = String(pair[0])
        if out[name] == nil { out[name] = pair.count > 1 ? String(pair[1]) : "" }
    }
    return out
}

/// Calls `body` with a C string for `s`, or NULL.
func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    guard let s else { return body(nil) }
    return s.withCString { body($0) }
}
