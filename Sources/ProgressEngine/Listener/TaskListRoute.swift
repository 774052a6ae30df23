/// `GET /api/v1/progress/tasks`: the task listing's query parameters and its answer (docs/API.md, "Task listing").
enum TaskListRoute {
    static let path = "/api/v1/progress/tasks"
    /// The parameters the listing takes. `token` is the auth token's (checked before the route).
    static let parameters = ["status", "template_id", "batch_id", "id_contains", "since", "limit", "cursor"]

    /// Reads the query string into a `TaskQuery`. As with config keys, nothing is ignored: an unknown parameter
    /// (a typo such as `stauts`) or a value that means nothing is a 400 naming it, never a silently wider page.
    /// - Throws: `Routes.HTTPError` 400 `bad_request`.
    static func query(_ params: [String: String]) throws(Routes.HTTPError) -> TaskQuery {
        let unknown = params.keys.filter { $0 != "token" && !parameters.contains($0) }.sorted()
        guard unknown.isEmpty else {
            throw badRequest("unknown query parameter\(unknown.count == 1 ? "" : "s") \(unknown.joined(separator: ", ")); "
                + "the listing takes \(parameters.joined(separator: ", "))")
        }
        var query = TaskQuery()
        if let text = params["status"] {
            var statuses = Set<TaskStatus>()
            for name in text.split(separator: ",", omittingEmptySubsequences: false) {
                guard let status = TaskStatus.all.first(where: { $0.name == name }) else {
                    throw badRequest("status \"\(name)\" is not one of \(TaskStatus.all.map(\.name).joined(separator: ", ")) "
                        + "(several: comma-separated)")
                }
                statuses.insert(status)
            }
            query.statuses = statuses
        }
        if let template = params["template_id"] {
            guard !template.isEmpty else { throw badRequest("template_id must not be empty (leave it out for any template)") }
            query.templateId = template
        }
        if let batch = params["batch_id"] {
            guard EngineCore.isValidId(batch) else { throw badRequest("batch_id must be 1-256 printable characters") }
            query.batchId = batch
        }
        if let text = params["id_contains"] {
            // Ids are at most 256 characters: a longer text matches none.
            guard !text.isEmpty, text.count <= 256 else {
                throw badRequest("id_contains must be 1-256 characters (leave it out for any id)")
            }
            query.idContains = text
        }
        if let since = params["since"] {
            query.updatedSince = try Routes.parseSince(since)
        }
        if let text = params["limit"] {
            guard let limit = Int(text), limit >= 1 else {
                throw badRequest("limit \"\(text)\" must be an integer from 1 to \(TaskQuery.maxLimit)")
            }
            guard limit <= TaskQuery.maxLimit else {
                throw badRequest("limit \(limit) is over the maximum \(TaskQuery.maxLimit); page with next_cursor instead")
            }
            query.limit = limit
        }
        if let cursor = params["cursor"] {
            guard let after = ListPosition(cursor: cursor) else {
                throw badRequest("cursor \"\(cursor.prefix(64))\" is not one this API hands out: pass next_cursor as "
                    + "received, or leave cursor out for the first page")
            }
            query.after = after
        }
        return query
    }

    /// `{"tasks": [TaskProgress...], "next_cursor": string | null, "count": n}`.
    static func json(_ page: TaskPage) -> [UInt8] {
        var w = JSONWriter(capacity: 512 + 2048 * page.tasks.count)
        w.beginObject()
        w.key("tasks"); w.beginArray()
        for task in page.tasks { TaskJSON.write(task, to: &w) }
        w.endArray()
        w.key("next_cursor"); w.string(page.next?.cursor)
        w.key("count"); w.integer(page.tasks.count)
        w.endObject()
        return w.bytes
    }

    private static func badRequest(_ message: String) -> Routes.HTTPError {
        Routes.HTTPError(status: 400, code: "bad_request", message: message)
    }
}
