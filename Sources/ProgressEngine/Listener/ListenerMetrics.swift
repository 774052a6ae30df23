import Synchronization

/// Counters of the listener, read by `/metrics` (Prometheus text format).
final class ListenerMetrics: Sendable {
    let connectionsOpened = Atomic<Int>(0)
    let connectionsRefused = Atomic<Int>(0)
    let messagesSent = Atomic<Int>(0)
    let messagesReceived = Atomic<Int>(0)
    let invalidMessages = Atomic<Int>(0)
    let httpRequests = Atomic<Int>(0)
    let fanouts = Atomic<Int>(0)
    /// Fan-outs to delta subscribers that built a merge patch, and those that could not (no base, or a change
    /// no merge patch expresses): every delta subscriber got the full state.
    let deltaPatches = Atomic<Int>(0)
    let deltaFullStates = Atomic<Int>(0)
    let slowClientsClosed = Atomic<Int>(0)
    let droppedLogs = Atomic<Int>(0)
}
