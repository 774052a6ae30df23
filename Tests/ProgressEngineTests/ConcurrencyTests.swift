import CProgress
import Dispatch
import Testing
@testable import ProgressEngine

@Suite("Concurrency (run under ThreadSanitizer by `make tsan`)")
struct ConcurrencyTests {
    @Test("8 threads x 10,000 updates through the C thunk leave each task in its final state; readers run alongside")
    func manyThreads() throws {
        var handle: OpaquePointer?
        #expect(progress_engine_open(#"{"throttle_ms": 1, "resource_interval_ms": 3600000}"#, &handle) == 0)
        defer { progress_engine_close(handle) }
        let threads = 8, updates = 10_000
        for i in 0..<threads {
            #expect(progress_task_create(handle, "task-\(i)", "sdxl", "image_generation", nil) == 0)
        }
        let engineAddress = Int(bitPattern: UnsafeRawPointer(handle))
        DispatchQueue.concurrentPerform(iterations: threads + 2) { worker in
            let engine = OpaquePointer(bitPattern: engineAddress)
            if worker >= threads {
                // Readers: snapshots while the writers run.
                for i in 0..<200 {
                    var json: UnsafeMutablePointer<CChar>?
                    _ = progress_task_get(engine, "task-\(i % threads)", &json)
                    progress_string_free(json)
                }
                return
            }
            for step in 1...updates {
                _ = progress_update(engine, "task-\(worker)", Int64(step), Int64(updates), step % 1000 == 0 ? "step \(step)" : nil)
            }
        }
        for i in 0..<threads {
            var json: UnsafeMutablePointer<CChar>?
            #expect(progress_task_get(handle, "task-\(i)", &json) == 0)
            let task = try parsed(String(cString: json!))
            progress_string_free(json)
            #expect(number(task["stages"]?["2"]?["progress"]) == 1.0)
            #expect(number(task["seq"]) == Double(updates + 1))
            #expect(string(task["stages"]?["2"]?["message"]) == "step \(updates)")
        }
    }

    @Test("counters polled by the maintenance thread while their writer runs, then completed")
    func countersUnderLoad() throws {
        let engine = try EngineCore(config: try EngineConfig.parse(#"{"throttle_ms": 1}"#))
        defer { engine.close() }
        let tasks = 4
        let counters = UnsafeMutablePointer<CLongLong>.allocate(capacity: 2 * tasks)
        defer { counters.deallocate() }
        for i in 0..<tasks {
            try engine.createTask(id: "c\(i)", templateId: "x", category: "video_generation", options: TaskOptions())
            counters[2 * i] = 0
            counters[2 * i + 1] = 100_000
            try engine.attachCounter(id: "c\(i)", pointer: counters + 2 * i)
        }
        let address = Int(bitPattern: counters)
        DispatchQueue.concurrentPerform(iterations: tasks) { i in
            let slot = UnsafeMutablePointer<CLongLong>(bitPattern: address)! + 2 * i
            for step in 1...100_000 {
                // Relaxed atomic stores, as the header asks of counter writers.
                CProgress_store_relaxed(slot, CLongLong(step))
            }
        }
        for i in 0..<tasks {
            try engine.complete(id: "c\(i)")
            let h = try parsed(engine.historyJSON(id: "c\(i)", afterSeq: 0))
            if case let .array(events)? = h["events"] {
                #expect(number(events.last { string($0["type"]) == "progress" }?["progress"]) == 1.0)
            }
        }
    }
}
