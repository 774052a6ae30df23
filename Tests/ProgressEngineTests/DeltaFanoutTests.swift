import Testing
@testable import ProgressEngine

/// The fan-out's side of delta updates without sockets: which frame each client's queue gets. A patch goes only
/// to a client whose last queued state is the patch's base; every other case gets the full state.
@Suite("Delta fan-out: a patch only on its base")
struct DeltaFanoutTests {
    /// A client that nothing is ever written to (its socket handle is never used by queueing alone).
    private func client(_ id: UInt64) -> ClientConnection {
        let c = ClientConnection(id: id, wsi: UnsafeMutableRawPointer(bitPattern: 0x1000)!, clientId: "c\(id)",
                                 peer: "p", flushList: FlushList())
        c.subscriptions = [IdKey("t")]
        c.deltaIds = [IdKey("t")]
        c.usesDelta = true
        return c
    }

    /// The fan-out of state `seq`: its full frame (long) and the step (its patch frame, short).
    private func fanOut(_ bases: DeltaBases, seq: UInt64, metrics: ListenerMetrics) -> (WireMessage, DeltaStep) {
        let padding = String(repeating: "x", count: 200)
        let head = Array(#"{"type":"progress.update","task_id":"t","seq":\#(seq),"data":"#.utf8)
        let data = Array(#"{"seq":\#(seq),"pad":"\#(padding)"}"#.utf8)
        let message = head + data + Array("}".utf8)
        let step = bases.advance(taskId: "t", seq: seq, message: message, data: head.count..<(head.count + data.count),
                                 terminal: false, metrics: metrics)
        return (WireMessage(message), step)
    }

    @Test("subscribe state, then full once, then patches; a client that skipped a state gets the full one")
    func bases() throws {
        let bases = DeltaBases()
        let metrics = ListenerMetrics()
        let a = client(1)
        let b = client(2)
        // The state a subscribe sends is no fan-out's: the next fan-out cannot be a patch against it.
        let subscribeState = WireMessage(Array(#"{"type":"progress.update","task_id":"t","seq":1,"data":{}}"#.utf8))
        a.sendProgress(subscribeState, task: "t", seq: 1, urgent: true)
        b.sendProgress(subscribeState, task: "t", seq: 1, urgent: true)
        var bytesA = a.queuedBytes
        var bytesB = b.queuedBytes

        let (full2, step2) = fanOut(bases, seq: 2, metrics: metrics)
        #expect(step2.patch == nil)
        for c in [a, b] { c.sendFanout(full2, task: "t", seq: 2, urgent: true) { step2 } }
        #expect(a.queuedBytes - bytesA == full2.length && b.queuedBytes - bytesB == full2.length)
        bytesA = a.queuedBytes
        bytesB = b.queuedBytes

        let (full3, step3) = fanOut(bases, seq: 3, metrics: metrics)
        let patch3 = try #require(step3.patch)
        #expect(patch3.length < full3.length)
        a.sendFanout(full3, task: "t", seq: 3, urgent: true) { step3 } // b misses seq 3
        #expect(a.queuedBytes - bytesA == patch3.length)
        bytesA = a.queuedBytes

        let (full4, step4) = fanOut(bases, seq: 4, metrics: metrics)
        let patch4 = try #require(step4.patch)
        for c in [a, b] { c.sendFanout(full4, task: "t", seq: 4, urgent: true) { step4 } }
        #expect(a.queuedBytes - bytesA == patch4.length, "a holds seq 3, the patch's base")
        #expect(b.queuedBytes - bytesB == full4.length, "b holds seq 2: the patch would apply to the wrong base")
        #expect(metrics.deltaPatches.load(ordering: .relaxed) == 2)
        #expect(metrics.deltaFullStates.load(ordering: .relaxed) == 1)
    }

    @Test("an unsent update replaced by a newer one is replaced by the full state, never by a patch")
    func replaced() throws {
        let bases = DeltaBases()
        let metrics = ListenerMetrics()
        let a = client(1)
        let (full1, step1) = fanOut(bases, seq: 1, metrics: metrics)
        a.sendFanout(full1, task: "t", seq: 1, urgent: true) { step1 }
        let (full2, step2) = fanOut(bases, seq: 2, metrics: metrics)
        let patch2 = try #require(step2.patch)
        let before = a.queuedBytes
        a.sendFanout(full2, task: "t", seq: 2, urgent: false) { step2 } // queued, replaceable
        #expect(a.queuedBytes - before == patch2.length)
        let (full3, step3) = fanOut(bases, seq: 3, metrics: metrics)
        #expect(step3.patch != nil)
        a.sendFanout(full3, task: "t", seq: 3, urgent: false) { step3 } // replaces seq 2's patch in place
        #expect(a.queuedBytes - before == full3.length, "seq 2 never reaches the client: seq 3 goes in full")
        #expect(a.pendingCount == 2)
        // The client now holds seq 3 (the full state): the next patch applies.
        let (full4, step4) = fanOut(bases, seq: 4, metrics: metrics)
        let patch4 = try #require(step4.patch)
        a.sendFanout(full4, task: "t", seq: 4, urgent: true) { step4 }
        #expect(a.queuedBytes - before == full3.length + patch4.length)
    }

    @Test("a task subscribed without delta gets full frames, and the choice follows its subscription")
    func choice() {
        let bases = DeltaBases()
        let metrics = ListenerMetrics()
        let a = client(1)
        a.setDelta(false, for: ["t"])
        a.forgetDeltaModes()
        let (full1, step1) = fanOut(bases, seq: 1, metrics: metrics)
        a.sendFanout(full1, task: "t", seq: 1, urgent: true) { step1 }
        let (full2, step2) = fanOut(bases, seq: 2, metrics: metrics)
        var built = false
        a.sendFanout(full2, task: "t", seq: 2, urgent: true) { built = true; return step2 }
        #expect(!built, "no patch is asked for a plain subscription")
        #expect(a.queuedBytes == full1.length + full2.length)
    }
}
