// An engine with its listener running next to the host's own work: a task created, stepped and completed
// through the Swift API, its changes streamed, its final state read back. The listener serves the dashboard and
// the REST / WebSocket API until standard input ends (Enter, or Ctrl-D).
import Glibc
import ProgressEngine

/// One line on standard output at once, also into a pipe (a supervisor, a test), where print's stdio buffer
/// would hold it until exit.
func say(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(STDOUT_FILENO, $0, strlen($0)) }
}

let engine = try Engine(configJSON: #"{"listen": "127.0.0.1:0", "throttle_ms": 20}"#)
say("listening on http://127.0.0.1:\(engine.port!)")

// What a host that forwards updates over its own transport would do with each change.
let forwarder = Task {
    var count = 0
    for await state in engine.changes(of: ["render-1"]) {
        count += 1
        say("change seq=\(state.seq) status=\(state.status.rawValue) stage=\(state.currentStage) "
            + "overall=\(state.overallProgress)")
    }
    return count
}

// The host's own work: a 20-step render.
try engine.createTask("render-1", templateID: "sdxl", category: "image_generation")
for step in 1...20 {
    try engine.update("render-1", step: step, total: 20, message: "step \(step)")
    try await Task.sleep(for: .milliseconds(5))
}
try engine.complete("render-1")

let changes = await forwarder.value
let final = try engine.task("render-1")
say("streamed \(changes) changes")
say("final status=\(final.status.rawValue) overall=\(final.overallProgress) stages=\(final.stages.count)")
say("serving until standard input ends")
while readLine() != nil {}
engine.close()
