/// What one fan-out of a task offers its delta subscribers: the shared patch frame (nil when none could be
/// built) and the bases it joins. A client gets the patch only when the last state queued for it is exactly the
/// patch's base (`baseGeneration`); any other gets the full state. Every state handed to delta subscribers by a
/// fan-out gets a fresh generation, so equal seqs with different contents (an ETA estimated at another time,
/// a state sent on subscribe) can never pass for one another.
struct DeltaStep {
    let patch: WireMessage?
    /// The generation of the patch's base; 0 (no client holds it) when there is no patch.
    let baseGeneration: UInt64
    /// The generation of the state this fan-out sends.
    let generation: UInt64
}

/// Per task, the last TaskProgress the fan-out sent to delta subscribers (its seq, generation, bytes and
/// outline): the base of the next merge patch, so that a patch is built once per change whatever the number of
/// clients, and reads only the new state. Owned by the listener thread. A base is kept only while delta
/// subscribers take the task's states: a fan-out with none of them, a terminal state, expiry, and the last
/// subscriber of the task leaving drop it (about 3 KB per task: the message and the outline of its members).
final class DeltaBases {
    private struct Base {
        let seq: UInt64
        let generation: UInt64
        /// The `progress.update` message it went out in, and where its TaskProgress lies in it.
        let message: [UInt8]
        let data: Range<Int>
        let outline: MergePatch.Outline
    }

    @exclusivity(unchecked) private var bases: [IdKey: Base] = [:]
    @exclusivity(unchecked) private var nextGeneration: UInt64 = 1

    /// Makes the TaskProgress of `seq` (`message[data]`) the task's base and answers the patch from the previous
    /// base.
    func advance(taskId: String, seq: UInt64, message: [UInt8], data: Range<Int>, terminal: Bool,
                 metrics: ListenerMetrics) -> DeltaStep {
        let key = IdKey(taskId)
        let old = bases[key]
        let generation = nextGeneration
        nextGeneration += 1
        let outline = MergePatch.Outline(message[data])
        // A terminal state is the task's last: nothing will be diffed against it.
        bases[key] = terminal ? nil : outline.map {
            Base(seq: seq, generation: generation, message: message, data: data, outline: $0)
        }
        guard let old, let outline, old.seq < seq,
              let patch = MergePatch.diff(from: old.message[old.data], old.outline, to: message[data], outline),
              patch.count < data.count else {
            metrics.deltaFullStates.add(1, ordering: .relaxed)
            return DeltaStep(patch: nil, baseGeneration: 0, generation: generation)
        }
        metrics.deltaPatches.add(1, ordering: .relaxed)
        let frame = WireMessage(Messages.progressPatch(taskId: taskId, seq: seq, baseSeq: old.seq, patch: patch))
        return DeltaStep(patch: frame, baseGeneration: old.generation, generation: generation)
    }

    func forget(taskId: String) {
        bases[IdKey(taskId)] = nil
    }

    func removeAll() {
        bases.removeAll()
    }

    func removeAll(where drop: (IdKey) -> Bool) {
        bases = bases.filter { !drop($0.key) }
    }

    var count: Int { bases.count }
}
