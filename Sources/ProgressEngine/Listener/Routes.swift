import CProgress
import Glibc

/// The REST API of SPEC §8, answered on the service thread from the engine's in-memory state.
enum Routes {
    static let webSocketPath = "/api/v1/progress/ws"
    static let tasksPrefix = "/api/v1/progress/tasks/"
    static let batchPrefix = "/api/v1/progress/batch/"
    static let previewsPrefix = "/api/v1/previews/"
    /// `POST /api/v1/progress/tasks/{id}/cancel`.
    static let cancelSuffix = "/cancel"
    static let logsSuffix = "/logs"
    static let historySuffix = "/history"
    /// What follows a task id in the routes of one task (`/tasks/{id}/logs`, …): no new task's id ends so.
    static let taskSuffixes = [logsSuffix, historySuffix, cancelSuffix]
    /// The largest request body read (a cancel's `{"reason"}`); a larger one is answered 413 without being read.
    static let maxBodyBytes = 16 << 10

    /// A request's body as the C side hands it over: its bytes when they were read (valid during the call), else
    /// nil and the length the request declared (0: none).
    struct Body {
        let bytes: UnsafeRawBufferPointer?
        /// The request's Content-Length; -1 for a chunked body (Transfer-Encoding), which is not read.
        let declaredLength: Int
    }
    /// Preview files are served by exact name only: no separators, no "..", nothing hidden.
    static let maxPreviewBytes = 32 << 20

    /// An answer other than 2xx: the status, and the error body's code and message (SPEC §8's error shape).
    struct HTTPError: Error {
        let status: Int32
        let code: String
        let message: String
        var headers = ""
    }

    private struct Response {
        var status: Int32 = 200
        var contentType = "application/json"
        var headers = "Cache-Control: no-store\r\n"
        var body: [UInt8]
        var closeAfter = false
    }

    static func handleHTTP(_ l: Listener, conn: UnsafeMutableRawPointer, method: String, path: String,
                           query: [String: String], authorization: String, origin: String, peer: String,
                           body: Body) {
        l.metrics.httpRequests.add(1, ordering: .relaxed)
        var response: Response
        do {
            response = try route(l, method: method, path: path, query: query, authorization: authorization,
                                 origin: origin, body: body)
        } catch let e as HTTPError {
            response = errorResponse(status: e.status, code: e.code, message: e.message)
            response.headers += e.headers
            // A request with a body we did not read cannot keep the connection.
            response.closeAfter = (method != "GET" && method != "HEAD") || body.declaredLength < 0
        } catch let e as EngineError {
            let status: Int32 = switch e.status {
            case -2: 404
            case -10: 413
            case -11: 500
            default: 400
            }
            response = errorResponse(status: status, code: status == 404 ? "not_found" : "bad_request", message: e.message)
        } catch {
            response = errorResponse(status: 500, code: "internal", message: "\(error)")
        }
        // Every answer, errors included, so a page of an allowed origin can read why its request failed.
        response.headers += l.origins.responseHeaders(origin: origin)
        // HEAD: the headers of the answer, no body (its Content-Length would then be wrong, so it is 0).
        if method == "HEAD" { response.body = [] }
        response.body.withUnsafeBytes { body in
            CProgress_http_respond(conn, response.status, response.contentType, response.headers, body.baseAddress,
                                   body.count, response.closeAfter ? 1 : 0)
        }
    }

