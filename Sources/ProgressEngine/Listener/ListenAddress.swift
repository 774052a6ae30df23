/// `host:port` of the `listen` option.
struct ListenAddress: Equatable {
    /// nil binds every interface.
    let host: String?
    let port: Int

    /// Parses "127.0.0.1:8000", "0.0.0.0:0", ":8000", "localhost:8000".
    /// - Throws: `EngineError.config` naming what is wrong.
    static func parse(_ text: String) throws -> ListenAddress {
        guard let colon = text.lastIndex(of: ":") else {
            throw EngineError.config("listen \"\(text)\" must be HOST:PORT, e.g. \"127.0.0.1:8000\" (port 0 = any free port)")
        }
        let host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw EngineError.config("listen \"\(text)\": port \"\(portText)\" must be a number within 0...65535")
        }
        if host.contains(":") || host.hasPrefix("[") {
            throw EngineError.config("listen \"\(text)\": IPv6 addresses are not supported; use an IPv4 address or a host name")
        }
        let bind: String? = switch host {
        case "", "0.0.0.0", "*": nil
        case "localhost": "127.0.0.1"
        default: host
        }
        return ListenAddress(host: bind, port: port)
    }
}
