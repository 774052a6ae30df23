import Testing
@testable import ProgressEngine

/// Records what a feed tells its consumer.
private final class RecordingConsumer: ChangeConsumer {
    var enqueued: [String] = []
    func enqueue(taskId: String) { enqueued.append(taskId) }
}

/// A consumer that notes when tasks enter its queue, as the listener does (`queueTime`), on a clock the test sets.
private final class ClockedConsumer: ChangeConsumer {
    var now = 0.0
    func enqueue(taskId: String) {}
    func queueTime() -> Double { now }
}

private func record(_ id: String = "t") -> TaskRecord {
    TaskRecord(id: id, key: TaskKey(owning: id), templateId: "x", category: nil, quality: nil, batchId: nil,
               resourceConfig: nil, metadata: nil, stages: CategoryDefaults.stages(for: nil), timestamp: 0)
}

/// The change path's rules, on explicit monotonic times: no threads, no sockets, no sleeps.
@Suite("Change feed: throttle, coalescing, urgent bypass")
struct ChangeFeedTests {
    let throttle = 0.25  // times below are exact in binary, so the window's edge is tested exactly

    @Test("a task is queued once however often it changes, and taken once per throttle window")
    func coalescing() {
        for feed in [ChangeFeed.fanout, ChangeFeed.storage] {
            let task = record(), consumer = RecordingConsumer()
            for _ in 0..<1000 { feed.note(task, urgent: false, to: consumer) }
            #expect(consumer.enqueued == ["t"])
            #expect(feed.take(task, now: 10, throttle: throttle) == .take(urgent: false))
            #expect(feed.take(task, now: 10, throttle: throttle) == .nothing)
            for _ in 0..<1000 { feed.note(task, urgent: false, to: consumer) }
            #expect(consumer.enqueued == ["t", "t"])
            // Inside the window: held back until the window ends, then the latest state goes.
            #expect(feed.take(task, now: 10.125, throttle: throttle) == .later(10.25))
            #expect(feed.take(task, now: 10.2499, throttle: throttle) == .later(10.25))
            #expect(feed.take(task, now: 10.25, throttle: throttle) == .take(urgent: false))
            // A change long after the last take is taken at once.
            feed.note(task, urgent: false, to: consumer)
            #expect(feed.take(task, now: 20, throttle: throttle) == .take(urgent: false))
        }
    }

    @Test("fan-out windows follow the runner's changes, not the rounds that took them")
    func windowsFollowTheRunner() {
        let feed = ChangeFeed.fanout, consumer = ClockedConsumer()
        let a = record("a"), b = record("b")
        // Both change at 10; a round takes a at once, a later round b (the listener was busy).
        consumer.now = 10
        feed.note(a, urgent: false, to: consumer)
        feed.note(b, urgent: false, to: consumer)
        #expect(feed.take(a, now: 10.0625, throttle: throttle) == .take(urgent: false))
        #expect(feed.take(b, now: 10.1875, throttle: throttle) == .take(urgent: false))
        // The runner's next instant, one window later: both go in the same round again (by the take's time b would
        // wait until 10.4375, and stay a round behind a at every instant).
        consumer.now = 10.25
        feed.note(a, urgent: false, to: consumer)
        feed.note(b, urgent: false, to: consumer)
        #expect(feed.take(a, now: 10.25, throttle: throttle) == .take(urgent: false))
        #expect(feed.take(b, now: 10.25, throttle: throttle) == .take(urgent: false))
        // The runner's next instant comes a little early (its own jitter): still taken at once, no timer round.
        consumer.now = 10.5 - 1.0 / 256
        feed.note(a, urgent: false, to: consumer)
        #expect(feed.take(a, now: 10.5 - 1.0 / 512, throttle: throttle) == .take(urgent: false))
        // Earlier than the slack (1/32 of the window): that is a faster runner, held to the window's end.
        consumer.now = 10.75 - 1.0 / 64
        feed.note(a, urgent: false, to: consumer)
        #expect(feed.take(a, now: 10.75 - 1.0 / 128, throttle: throttle) == .later(10.75 - 1.0 / 256))
    }

