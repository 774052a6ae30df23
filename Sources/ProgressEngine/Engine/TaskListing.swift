/// One page of the task listing: the tasks in listing order (`ListPosition`), and where the next page starts.
struct TaskPage: Sendable {
    var tasks: [TaskSnapshot]
    /// nil: nothing follows. Otherwise the next page starts after it (a page may hold fewer than `limit` tasks
    /// and still have a next one: see `TaskPage.assemble`).
    var next: ListPosition?

    /// Picks a page out of candidates from memory and from the store.
    ///
    /// The store's index is read in bounded chunks, so it may not have been read to its end: `scannedTo` is then the
    /// last position it was read up to (nil when it was read to the end). Past that point a held task could be
    /// followed or preceded by stored tasks not read yet, so held tasks beyond it wait for the next page, which starts
    /// at `scannedTo` when this one is not full.
    /// - Parameters:
    ///   - held: candidates from this engine's memory (any order), all after the page's start and matching.
    ///   - stored: candidates read from the store (any order), likewise.
    ///   - limit: the page's size, >= 1.
    /// - Returns: the page's items in listing order and the next page's start.
    static func assemble<T>(held: [(ListPosition, T)], stored: [(ListPosition, T)], scannedTo: ListPosition?,
                            limit: Int) -> (items: [(ListPosition, T)], next: ListPosition?) {
        let inRange = held.lazy.filter { item in scannedTo.map { !($0 < item.0) } ?? true }
        let candidates = first(limit + 1, of: stored + first(limit + 1, of: inRange))
        if candidates.count > limit {
            let items = Array(candidates.prefix(limit))
            return (items, items.last?.0)
        }
        return (candidates, scannedTo)
    }

    /// The first `k` items in listing order, in order. A bounded heap (O(n log k)) rather than a sort: an engine
    /// may hold 100,000 tasks for a page of 100, and sorting them all cost 240 ms on the listener's thread
    /// (measured, 2-core machine); selecting the page costs a few.
    static func first<T>(_ k: Int, of items: some Sequence<(ListPosition, T)>) -> [(ListPosition, T)] {
        guard k > 0 else { return [] }
        // A max-heap in listing order: its root is the latest of the k kept so far, the first to give way.
        var heap: [(ListPosition, T)] = []
        heap.reserveCapacity(k)
        func siftDown(_ start: Int) {
            var i = start
            while true {
                let l = 2 * i + 1, r = l + 1
                var latest = i
                if l < heap.count && heap[latest].0 < heap[l].0 { latest = l }
                if r < heap.count && heap[latest].0 < heap[r].0 { latest = r }
                if latest == i { return }
                heap.swapAt(i, latest)
                i = latest
            }
        }
        for item in items {
            if heap.count < k {
                heap.append(item)
                var i = heap.count - 1
                while i > 0 && heap[(i - 1) / 2].0 < heap[i].0 {
                    heap.swapAt(i, (i - 1) / 2)
                    i = (i - 1) / 2
                }
            } else if item.0 < heap[0].0 {
                heap[0] = item
                siftDown(0)
            }
        }
        return heap.sorted { $0.0 < $1.0 }
    }
}

extension EngineCore {
    /// Stored tasks read per round trip while walking the creation index: a few hundred KB of states, well within
    /// the reader's 200 ms timeout on a LAN.
    static let listingChunk = 256
    /// Stored tasks examined per request at most, so that a filter few tasks match cannot hold the listener's
    /// thread for a walk over the whole fleet: the page then ends early, with a cursor to go on from.
    static let listingScanBudget = 4096

    /// One page of the listing: this engine's tasks and, with Redis, the fleet's (the creation index), newest
    /// first. A task this engine holds is taken from memory (it is the freshest), never from Redis.
    func listTasks(_ query: TaskQuery) -> TaskPage {
        let now = clock.now()
        let limit = max(1, query.limit)
        // Only the first limit + 1 held tasks can be on the page, so each shard gives at most that many.
        var held: [(ListPosition, String)] = []
        // Every task held at the scan, matching or not: the store's copy of each is left out below. Taken with the
        // scan, not asked again later: a task that became held since (a new mirror) was not among the scanned, and
        // must then come from the store, or the page would skip it.
        var heldAtScan = Set<IdKey>()
        for shard in table.allShards {
            shard.withLock { state in
                let live = state.tasks.values.filter { !$0.isExpired(now: now, retention: self.config.retentionSeconds) }
                for task in live {
                    heldAtScan.insert(IdKey(task.id))
                    // The runner's steps through a step counter, read now as a snapshot does: else a task the
                    // counter moved to executing would be filtered by the status it had before.
                    catchUpCounter(task, at: max(now, task.lastTimestamp), notify: true)
                }
                let matching = live.lazy.filter { task in
                    query.matches(id: task.id, status: task.status, templateId: task.templateId,
                                  batchId: task.batchId, updatedAt: task.updatedAt)
                }.map { task in (ListPosition(createdAt: task.createdAt, id: task.id), task.id) }
                held += TaskPage.first(limit + 1, of: matching.filter { query.isAfterStart($0.0) })
            }
        }

        var stored: [(ListPosition, TaskSnapshot)] = []
        var scannedTo = query.after
        var examined = 0
        var exhausted = false
        walk: while examined < EngineCore.listingScanBudget {
            // nil: Redis cannot be read now; the page is this engine's tasks (as for `"*"`).
            guard let chunk = store.tasksCreated(after: scannedTo, count: EngineCore.listingChunk) else {
                exhausted = true
                break
            }
            let states = store.stateJSONs(chunk.filter { !heldAtScan.contains(IdKey($0.id)) && query.matchesId($0.id) }.map(\.id))
            // A short chunk is the index's end.
            let last = chunk.count < EngineCore.listingChunk
            exhausted = last && chunk.isEmpty
            for (index, position) in chunk.enumerated() {
                examined += 1
                scannedTo = position
                exhausted = last && index == chunk.count - 1
                guard !heldAtScan.contains(IdKey(position.id)), let text = states[IdKey(position.id)],
                      let task = try? StoredTask.parse(text),
                      // An index entry of an earlier task of the same id: the current one has its own entry.
                      task.createdAt == position.createdAt,
                      query.matches(id: task.id, status: task.status, templateId: task.templateId,
                                    batchId: task.batchId, updatedAt: task.updatedAt) else { continue }
                stored.append((position, TaskSnapshot(TaskRecord(restoring: task))))
                if stored.count == limit { break walk }
            }
            if last { break }
        }

        let page = TaskPage.assemble(held: TaskPage.first(limit + 1, of: held).map { ($0.0, Candidate.held($0.1)) },
                                     stored: stored.map { ($0.0, Candidate.stored($0.1)) },
                                     scannedTo: exhausted ? nil : scannedTo, limit: limit)
        let time = eventTime()
        var tasks: [TaskSnapshot] = []
        tasks.reserveCapacity(page.items.count)
        for (position, candidate) in page.items {
            switch candidate {
            case .held(let id):
                // Gone since (expired, or replaced by a new task of the same id, which has a later place): left out.
                guard let snapshot = try? snapshot(id: id, now: time), snapshot.createdAt == position.createdAt else { continue }
                tasks.append(snapshot)
            case .stored(var snapshot):
                snapshot.eta = estimate(snapshot, now: time)
                tasks.append(snapshot)
            }
        }
        return TaskPage(tasks: tasks, next: page.next)
    }

    private enum Candidate {
        case held(String)
        case stored(TaskSnapshot)
    }
}
