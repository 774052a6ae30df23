import ArgumentParser
import Glibc
import ProgressEngine

/// `progress-server`: runs an engine with its listener for a fleet of workers (SPEC §2, topology 3).
@main
struct ProgressServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "progress-server",
        abstract: "Serve ProgressEngine's WebSocket + REST API on one port.",
        discussion: """
            Options given on the command line override the same keys of --config. Logs are JSON lines on \
            standard error. SIGINT or SIGTERM stop the server cleanly: connections are closed and the \
            engine flushed before it exits.
            """,
        version: versionString)

    /// MAJOR.MINOR.PATCH of the engine this binary carries (include/progress.h's, the one source).
    static var versionString: String {
        let n = progress_version_number()
        return "\(n / 10000).\(n / 100 % 100).\(n % 100)"
    }

    @Option(help: "HOST:PORT to listen on (port 0 picks a free port). Default: the config's, else 127.0.0.1:8000.")
    var listen: String?

    @Option(name: .customLong("redis-url"), help: "redis://host:port/db shared with the workers.")
    var redisURL: String?

    @Option(help: "A JSON file with engine options (the keys of config_json in include/progress.h).")
    var config: String?

    func run() throws {
        var fileText: String?
        if let path = config {
            guard let file = fopen(path, "r") else {
                throw ValidationError("cannot read --config \(path): \(String(cString: strerror(errno)))")
            }
            defer { fclose(file) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = fread(&chunk, 1, chunk.count, file)
                bytes.append(contentsOf: chunk[0..<n])
                if n < chunk.count { break }
            }
            fileText = String(decoding: bytes, as: UTF8.self)
        }
        var overrides: [(String, String)] = []
        if let listen { overrides.append(("listen", listen)) }
        if let redisURL { overrides.append(("redis_url", redisURL)) }
        let json = try ServerConfig.server(fileJSON: fileText, overrides: overrides, defaultListen: "127.0.0.1:8000")

        // Signals are taken synchronously by sigwait below, so no handler runs at an arbitrary point.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        var engine: OpaquePointer?
        let status = progress_engine_open(json, &engine)
        guard status == 0, let engine else {
            log("error", "start_failed", ["status": String(cString: progress_status_string(status)),
                                          "message": String(cString: progress_last_error())])
            throw ExitCode(2)
        }
        log("info", "listening", ["port": String(progress_engine_port(engine)), "config": ServerConfig.redacted(json)])
        var received: Int32 = 0
        sigwait(&signals, &received)
        log("info", "stopping", ["signal": received == SIGINT ? "SIGINT" : "SIGTERM"])
        progress_engine_close(engine)
        log("info", "stopped", [:])
    }

    /// One JSON line on standard error.
    private func log(_ level: String, _ event: String, _ fields: [String: String]) {
        var line = "{\"level\":\(quoted(level)),\"event\":\(quoted(event))"
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            line += ",\(quoted(key)):\(key == "port" ? value : quoted(value))"
        }
        line += "}\n"
        _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
    }

    private func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20: out += "\\u00" + String(scalar.value, radix: 16).leftPadded(2)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
