/// The Redis commands of one task write (docs/REDIS.md, "Writing"), pipelined by the writer thread.
extension RedisWriter {
    /// Appends one task's commands. - Returns: how many.
    func appendWrite(_ w: TaskWrite, to c: RedisConnection) -> Int {
        let s = w.snapshot
        let id = w.id
        let stateJSON = StoredTask.json(s)
        var n = 0
        let first = w.firstSeq == 1 && !w.again
        if first {
            // A new task: what an earlier task of the same id left (history, log, a cancel request) is not its own.
            c.append(["DEL", RedisArgument(keys.events(id)), RedisArgument(keys.logs(id)),
                      RedisArgument(keys.cancel(id))])
            n += 1
        }
        let events = StoredEvents.thin(w.events, limit: RedisWriter.maxEventsPerWrite)
        let thinned = w.events.count - events.count
        if thinned + w.lostEvents > 0 { metrics.droppedEvents.add(thinned + w.lostEvents, ordering: .relaxed) }
        var eventsWriter = JSONWriter(capacity: 128 * max(1, events.count))
        eventsWriter.beginArray()
        for e in events { e.write(to: &eventsWriter, form: .stored) }
        eventsWriter.endArray()
        let complete = thinned == 0 && w.lostEvents == 0
        if let last = events.last {
            c.append(["XADD", RedisArgument(keys.events(id)), "MAXLEN", "~", RedisArgument(String(RedisWriter.streamMaxLength)),
                      RedisArgument("\(max(last.seq, s.seq))-0"), "first", RedisArgument(String(w.firstSeq)),
                      "complete", complete ? "1" : "0", "events", RedisArgument(eventsWriter.bytes)])
            c.append(["PEXPIRE", RedisArgument(keys.events(id)), ttl])
            n += 2
        }
        if w.lostLogs > 0 { metrics.droppedLogs.add(w.lostLogs, ordering: .relaxed) }
        var logsWriter = JSONWriter()
        logsWriter.beginArray()
        if !w.logs.isEmpty {
            var args: [RedisArgument] = ["RPUSH", RedisArgument(keys.logs(id))]
            for entry in w.logs {
                args.append(RedisArgument(StoredEvents.logJSON(entry)))
                entry.write(to: &logsWriter, form: .stored)
            }
            c.append(args)
            c.append(["LTRIM", RedisArgument(keys.logs(id)), RedisArgument(String(-TaskRecord.logCapacity)), "-1"])
            n += 2
        }
        // Renewed with every write, not only with new entries: a finished task's log lives retention_seconds from
        // its end, like its state (it used to expire that long after its last entry).
        c.append(["PEXPIRE", RedisArgument(keys.logs(id)), ttl])
        n += 1
        if s.previewURL != nil {
            // Likewise the previews (written on their own, `enqueuePreview`): a finished task's expire with it.
            c.append(["PEXPIRE", RedisArgument(keys.previews(id)), ttl])
            n += 1
        }
        logsWriter.endArray()
        if let batch = s.batchId {
            c.append(["SADD", RedisArgument(keys.batch(batch)), RedisArgument(id)])
            c.append(["PEXPIRE", RedisArgument(keys.batch(batch)), ttl])
            n += 2
        }
        let wallNow = RedisArgument(String(SystemClock().now()))
        c.append(["ZADD", RedisArgument(keys.tasks), wallNow, RedisArgument(id)])
        n += 1
        if w.firstSeq == 1 {
            // The task's place in the listing: creation time and id never change, so its first write is enough.
            c.append(["ZADD", RedisArgument(keys.tasksByCreation), "0",
                      RedisArgument(ListPosition(createdAt: s.createdAt, id: id).sortKey)])
            n += 1
        }
        if !s.status.isTerminal {
            c.append(["ZADD", RedisArgument(keys.heartbeats), wallNow, RedisArgument(id)])
            n += 1
        } else {
            c.append(["ZREM", RedisArgument(keys.heartbeats), RedisArgument(id)])
            n += 1
        }
        // The update channel: what a listener needs to mirror the task and fan it out.
        var message = JSONWriter(capacity: 256 + eventsWriter.bytes.count + logsWriter.bytes.count + stateJSON.utf8.count)
        message.beginObject()
        message.key("engine"); message.string(engineId)
        message.key("task_id"); message.string(id)
        message.key("first"); message.integer(w.firstSeq)
        message.key("complete"); message.bool(complete)
        message.key("events"); message.raw(eventsWriter.bytes)
        message.key("logs"); message.raw(logsWriter.bytes)
        message.key("state"); message.raw(stateJSON.utf8)
        message.endObject()
        // The state and its publication last, in one script (`RedisWriter.storeState`): never replaces a newer
        // state (a pipeline abandoned on a timeout may still sit in a stopped Redis' socket buffer and run after the
        // retry that superseded it, and a listener may have taken the task over), and publishes only what it stored.
        // The reply of this last command is the writer's verdict on the write.
        c.append(["EVAL", RedisWriter.storeState, "1", RedisArgument(keys.state(id)), RedisArgument(String(s.seq)),
                  RedisArgument(stateJSON), ttl, RedisArgument(keys.channel), RedisArgument(message.bytes),
                  first ? "1" : "0"])
        n += 1
        return n
    }
}