    @Test("a window never starts before the previous one ended, so a steady runner gets one state per window")
    func windowsDoNotOverlap() {
        let feed = ChangeFeed.fanout, consumer = ClockedConsumer()
        let task = record()
        consumer.now = 30
        feed.note(task, urgent: false, to: consumer)
        #expect(feed.take(task, now: 30, throttle: throttle) == .take(urgent: false))
        // Changed early in the window: held to its end, and the next window starts there, not at the change.
        consumer.now = 30.0625
        feed.note(task, urgent: false, to: consumer)
        #expect(feed.take(task, now: 30.125, throttle: throttle) == .later(30.25))
        #expect(feed.take(task, now: 30.25, throttle: throttle) == .take(urgent: false))
        consumer.now = 30.3125
        feed.note(task, urgent: false, to: consumer)
        #expect(feed.take(task, now: 30.375, throttle: throttle) == .later(30.5))
        // An urgent take opens its window at the take, as before.
        feed.note(task, urgent: true, to: consumer)
        #expect(feed.take(task, now: 30.4375, throttle: throttle) == .take(urgent: true))
        consumer.now = 30.5
        feed.note(task, urgent: false, to: consumer)
        #expect(feed.take(task, now: 30.5, throttle: throttle) == .later(30.6875))
    }

    @Test("an urgent change bypasses the throttle, and is queued again behind a queued ordinary change")
    func urgentBypass() {
        for feed in [ChangeFeed.fanout, ChangeFeed.storage] {
            let task = record(), consumer = RecordingConsumer()
            feed.note(task, urgent: false, to: consumer)
            #expect(feed.take(task, now: 5, throttle: throttle) == .take(urgent: false))
            feed.note(task, urgent: false, to: consumer)
            #expect(feed.take(task, now: 5.125, throttle: throttle) == .later(5.25))
            feed.note(task, urgent: true, to: consumer)
            feed.note(task, urgent: true, to: consumer)
            feed.note(task, urgent: false, to: consumer)
            // Queued, then queued again as urgent (the consumer may be holding the first entry for later).
            #expect(consumer.enqueued == ["t", "t", "t"])
            #expect(feed.take(task, now: 5.125, throttle: throttle) == .take(urgent: true))
            // The urgent take opens a new window.
            feed.note(task, urgent: false, to: consumer)
            #expect(feed.take(task, now: 5.25, throttle: throttle) == .later(5.375))
        }
    }

    @Test("a take that did not reach its destination is taken again at once")
    func requeue() {
        let task = record(), consumer = RecordingConsumer()
        ChangeFeed.storage.note(task, urgent: false, to: consumer)
        #expect(ChangeFeed.storage.take(task, now: 1, throttle: throttle) == .take(urgent: false))
        ChangeFeed.storage.requeue(task)
        #expect(consumer.enqueued == ["t"], "the consumer keeps the id it holds; it is not queued twice")
        #expect(ChangeFeed.storage.take(task, now: 1.001, throttle: throttle) == .take(urgent: true))
    }

