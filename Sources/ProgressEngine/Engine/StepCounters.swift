import CProgress
import Glibc
import Synchronization

/// Caller-owned step counter memory attached to a task (`progress_task_attach_counter`).
struct CounterBinding {
    let pointer: UnsafePointer<CLongLong>
    var lastStep: Int64
    var lastTotal: Int64

    func read() -> (step: Int64, total: Int64) {
        (Int64(CProgress_load_relaxed(pointer)), Int64(CProgress_load_relaxed(pointer + 1)))
    }
}

/// Step counters: caller-owned memory the maintenance thread reads.
extension EngineCore {
    func attachCounter(id: String, pointer: UnsafePointer<CLongLong>) throws {
        try countingRefusal(id: id) { try withTask(id: id, isUpdate: false) { task in
            guard !task.status.isTerminal else {
                throw EngineError.state("task \"\(id)\" is \(task.status.name); a counter would never be read")
            }
            // Start from "nothing seen" so values written before attaching are applied.
            task.counter = CounterBinding(pointer: pointer, lastStep: -1, lastTotal: -1)
        } }
        counterTasks.withLock { _ = $0.insert(IdKey(id)) }
        maintenance?.wake()
    }

    func detachCounter(id: String) throws {
        let now = clock.now()
        let key = TaskKey(owning: id)
        // The last read is applied like a maintenance round's: a step it finds is an update of the task, counted,
        // fanned out and written through (it was once applied silently, so Redis and watchers never saw it unless
        // another change of the task followed).
        let had: Bool? = table.shard(for: key).withLock { shard in
            guard let task = shard.tasks[key] else { return nil }
            guard task.counter != nil else { return false }
            let before = task.status, seq = task.seq
            readCounterOneLastTime(task, at: max(now, task.lastTimestamp))
            if task.seq != seq || task.status != before {
                afterChange(task, &shard, seqBefore: seq, statusBefore: before)
            }
            return true
        }
        counterTasks.withLock { _ = $0.remove(IdKey(id)) }
        guard let had else { throw try unknownTask(id, logged: false) }
        guard had else { throw EngineError.notFound("task \"\(id)\" has no counter attached") }
    }

    /// Applies the counter's values if they changed; returns whether it did. A pair that cannot be applied (e.g. a
    /// step past total_steps) is skipped and counted in `invalid_updates`, as progress_update would count it; so is
    /// a pair read between the caller's two stores, which the next read applies once finished. Called under the
    /// shard lock.
    @discardableResult
    func pollCounter(_ task: TaskRecord, at ts: Double) -> Bool {
        guard var counter = task.counter else { return false }
        let (step, total) = counter.read()
        guard step != counter.lastStep || total != counter.lastTotal else { return false }
        counter.lastStep = step
        counter.lastTotal = total
        task.counter = counter
        do {
            try task.applyStep(step: step, total: total, message: .none, at: ts)
            return true
        } catch {
            misses.add(1, ordering: .relaxed)
            logRejected(task, error, at: clock.now())
            return false
        }
    }

    /// Applies steps still in the task's counter before something that must come after them (a stage change, a
    /// log entry, a read): the runner wrote them first. `notify`: the caller is not an update that announces the
    /// change itself. Under the shard lock.
    @inline(__always)
    func catchUpCounter(_ task: TaskRecord, at ts: Double, notify: Bool) {
        if task.counter != nil, !task.status.isTerminal, pollCounter(task, at: ts), notify { noteChanged(task) }
    }

    func readCounterOneLastTime(_ task: TaskRecord, at ts: Double) {
        if task.counter != nil, !task.status.isTerminal { pollCounter(task, at: ts) }
        task.counter = nil
    }
}
