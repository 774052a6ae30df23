import ArgumentParser
import Glibc
import Logging
import ProgressEngine

/// `progress-server`: runs an engine with its listener for a fleet of workers (SPEC §2, topology 3).
@main
struct ProgressServer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "progress-server",
        abstract: "Serve ProgressEngine's WebSocket + REST API on one port.",
        discussion: """
            Options given on the command line override the same keys of --config. Logs are JSON lines on \
            standard error (--log-format text: text lines, the engine's included). SIGINT or SIGTERM stop \
            the server cleanly: connections are closed and the engine flushed before it exits.
            """,
        version: Engine.version)

    @Option(help: "HOST:PORT to listen on (port 0 picks a free port). Default: the config's, else 127.0.0.1:8000.")
    var listen: String?

    @Option(name: .customLong("redis-url"), help: "redis://host:port/db shared with the workers.")
    var redisURL: String?

    @Option(help: "A JSON file with engine options (the keys of config_json in include/progress.h).")
    var config: String?

    @Option(name: .customLong("log-format"), help: "json (one JSON object per line, the default) or text.")
    var logFormat: LogFormat = .json

    enum LogFormat: String, ExpressibleByArgument {
        case json, text
    }

    func run() throws {
        let format = logFormat
        Engine.logFormat = format == .text ? .text : .json
        LoggingSystem.bootstrap { label in
            switch format {
            case .json: return JSONLogHandler()
            case .text: return StreamLogHandler.standardError(label: label)
            }
        }
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
        let logger = Logger(label: "progress-server")
        // The engine's message names config_json: the operator wrote the file and the flags.
        let source = (config.map { "--config \($0)" } ?? "the defaults")
            + (overrides.isEmpty ? "" : " and " + overrides.map { "--" + String($0.0.map { $0 == "_" ? "-" : $0 }) }
                .joined(separator: ", "))
        let json: String
        do {
            json = try ServerConfig.server(fileJSON: fileText, overrides: overrides, defaultListen: "127.0.0.1:8000")
        } catch {
            logger.error("start_failed", metadata: ["message": "\(error)", "configuration": "\(source)"])
            throw ExitCode(2)
        }

        // A server outlives the reader of its log: a line written after that reader went away fails with EPIPE
        // instead of ending the process before it has closed its engine (the engine leaves SIGPIPE to its host).
        signal(SIGPIPE, SIG_IGN)
        // Signals are taken synchronously by sigwait below, so no handler runs at an arbitrary point.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)

        let engine: Engine
        do {
            engine = try Engine(configJSON: json)
        } catch {
            logger.error("start_failed", metadata: ["status": "\(error.code)", "message": "\(error.message)",
                                                    "configuration": "\(source)"])
            throw ExitCode(2)
        }
        logger.info("listening", metadata: ["port": .stringConvertible(engine.port ?? -1),
                                            "config": "\(ServerConfig.redacted(json))"])
        var received: Int32 = 0
        sigwait(&signals, &received)
        logger.info("stopping", metadata: ["signal": "\(received == SIGINT ? "SIGINT" : "SIGTERM")"])
        engine.close()
        logger.info("stopped")
    }
}