    @Test("the listener gets every urgent state it had not taken, oldest first, at most maxHeldUrgent")
    func heldUrgentStates() throws {
        let task = record(), consumer = RecordingConsumer()
        var seqs: [UInt64] = []
        for step in 1...3 {
            try task.applyStep(step: Int64(step), total: 10, message: .none, at: Double(step))
            seqs.append(task.seq)
            ChangeFeed.fanout.note(task, urgent: true, to: consumer)
        }
        #expect(ChangeFeed.fanout.take(task, now: 1, throttle: throttle) == .take(urgent: true))
        #expect(ChangeFeed.fanout.takeHeld(task).map(\.seq) == Array(seqs.prefix(2)))
        #expect(ChangeFeed.fanout.takeHeld(task).isEmpty)
        // A runner stuck in a loop of urgent changes cannot grow the held states without bound.
        for step in 4..<(4 + ChangeFeed.maxHeldUrgent + 10) {
            try task.applyStep(step: Int64(step), total: 1000, message: .none, at: Double(step))
            ChangeFeed.fanout.note(task, urgent: true, to: consumer)
        }
        #expect(ChangeFeed.fanout.take(task, now: 2, throttle: throttle) == .take(urgent: true))
        #expect(ChangeFeed.fanout.takeHeld(task).count == ChangeFeed.maxHeldUrgent)
        // Ordinary changes are coalesced, never held.
        try task.applyStep(step: 900, total: 1000, message: .none, at: 900)
        ChangeFeed.fanout.note(task, urgent: false, to: consumer)
        try task.applyStep(step: 901, total: 1000, message: .none, at: 901)
        ChangeFeed.fanout.note(task, urgent: false, to: consumer)
        #expect(ChangeFeed.fanout.take(task, now: 3, throttle: throttle) == .take(urgent: false))
        #expect(ChangeFeed.fanout.takeHeld(task).isEmpty)
    }

    @Test("a mirror of another engine's task is never written back, but is fanned out")
    func mirrors() {
        let task = record(), consumer = RecordingConsumer()
        task.isMirror = true
        ChangeFeed.storage.note(task, urgent: true, to: consumer)
        #expect(consumer.enqueued.isEmpty)
        #expect(ChangeFeed.storage.take(task, now: 1, throttle: 0) == .nothing)
        ChangeFeed.fanout.note(task, urgent: true, to: consumer)
        #expect(consumer.enqueued == ["t"])
    }

    @Test("acknowledgements only move forward")
    func ack() {
        let task = record()
        ChangeFeed.storage.ack(task, seq: 10, logs: 3)
        ChangeFeed.storage.ack(task, seq: 7, logs: 1)
        #expect(task.persistedSeq == 10 && task.persistedLogs == 3)
    }
}

/// Which changes take the urgent bypass (SPEC §7): the rule `ChangeFeed` is fed with, per command.
@Suite("Change feed: what is urgent")
struct ChangeUrgencyTests {
    @Test("creation, stage changes, terminal states go at once; steps, stage progress and resources wait")
    func urgency() throws {
        let engine = try makeEngine()
        func urgent(_ id: String = "u") throws -> Bool {
            try engine.withTask(id: id, isUpdate: false) { $0.lastChangeUrgent }
        }
        func step(_ n: Int64) throws {
            try engine.update(key: TaskKey(owning: "u"), describe: { "u" }, step: n, total: 10, message: .none)
        }
        try engine.createTask(id: "u", templateId: "sdxl", category: "image_generation", options: TaskOptions())
        #expect(try urgent(), "creation")
        try engine.updateStage(id: "u", stage: 1, status: .inProgress, progress: 0, message: .none)
        #expect(try urgent(), "a stage change")
        try engine.event(id: "u", name: "resources", dataJSON: #"{"cpu_percent": 42}"#)
        #expect(try !urgent(), "the runner's resource figures")
        try engine.updateStage(id: "u", stage: 1, status: .inProgress, progress: 0.5, message: .none)
        #expect(try !urgent(), "progress within the current stage")
        try engine.updateStage(id: "u", stage: 1, status: .completed, progress: 1, message: .none)
        #expect(try urgent(), "completing the current stage")
        try step(1)
        #expect(try urgent(), "a step that enters the main stage")
        try step(2)
        #expect(try !urgent(), "a step within the stage")
        try engine.complete(id: "u")
        #expect(try urgent(), "the terminal state")

        try engine.createTask(id: "f", templateId: "sdxl", category: "image_generation", options: TaskOptions())
        try engine.fail(id: "f", error: "boom")
        #expect(try urgent("f"), "a failure")
    }
}
