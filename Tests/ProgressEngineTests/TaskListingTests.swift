import Testing
@testable import ProgressEngine

private func position(_ t: Double, _ id: String) -> ListPosition { ListPosition(createdAt: t, id: id) }

private func query(_ pairs: [String: String]) throws(Routes.HTTPError) -> TaskQuery { try TaskListRoute.query(pairs) }

/// The 400 message a query gets, or nil when it is accepted.
private func refusal(_ pairs: [String: String]) -> String? {
    do {
        _ = try query(pairs)
        return nil
    } catch {
        #expect(error.status == 400 && error.code == "bad_request")
        return error.message
    }
}

@Suite("Task listing: query parameters, filters, paging")
struct TaskListingTests {
    @Test("query parameters: defaults, filters, limits")
    func parameters() throws {
        let defaults = try query([:])
        #expect(defaults.limit == 100 && defaults.statuses == nil && defaults.after == nil && defaults.updatedSince == nil)
        let q = try query(["status": "failed,cancelled", "template_id": "sdxl", "batch_id": "b 1", "since": "1700000000.5",
                           "limit": "1000", "cursor": position(3, "x").cursor, "token": "anything"])
        #expect(q.statuses == [.failed, .cancelled] && q.templateId == "sdxl" && q.batchId == "b 1")
        #expect(q.updatedSince == 1_700_000_000.5 && q.limit == 1000 && q.after == position(3, "x"))
        #expect(try query(["since": "2024-01-01T00:00:00Z"]).updatedSince == 1_704_067_200)
        #expect(try query(["limit": "1"]).limit == 1)
        #expect(try query(["id_contains": "Job-7"]).idContains == "job-7")
    }

    @Test("every wrong parameter is a 400 that names it")
    func refusals() {
        #expect(refusal(["stauts": "failed", "limt": "5", "limit": "5"])?.hasPrefix("unknown query parameters limt, stauts;") == true)
        #expect(refusal(["offset": "5"])?.contains("unknown query parameter offset; the listing takes status, template_id") == true)
        #expect(refusal(["status": "done"])?.contains("queued, executing, completed, failed, cancelled") == true)
        #expect(refusal(["status": ""]) != nil && refusal(["status": "failed,"]) != nil && refusal(["status": "FAILED"]) != nil)
        #expect(refusal(["limit": "1001"])?.contains("over the maximum 1000") == true)
        for bad in ["0", "-1", "", "ten", "1.5", "99999999999999999999999"] {
            #expect(refusal(["limit": bad])?.contains("must be an integer from 1 to 1000") == true, "\(bad)")
        }
        #expect(refusal(["since": "yesterday"])?.contains("since") == true)
        #expect(refusal(["template_id": ""])?.contains("template_id") == true)
        #expect(refusal(["batch_id": ""])?.contains("batch_id") == true)
        #expect(refusal(["cursor": "nope"])?.contains("next_cursor") == true)
        #expect(refusal(["cursor": ""]) != nil)
        #expect(refusal(["id_contains": ""])?.contains("id_contains must be 1-256 characters") == true)
        #expect(refusal(["id_contains": String(repeating: "x", count: 257)])?.contains("id_contains") == true)
    }

