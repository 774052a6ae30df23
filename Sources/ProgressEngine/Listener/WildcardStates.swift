/// A `"*"` subscribe's current states still to be sent to one client, oldest first. They are read and queued a
/// slice at a time as the client takes them (`Messages.continueWildcard`, from the client's writable callback once
/// the previous slice is written), so that a listener holding many tasks neither stalls its other clients while it
/// serialises every state nor queues them all at once for one client. What the client sends meanwhile waits
/// (`ClientConnection.deferred`); past a bound, the listener stops reading the client until it has handled them.
/// Owned by the listener thread.
struct WildcardStates {
    /// States read and queued per slice: about a millisecond of the listener thread.
    static let slice = 64
    /// Messages waiting, or their bytes, past which the client's connection is not read.
    static let maxDeferredMessages = 64
    static let maxDeferredBytes = 1 << 20

    let items: [WildcardItem]
    var next = 0
    /// The subscribe asked for delta: each state goes even at a seq the client was sent as a patch.
    let delta: Bool
}
