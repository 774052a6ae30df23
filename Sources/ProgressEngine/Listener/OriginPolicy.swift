/// Which browser origins may use the listener, from the `allowed_origins` key: the one place that decides both the
/// WebSocket Origin check and the REST API's CORS headers, so the two never disagree about an origin.
///
/// Not configured (nil): every WebSocket origin is accepted, as before the key existed, but no cross-origin REST
/// read is allowed (no CORS header is ever sent): opening the REST API to other origins is always an explicit
/// choice. `"*"` in the list allows every origin, answered with `Access-Control-Allow-Origin: *`.
/// No `Access-Control-Allow-Credentials` is ever sent: the token travels in `Authorization` (allowed by the
/// preflight) or `?token=`, never in a cookie, so a page never needs to send credentials.
struct OriginPolicy: Sendable {
    /// Normalized origins (`EngineConfig.normalizedOrigin`); nil when `allowed_origins` is not set.
    let allowed: Set<String>?

    /// What a preflight answer allows. POST is for the write routes (cancel); Content-Type for their JSON bodies.
    static let allowMethods = "GET, POST, OPTIONS"
    static let allowHeaders = "Authorization, Content-Type"
    /// How long a browser may reuse a preflight's answer. Ten minutes: a page's requests skip most preflights,
    /// and an origin removed from the configuration stops working within that time (Chromium caps it at 2 h).
    static let maxAgeSeconds = 600
    /// The methods of the `Allow` header of an `OPTIONS` that is no preflight (a 405 names the path's own).
    static let allowedMethods = "GET, OPTIONS"

    init(allowed: Set<String>?) {
        self.allowed = allowed
    }

    private var allowsAny: Bool { allowed?.contains("*") == true }

    /// Whether a WebSocket handshake with this Origin header ("" when none) is accepted. A request without Origin
    /// comes from no browser, and no browser page can be hijacked through it, so it is always accepted.
    func allowsWebSocket(origin: String) -> Bool {
        guard let allowed, !origin.isEmpty, !allowsAny else { return true }
        return allowed.contains(EngineConfig.normalizedOrigin(origin))
    }

    /// The `Access-Control-Allow-Origin` value for a request with this Origin header, or nil when it gets none.
    /// The origin is echoed exactly as the browser sent it: browsers compare the header with their own origin byte
    /// for byte, and it matched a configured origin (no CR or LF can be in it: config origins are checked).
    func allowOrigin(for origin: String) -> String? {
        guard let allowed, !origin.isEmpty else { return nil }
        if allowsAny { return "*" }
        return allowed.contains(EngineConfig.normalizedOrigin(origin)) ? origin : nil
    }

    /// The CORS headers of any answer to a request with this Origin header ("" when none), as "Name: value\r\n"
    /// lines. With `allowed_origins` set every answer says `Vary: Origin`, with or without the allow header, so a
    /// shared cache never hands one origin's answer to another; with `"*"` the answer is the same for all.
    func responseHeaders(origin: String) -> String {
        guard allowed != nil else { return "" }
        var headers = allowsAny ? "" : "Vary: Origin\r\n"
        if let value = allowOrigin(for: origin) { headers += "Access-Control-Allow-Origin: \(value)\r\n" }
        return headers
    }

    /// What an `OPTIONS` request is answered: a preflight from an allowed origin gets 204 with what it may send
    /// (the allow-origin header is added by `responseHeaders` like on every answer); an `OPTIONS` without Origin is
    /// no preflight and gets 204 with `Allow`. A preflight from another origin is refused with 403, so the page's
    /// console shows an answer that says why rather than a bare network error.
    /// - Returns: the extra headers of the 204.
    /// - Throws: `Refusal` (403) for an origin that is not allowed.
    func preflight(origin: String) throws(Refusal) -> String {
        if origin.isEmpty { return "Allow: \(OriginPolicy.allowedMethods)\r\n" }
        guard allowOrigin(for: origin) != nil else {
            throw Refusal(message: allowed == nil
                ? "cross-origin requests are not allowed: this listener has no allowed_origins"
                : "origin \(origin) is not in allowed_origins")
        }
        return "Access-Control-Allow-Methods: \(OriginPolicy.allowMethods)\r\n"
            + "Access-Control-Allow-Headers: \(OriginPolicy.allowHeaders)\r\n"
            + "Access-Control-Max-Age: \(OriginPolicy.maxAgeSeconds)\r\n"
    }

    /// A preflight from an origin that may not use the API (403 `origin_not_allowed`).
    struct Refusal: Error {
        let message: String
    }
}