    @Test("filters: status set, template, batch, updated_at at or after since")
    func filters() {
        let q = TaskQuery(statuses: [.failed], templateId: "t", batchId: "b", updatedSince: 100)
        #expect(q.matches(id: "Task-42", status: .failed, templateId: "t", batchId: "b", updatedAt: 100))
        #expect(!q.matches(id: "Task-42", status: .completed, templateId: "t", batchId: "b", updatedAt: 100))
        #expect(!q.matches(id: "Task-42", status: .failed, templateId: "u", batchId: "b", updatedAt: 100))
        #expect(!q.matches(id: "Task-42", status: .failed, templateId: "t", batchId: nil, updatedAt: 100))
        #expect(!q.matches(id: "Task-42", status: .failed, templateId: "t", batchId: "b", updatedAt: 99.999))
        #expect(TaskQuery().matches(id: "x", status: .queued, templateId: "x", batchId: nil, updatedAt: 0))
        let text = TaskQuery(idContains: "SK-4")
        #expect(text.idContains == "sk-4" && text.matchesId("task-42") && text.matchesId("TASK-4") && !text.matchesId("task-5"))
        #expect(!text.matches(id: "task-5", status: .queued, templateId: "x", batchId: nil, updatedAt: 0))
        var set = TaskQuery()
        set.idContains = "ABC"
        #expect(set.idContains == "abc" && set.matchesId("xabcx") && TaskQuery().matchesId("anything"))
        let after = TaskQuery(after: position(5, "m"))
        #expect(after.isAfterStart(position(5, "a")) && after.isAfterStart(position(4, "z")))
        #expect(!after.isAfterStart(position(5, "m")) && !after.isAfterStart(position(5, "n")) && !after.isAfterStart(position(6, "a")))
    }

    @Test("a page from memory and a partly read store: held tasks past the store's scan wait for the next page")
    func assemble() {
        let held = [(position(9, "h9"), "h9"), (position(5, "h5"), "h5"), (position(1, "h1"), "h1")]
        let stored = [(position(8, "s8"), "s8"), (position(6, "s6"), "s6")]
        // The store was read to its end: everything is a candidate.
        var page = TaskPage.assemble(held: held, stored: stored, scannedTo: nil, limit: 10)
        #expect(page.items.map(\.1) == ["h9", "s8", "s6", "h5", "h1"] && page.next == nil)
        // Full page: the next one starts after its last task.
        page = TaskPage.assemble(held: held, stored: stored, scannedTo: nil, limit: 2)
        #expect(page.items.map(\.1) == ["h9", "s8"] && page.next == position(8, "s8"))
        // The store's scan stopped at 6: h5 and h1 could be preceded by stored tasks not read yet.
        page = TaskPage.assemble(held: held, stored: stored, scannedTo: position(6, "s6"), limit: 10)
        #expect(page.items.map(\.1) == ["h9", "s8", "s6"] && page.next == position(6, "s6"))
        // A scan that found nothing still moves the cursor on.
        page = TaskPage.assemble(held: [(ListPosition, String)](), stored: [], scannedTo: position(2, "x"), limit: 10)
        #expect(page.items.isEmpty && page.next == position(2, "x"))
        page = TaskPage.assemble(held: [(ListPosition, String)](), stored: [], scannedTo: nil, limit: 10)
        #expect(page.items.isEmpty && page.next == nil)
    }

    @Test("selecting the first k is the sorted prefix, ties and duplicates of time included")
    func firstK() {
        var generator = SystemRandomNumberGenerator()
        for n in [0, 1, 2, 7, 100, 1000] {
            let items = (0..<n).map { i in
                (position(Double(Int.random(in: 0..<(n / 3 + 1), using: &generator)), "id\(Int.random(in: 0..<50, using: &generator))-\(i)"), i)
            }
            let sorted = items.sorted { $0.0 < $1.0 }
            for k in [0, 1, 3, 100, 1001] {
                let picked = TaskPage.first(k, of: items)
                #expect(picked.map(\.1) == sorted.prefix(k).map(\.1), "n \(n), k \(k)")
            }
        }
    }