    private static func errorResponse(status: Int32, code: String, message: String) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("error"); w.beginObject()
        w.key("code"); w.string(code)
        w.key("message"); w.string(message)
        w.endObject()
        w.endObject()
        return Response(status: status, body: w.bytes)
    }

    private static func json(_ text: String) -> Response {
        Response(body: Array(text.utf8))
    }

    private static func route(_ l: Listener, method: String, path: String, query: [String: String],
                              authorization: String, origin: String, body: Body) throws -> Response {
        guard body.declaredLength >= 0 else {
            throw HTTPError(status: 411, code: "length_required", message: "the request's body came chunked "
                + "(Transfer-Encoding), which the listener does not read: send it with a Content-Length")
        }
        // A CORS preflight carries no credentials (browsers never send them on one), so it is answered before the
        // token check, on every path.
        if method == "OPTIONS" {
            do {
                var r = Response(status: 204, body: [])
                r.headers += try l.origins.preflight(origin: origin)
                return r
            } catch {
                throw HTTPError(status: 403, code: "origin_not_allowed", message: error.message)
            }
        }
        if path == "/healthz" {
            guard method == "GET" else { throw methodNotAllowed(method, path) }
            return json(#"{"status":"ok"}"#)
        }
        if path.hasPrefix(tasksPrefix), path.dropFirst(tasksPrefix.count).hasSuffix(cancelSuffix) {
            guard method == "POST" else { throw methodNotAllowed(method, path, allowed: "POST") }
            try authorize(l, authorization: authorization, query: query)
            let id = try taskId(String(path.dropFirst(tasksPrefix.count).dropLast(cancelSuffix.count)))
            return try cancel(l, id: id, body: body)
        }
        guard method == "GET" else { throw methodNotAllowed(method, path) }
        // The dashboard's files hold no data (it reads everything over the WebSocket with the token from
        // its own URL), so they are served without a token and the page can say when the token is wrong.
        if l.engine.config.dashboard, let asset = dashboardAsset(path) {
            var r = Response(body: Array(asset.body.utf8))
            r.contentType = asset.contentType
            // The page is always revalidated; every file it loads, and every file those load, is named by its
            // content hash (scripts/embed-dashboard.py), so those can be cached for good.
            r.headers = (path == "/" || path == "/index.html" ? "Cache-Control: no-cache\r\n"
                : "Cache-Control: public, max-age=31536000, immutable\r\n")
                + "X-Content-Type-Options: nosniff\r\n"
                + "Content-Security-Policy: default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
                + "style-src 'self'; script-src 'self'; frame-ancestors 'none'\r\n"
            return r
        }
        try authorize(l, authorization: authorization, query: query)
        if path == "/metrics" {
            var r = Response(body: Array(metricsText(l).utf8))
            r.contentType = "text/plain; version=0.0.4; charset=utf-8"
            return r
        }
        if path == TaskListRoute.path {
            let page = l.engine.listTasks(try TaskListRoute.query(query))
            return Response(body: TaskListRoute.json(page))
        }
        if path.hasPrefix(tasksPrefix) {
            let rest = String(path.dropFirst(tasksPrefix.count))
            if rest.hasSuffix(logsSuffix) {
                let id = String(rest.dropLast(logsSuffix.count))
                let since = try query["since"].map(parseSince) ?? 0
                let level = try query["level"].map { name -> LogLevel in
                    guard let level = LogLevel(name: name) else {
                        throw HTTPError(status: 400, code: "bad_request",
                                        message: "level \"\(name)\" is not one of debug, info, warning, error")
                    }
                    return level
                } ?? .debug
                return json(try l.engine.logsJSON(id: try taskId(id), since: since, minLevel: level))
            }
            if rest.hasSuffix(historySuffix) {
                let id = String(rest.dropLast(historySuffix.count))
                let after = try query["after_seq"].map { text -> UInt64 in
                    guard let n = UInt64(text) else {
                        throw HTTPError(status: 400, code: "bad_request", message: "after_seq \"\(text)\" must be an integer >= 0")
                    }
                    return n
                } ?? 0
                return json(try l.engine.historyJSON(id: try taskId(id), afterSeq: after))
            }
            return json(try l.engine.taskJSON(id: try taskId(rest)))
        }
        if path.hasPrefix(batchPrefix) {
            let batch = String(path.dropFirst(batchPrefix.count))
            guard EngineCore.isValidId(batch), !batch.contains("/") else {
                throw HTTPError(status: 400, code: "bad_request", message: "batch id must be 1-256 printable characters")
            }
            let ids = query["task_ids"].flatMap { csv -> [String]? in
                let list = csv.split(separator: ",", omittingEmptySubsequences: true).map(String.init)
                return list.isEmpty ? nil : list
            }
            return json(try l.engine.batchJSON(batchId: batch, taskIds: ids))
        }
        if path.hasPrefix(previewsPrefix) {
            return try preview(l, name: String(path.dropFirst(previewsPrefix.count)), taskId: query["task_id"])
        }
        throw HTTPError(status: 404, code: "not_found", message: "no route for \(path); see SPEC §8 for the API")
    }

    private static func dashboardAsset(_ path: String) -> DashboardAssets.Asset? {
        switch path {
        case "/", "/index.html": return DashboardAssets.files["index.html"]
        case "/dashboard/app.js": return DashboardAssets.files["app.js"]
        case "/dashboard/app.css": return DashboardAssets.files["app.css"]
        case "/dashboard/progress-client.js": return DashboardAssets.files["progress-client.js"]
        default: return nil
        }
    }

    /// `allowed`: the methods the path answers (besides the OPTIONS every path answers).
    private static func methodNotAllowed(_ method: String, _ path: String, allowed: String = "GET") -> HTTPError {
        HTTPError(status: 405, code: "method_not_allowed", message: "\(method) is not allowed on \(path); use \(allowed)",
                  headers: "Allow: \(allowed), OPTIONS\r\n")
    }

    /// With `auth_token`: the token, as `Authorization: Bearer TOKEN` or `?token=TOKEN`, else 401.
    private static func authorize(_ l: Listener, authorization: String, query: [String: String]) throws {
        guard l.isAuthorized(authorization: authorization, query: query) else {
            throw HTTPError(status: 401, code: "unauthorized",
                            message: "missing or wrong token: send Authorization: Bearer TOKEN or ?token=TOKEN",
                            headers: "WWW-Authenticate: Bearer\r\n")
        }
    }

    // MARK: - Cancel

    /// `POST …/tasks/{id}/cancel` with an optional `{"reason": "..."}`: 202 once the request is recorded (on the
    /// task, or passed on through Redis to the engine that runs it).
    private static func cancel(_ l: Listener, id: String, body: Body) throws -> Response {
        let reason = try cancelReason(body)
        do {
            try l.engine.requestCancel(id: id, reason: reason)
        } catch let e as EngineError {
            let refusal = cancelRefusal(e)
            throw HTTPError(status: refusal.status, code: refusal.code, message: e.message)
        }
        var w = JSONWriter()
        w.beginObject()
        w.key("task_id"); w.string(id)
        w.key("cancel_requested"); w.bool(true)
        w.endObject()
        return Response(status: 202, body: w.bytes)
    }

    /// The body: none, or a JSON object with an optional string `reason` and nothing else.
    private static func cancelReason(_ body: Body) throws -> String? {
        guard let bytes = body.bytes else {
            guard body.declaredLength == 0 else {
                throw HTTPError(status: 413, code: "too_large", message: "the body is \(body.declaredLength) bytes; a "
                    + "cancel request's is at most \(maxBodyBytes): {\"reason\": \"...\"}")
            }
            return nil
        }
        do {
            let context = "the cancel request's body"
            let value = try JSONParser.parse(bytes: bytes.bindMemory(to: UInt8.self), context: context)
            let reader = try JSONObjectReader(value, context: context)
            try reader.rejectUnknownKeys(allowed: ["reason"], error: EngineError.json)
            return try reader.string("reason")
        } catch let e as EngineError {
            throw HTTPError(status: 400, code: "bad_request",
                            message: e.message + "; send {\"reason\": \"...\"} or no body")
        }
    }

    /// How a refused cancel request is answered (REST status, and the code of both REST and WebSocket errors).
    static func cancelRefusal(_ e: EngineError) -> (status: Int32, code: String) {
        switch e.status {
        case EngineError.notFound("").status: return (404, "not_found")
        case EngineError.state("").status: return (409, "conflict")
        case EngineError.limit("").status: return (503, "unavailable")
        default: return (400, "bad_request")
        }
    }

    private static func taskId(_ text: String) throws -> String {
        guard EngineCore.isValidId(text) else {
            throw HTTPError(status: 400, code: "bad_request", message: "task id must be 1-256 printable characters")
        }
        return text
    }

    /// `since`: ISO-8601 ("2024-01-01", "2024-01-01T10:00:00Z") or epoch seconds.
    static func parseSince(_ text: String) throws(HTTPError) -> Double {
        if let epoch = Double(text), epoch.isFinite { return epoch }
        if let epoch = ISO8601.parse(text) { return epoch }
        throw HTTPError(status: 400, code: "bad_request",
                        message: "since \"\(text)\" is neither ISO-8601 (2024-01-01T10:00:00Z) nor epoch seconds")
    }

    private static func isSafePreviewName(_ name: String) -> Bool {
        guard name.hasSuffix(".png"), name.utf8.count <= 255, !name.hasPrefix(".") else { return false }
        return name.utf8.allSatisfy { b in
            (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122) || b == 45 || b == 95 || b == 46
        } && !name.contains("..")
    }

    /// A preview from the preview folder, else (with `task_id`, which URLs of shared previews carry) the copy the
    /// store keeps: any listener of a fleet serves every engine's previews.
    private static func preview(_ l: Listener, name: String, taskId: String?) throws -> Response {
        guard isSafePreviewName(name) else {
            throw HTTPError(status: 404, code: "not_found", message: "no preview \"\(name)\"")
        }
        let png: [UInt8]
        switch l.engine.previewDirectory.map({ PreviewFile.read($0 + "/" + name, limit: maxPreviewBytes) }) ?? .missing {
        case .missing:
            guard let taskId, EngineCore.isValidId(taskId), let stored = l.engine.storedPreview(taskId: taskId, name: name)
            else { throw HTTPError(status: 404, code: "not_found", message: "no preview \"\(name)\"") }
            png = stored
        case .tooLarge:
            throw HTTPError(status: 413, code: "too_large", message: "preview \"\(name)\" is larger than \(maxPreviewBytes) bytes")
        case let .bytes(read): png = read
        }
        var r = Response(body: png)
        r.contentType = "image/png"
        // Preview files are written once under their final name (task creation time and milestone in the
        // name), so they never change.
        r.headers = "Cache-Control: public, max-age=86400, immutable\r\nX-Content-Type-Options: nosniff\r\n"
        return r
    }

    /// Prometheus text exposition format 0.0.4.
    static func metricsText(_ l: Listener) -> String {
        let c = l.engine.counters()
        let m = l.metrics
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Int) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        metric("progress_connections", "gauge", "Open WebSocket connections.", l.connectionCount)
        metric("progress_subscriptions", "gauge", "Task subscriptions over all connections.", l.subscriptionCount)
        metric("progress_client_task_slots", "gauge",
               "Tasks the connected clients have been sent and remember the seq of (dropped when a task expires).",
               l.taskSlotCount)
        metric("progress_connections_opened_total", "counter", "WebSocket connections accepted.", m.connectionsOpened.load(ordering: .relaxed))
        metric("progress_connections_refused_total", "counter", "WebSocket connections closed for max_connections or max_connections_per_ip (1013).", m.connectionsRefused.load(ordering: .relaxed))
        metric("progress_messages_sent_total", "counter", "WebSocket messages sent.", m.messagesSent.load(ordering: .relaxed))
        metric("progress_messages_received_total", "counter", "WebSocket messages received.", m.messagesReceived.load(ordering: .relaxed))
        metric("progress_invalid_messages_total", "counter", "WebSocket messages answered with an error.", m.invalidMessages.load(ordering: .relaxed))
        metric("progress_http_requests_total", "counter", "HTTP requests.", m.httpRequests.load(ordering: .relaxed))
        metric("progress_fanouts_total", "counter", "Task states fanned out to subscribers.", m.fanouts.load(ordering: .relaxed))
        metric("progress_delta_patches_total", "counter", "Fan-outs for which a merge patch was built for delta subscribers.",
               m.deltaPatches.load(ordering: .relaxed))
        metric("progress_delta_bases", "gauge",
               "Tasks whose last state sent to delta subscribers the listener keeps as the base of the next patch (about 3 KB each).",
               l.deltaBaseCount)
        metric("progress_delta_full_states_total", "counter", "Fan-outs for which no merge patch could be built (delta subscribers got the full state).",
               m.deltaFullStates.load(ordering: .relaxed))
        metric("progress_slow_clients_closed_total", "counter", "Clients closed for not reading (4008).", m.slowClientsClosed.load(ordering: .relaxed))
        metric("progress_dropped_logs_total", "counter", "Log entries not fanned out because the queue was full.", m.droppedLogs.load(ordering: .relaxed))
        for row in CounterTable.engine { metric(row.metric, row.kind, row.help, row.value(c)) }
        metric("progress_fanout_queue_depth", "gauge", "Changes and logs waiting for the listener thread.", l.queueDepth)
        metric("progress_client_queue_depth", "gauge", "Messages waiting to be written to clients.",
               l.connections.values.reduce(0) { $0 + $1.pendingCount })
        if let r = l.engine.redisMetrics {
            for row in CounterTable.redis { metric(row.metric, row.kind, row.help, row.value(r)) }
        }
        return out
    }
}
