/// A request for one page of the task listing (`GET /api/v1/progress/tasks`): which tasks, how many, from where.
struct TaskQuery: Sendable {
    /// nil: any status.
    var statuses: Set<TaskStatus>?
    var templateId: String?
    var batchId: String?
    /// Tasks whose id contains this text, compared case-insensitively; held lower-cased. nil: any id.
    var idContains: String? {
        didSet { idContains = idContains?.lowercased() }
    }
    /// Tasks whose `updated_at` is at or after this epoch time; nil: any.
    var updatedSince: Double?
    var limit = TaskQuery.defaultLimit
    /// The page starts after this task (a cursor); nil: at the newest.
    var after: ListPosition?

    static let defaultLimit = 100
    /// One page's bound: a page of full TaskProgress documents is a few MB at most, built on the listener's thread.
    static let maxLimit = 1000

    init(statuses: Set<TaskStatus>? = nil, templateId: String? = nil, batchId: String? = nil,
         updatedSince: Double? = nil, limit: Int = TaskQuery.defaultLimit, after: ListPosition? = nil,
         idContains: String? = nil) {
        self.statuses = statuses
        self.idContains = idContains?.lowercased()
        self.templateId = templateId
        self.batchId = batchId
        self.updatedSince = updatedSince
        self.limit = limit
        self.after = after
    }

    /// Whether a task with these fields passes the filters (the position is checked separately).
    func matches(id: String, status: TaskStatus, templateId: String, batchId: String?, updatedAt: Double) -> Bool {
        guard matchesId(id) else { return false }
        if let statuses, !statuses.contains(status) { return false }
        // Ids are bytes: a filter's canonical equivalent is another template or batch.
        if let want = self.templateId, !IdKey.same(want, templateId) { return false }
        if let want = self.batchId, !(batchId.map { IdKey.same(want, $0) } ?? false) { return false }
        if let since = updatedSince, updatedAt < since { return false }
        return true
    }

    /// The id filter alone: the listing applies it to the store's index before reading any state.
    func matchesId(_ id: String) -> Bool {
        guard let text = idContains else { return true }
        return id.lowercased().contains(text)
    }

    /// Whether a task at `position` belongs after the page's start.
    func isAfterStart(_ position: ListPosition) -> Bool {
        guard let after else { return true }
        return after < position
    }
}