    @Test("an engine's listing pages through every task once while tasks are created between pages")
    func pagingWhileCreating() throws {
        let clock = ManualClock(1_000)
        let engine = try makeEngine(clock: clock)
        var created: [String] = []
        func create(_ id: String, batch: String? = nil, at time: Double? = nil) throws {
            var options = TaskOptions()
            options.batchId = batch
            options.timestamp = time
            try engine.createTask(id: id, templateId: id.hasPrefix("v") ? "video" : "image", category: nil, options: options)
            created.append(id)
        }
        for i in 0..<25 {
            clock.advance(1)
            try create("t\(i)")
        }
        // Three tasks created in the same instant: ordered by id.
        for id in ["same-b", "same-a", "same-c"] { try create(id, at: 2_000) }
        var seen: [String] = []
        var q = TaskQuery(limit: 4)
        var pages = 0
        while true {
            let page = engine.listTasks(q)
            seen += page.tasks.map(\.id)
            pages += 1
            // New tasks are newer than every page's start: they never show up behind the cursor.
            clock.advance(1)
            try create("late\(pages)")
            guard let next = page.next else { break }
            #expect(page.tasks.count == 4)
            q.after = next
        }
        let expected = ["same-c", "same-b", "same-a"] + (0..<25).reversed().map { "t\($0)" }
        #expect(seen == expected)
        #expect(pages == 7)
        // Starting again from the top shows the late ones first.
        let top = engine.listTasks(TaskQuery(limit: 3)).tasks.map(\.id)
        #expect(top == ["same-c", "same-b", "same-a"])  // created at 2,000, later than every clock tick here
        #expect(engine.listTasks(TaskQuery(limit: 1000)).tasks.count == created.count)
    }

    @Test("filters apply before the limit; a finished task past its retention is not listed")
    func engineFilters() throws {
        let clock = ManualClock(1_000)
        let engine = try makeEngine(#"{"retention_seconds": 100}"#, clock: clock)
        var options = TaskOptions()
        for i in 0..<10 {
            clock.advance(1)
            options.batchId = i % 2 == 0 ? "even" : nil
            try engine.createTask(id: "i\(i)", templateId: i < 5 ? "low" : "high", category: nil, options: options)
        }
        try engine.fail(id: "i1", error: "boom")
        try engine.complete(id: "i2")
        try engine.event(id: "i3", name: "execution_progress", dataJSON: #"{"step":1,"total_steps":2}"#)
        func ids(_ q: TaskQuery) -> [String] { engine.listTasks(q).tasks.map(\.id) }
        #expect(ids(TaskQuery(statuses: [.failed, .completed])) == ["i2", "i1"])
        #expect(ids(TaskQuery(statuses: [.executing])) == ["i3"])
        #expect(ids(TaskQuery(templateId: "high", limit: 2)) == ["i9", "i8"])
        #expect(ids(TaskQuery(idContains: "I1")) == ["i1"])
        #expect(ids(TaskQuery(templateId: "low", idContains: "i")).count == 5)
        #expect(ids(TaskQuery(batchId: "even")) == ["i8", "i6", "i4", "i2", "i0"])
        #expect(ids(TaskQuery(updatedSince: 1_009.5)) == ["i9", "i3", "i2", "i1"])  // i1-i3 changed at 1,010
        #expect(ids(TaskQuery(statuses: [.cancelled])) == [])
        let page = engine.listTasks(TaskQuery(statuses: [.queued], limit: 3))
        #expect(page.tasks.map(\.id) == ["i9", "i8", "i7"] && page.next == ListPosition(createdAt: 1_008, id: "i7"))
        clock.advance(101)
        #expect(ids(TaskQuery(statuses: [.failed, .completed])) == [])
        #expect(ids(TaskQuery()).count == 8)
    }

    @Test("a step counter's steps count before the filters: its task is listed as executing at once")
    func counterStepsBeforeFilters() throws {
        let engine = try makeEngine("{}", clock: ManualClock(1_000))
        try engine.createTask(id: "counted", templateId: "x", category: "image_generation", options: TaskOptions())
        let counter = UnsafeMutablePointer<CLongLong>.allocate(capacity: 2)
        defer { counter.deallocate() }
        counter[0] = 0
        counter[1] = 50
        try engine.attachCounter(id: "counted", pointer: counter)
        counter[0] = 10  // no maintenance round read it yet
        let page = engine.listTasks(TaskQuery(statuses: [.executing]))
        #expect(page.tasks.map(\.id) == ["counted"])
        #expect(page.tasks.first?.status == .executing)
        try engine.detachCounter(id: "counted")
    }
}
