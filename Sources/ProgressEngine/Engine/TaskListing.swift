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
        var candidates = stored
        for item in held where scannedTo.map({ !($0 < item.0) }) ?? true { candidates.append(item) }
        candidates.sort { $0.0 < $1.0 }
        if candidates.count > limit {
            let items = Array(candidates.prefix(limit))
            return (items, items.last?.0)
        }
        return (candidates, scannedTo)
    }
}

extension EngineCore {
    /// One page of the listing: this engine's tasks, newest first.
    func listTasks(_ query: TaskQuery) -> TaskPage {
        let now = clock.now()
        let limit = max(1, query.limit)
        var held: [(ListPosition, String)] = []
        for shard in table.allShards {
            shard.withLock { state in
                for task in state.tasks.values where !task.isExpired(now: now, retention: config.retentionSeconds) {
                    let position = ListPosition(createdAt: task.createdAt, id: task.id)
                    guard query.isAfterStart(position),
                          query.matches(status: task.status, templateId: task.templateId, batchId: task.batchId,
                                        updatedAt: task.updatedAt) else { continue }
                    held.append((position, task.id))
                }
            }
        }
        let page = TaskPage.assemble(held: held, stored: [], scannedTo: nil, limit: limit)
        let time = eventTime()
        var tasks: [TaskSnapshot] = []
        tasks.reserveCapacity(page.items.count)
        for (position, id) in page.items {
            // Gone since (expired, or replaced by a new task of the same id, which has a later place): left out.
            guard let snapshot = try? snapshot(id: id, now: time), snapshot.createdAt == position.createdAt else { continue }
            tasks.append(snapshot)
        }
        return TaskPage(tasks: tasks, next: page.next)
    }
}
