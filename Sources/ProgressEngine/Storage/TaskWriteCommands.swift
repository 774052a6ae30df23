/// One task write (docs/REDIS.md, "Writing"): a single script run by the writer thread, pipelined with the others.
extension RedisWriter {
    /// Lua functions the state scripts read a stored state's top-level `"seq"` and `"created_at"` with: the first
    /// of each in the document (strings are escaped, so none can hold them; both come before `metadata`). Plain
    /// `string.find`, not a pattern: a pattern is tried at every byte of a 1.5 KB state, which cost a write 20 µs of
    /// Redis' time per field read.
    /// `created` reads a task's identity, its creation time: `stored_times.created` (epoch seconds as the engine
    /// holds them, so two tasks of one id created in the same millisecond are told apart), the document's last
    /// `{"created":` (`stored_times` is its last member; `metadata` before it may hold that text), found by its
    /// `{`, which `memchr` skips to (a search from `"stored_times"`'s quote stops at every key: 10 µs more of
    /// Redis' time per write, measured); the millisecond `created_at` for a state written without it.
    /// `creations` gives two states' comparably.
    /// `loggedBy` reads a task's `logged` key: the count, when that engine appended last, else nil.
    static let stateFields = """
        local function text(doc, name)
          local i = string.find(doc, name, 1, true)
          if i then return string.sub(doc, i + #name, (string.find(doc, '"', i + #name, true) or 0) - 1) end
        end
        local function number(doc, name)
          local i = string.find(doc, name, 1, true)
          if i then return tonumber(string.match(doc, '^%d+', i + #name)) end
        end
        local function created(doc)
          local at, i = nil, 0
          repeat
            i = string.find(doc, '{"created":', i + 1, true)
            if i then at = i end
          until not i
          if at and string.sub(doc, at - 15, at - 1) == '"stored_times":' then
            return tonumber(string.match(doc, '^[^,}]+', at + 11))
          end
        end
        local function creations(a, b)
          local x, y = created(a), created(b)
          if x and y then return x, y end
          return text(a, '"created_at":"'), text(b, '"created_at":"')
        end
        local function loggedBy(engine, key)
          local by, count = string.match(redis.call('GET', key) or '', '^(.*) (%d+)$')
          if by == engine then return tonumber(count) end
        end

        """

    /// The script of a task write. It reads the stored state first (its `"seq"` and creation time, `stateFields`),
    /// and
    /// - if that state is of a task created later under this id (the id used again; this write is a finished task's
    ///   late one), writes nothing and answers -1: not the log entries, the events or the heartbeat's removal either;
    /// - if this is a task's first write (ARGV[7] "1") and the same task is stored at a higher seq, writes nothing
    ///   and answers 0: it is that first write run late (held past the writer's timeout, then sent again and
    ///   followed by newer writes), whose `DEL` would drop what came after it;
    /// - else writes the events, the log entries the log lacks (below) and expiries, then the indexes, the
    ///   heartbeat, the state and its publication, unless the same task is stored at a higher seq, or at the same
    ///   seq with other contents than the ETA's three members (a listener that took the task over as lost wrote
    ///   it): then it answers the stored seq, and the events and log entries (the task's) are all it writes. The
    ///   same seq with only another ETA is this engine's own state again (a write of log entries alone, a write
    ///   sent again after a lost reply: the ETA is computed at each write) and is stored.
    ///
    /// Log entries: ARGV[19] says how many entries the engine had logged before the first one of this write. The
    /// `logged` key holds the engine that last appended and its count then; when that is this engine, the entries
    /// it counted already are skipped (a write sent again after a lost reply, a write run late), so none is
    /// appended twice. Another engine's count (a listener that took the task over) skips nothing.
    ///
    /// A new task's first write `DEL`s what an earlier task of the id left (not when the same task is stored at its
    /// seq: that is the write sent again, and what came after it, a log entry or a cancel request, stays) and stores
    /// its state over any older task's.
    /// The batch's set shares its members' expiry: a write only lengthens it (a finished member's shorter one
    /// must not cut it for a running member).
    /// The first command that can grow memory is the `ZADD` of the task index (of a refused write, the `XADD` or
    /// `RPUSH`), so a Redis out of memory refuses the whole write there (a script may not stop halfway once it has
    /// written). An error of Redis other than an `XADD` whose entry id the stream already has (a write sent again)
    /// ends the script with that error.
    ///
    /// KEYS: state, events, logs, cancel, previews, the task index, the creation index, heartbeats, logged[, the
    /// batch].
    /// ARGV: 1 id, 2 seq, 3 state JSON, 4 expiry (ms: `ttl` for a finished task, else `activeTTL`), 5 channel, 6 the
    /// published message's head (up to its events), 7 first, 8 now (epoch seconds), 9 creation-index member or "",
    /// 10 terminal "1"/"0", 11 has a preview "1"/"0", 12 stream entry id or "" (no events), 13 first seq of the
    /// entry, 14 complete "1"/"0", 15 events JSON (an array), 16 stream length bound, 17 the log's LTRIM start (minus
    /// its capacity), 18 engine id, 19 entries logged before this write's, 20… log entries.
    ///
    /// The message is put together here, so each of the write's kilobytes (a flood's thousand events are 150 KB) is
    /// handed to Lua once: Redis spends about 2.5 µs per KB of a script's arguments.
    static let writeTaskScript = RedisArgument(stateFields + """
        local cur = redis.call('GET', KEYS[1])
        local seq = tonumber(ARGV[2])
        local stored
        if cur then
          local theirs, mine = creations(cur, ARGV[3])
          if theirs and mine and theirs > mine then return -1 end
          if theirs == mine then stored = number(cur, '"seq":') end
        end
        local verdict = 0
        if ARGV[7] == '1' then
          if stored and stored > seq then return 0 end
        elseif stored and cur ~= ARGV[3] then
          local eta = '"eta":[^,]*,"eta_seconds":[^,]*,"eta_confidence":[^,]*'
          if stored > seq or (stored == seq and string.gsub(cur, eta, '') ~= string.gsub(ARGV[3], eta, '')) then
            verdict = stored
          end
        end
        if verdict == 0 then redis.call('ZADD', KEYS[6], ARGV[8], ARGV[1]) end
        if ARGV[7] == '1' and stored ~= seq then redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[9]) end
        if ARGV[12] ~= '' then
          local r = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[16], ARGV[12], 'first', ARGV[13],
                                'complete', ARGV[14], 'events', ARGV[15])
          if type(r) == 'table' and r.err and not string.find(r.err, 'equal or smaller', 1, true) then return r end
          redis.call('PEXPIRE', KEYS[2], ARGV[4])
        end
        local total = tonumber(ARGV[19]) + #ARGV - 19
        local from = 20
        local count = loggedBy(ARGV[18], KEYS[9])
        if count then from = 20 + math.max(0, count - tonumber(ARGV[19])) end
        if from <= #ARGV then
          redis.call('RPUSH', KEYS[3], unpack(ARGV, from))
          redis.call('LTRIM', KEYS[3], ARGV[17], -1)
          redis.call('SET', KEYS[9], ARGV[18] .. ' ' .. total, 'PX', ARGV[4])
        else
          redis.call('PEXPIRE', KEYS[9], ARGV[4])
        end
        redis.call('PEXPIRE', KEYS[3], ARGV[4])
        if ARGV[11] == '1' then redis.call('PEXPIRE', KEYS[5], ARGV[4]) end
        if KEYS[10] then
          redis.call('SADD', KEYS[10], ARGV[1])
          if redis.call('PTTL', KEYS[10]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[10], ARGV[4]) end
        end
        if verdict == 0 then
          if ARGV[9] ~= '' then redis.call('ZADD', KEYS[7], 0, ARGV[9]) end
          if ARGV[10] == '1' then
            redis.call('ZREM', KEYS[8], ARGV[1])
          else
            redis.call('ZADD', KEYS[8], ARGV[8], ARGV[1])
          end
          redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
          redis.call('PUBLISH', ARGV[5], ARGV[6] .. ARGV[15] .. ',"logs":[' .. table.concat(ARGV, ',', from) ..
                     '],"state":' .. ARGV[3] .. '}')
        end
        return verdict
        """)

    /// Appends one task's write: one command, whose reply is the writer's verdict on it (`writeTaskScript`).
    func appendWrite(_ w: TaskWrite, to c: RedisConnection) {
        let s = w.snapshot
        let id = w.id
        let stateJSON = StoredTask.json(s)
        let events = StoredEvents.thin(w.events, limit: RedisWriter.maxEventsPerWrite)
        let thinned = w.events.count - events.count
        if thinned + w.lostEvents > 0 { metrics.droppedEvents.add(thinned + w.lostEvents, ordering: .relaxed) }
        var eventsWriter = JSONWriter(capacity: 128 * max(1, events.count))
        eventsWriter.beginArray()
        for e in events { e.write(to: &eventsWriter, form: .stored) }
        eventsWriter.endArray()
        let complete = thinned == 0 && w.lostEvents == 0
        if w.lostLogs > 0 { metrics.droppedLogs.add(w.lostLogs, ordering: .relaxed) }
        // The update channel's message, what a listener needs to mirror the task and fan it out: `{"engine",
        // "task_id", "first", "complete", "events", "logs", "state"}`; the script appends from "events" on (the log
        // entries it stores, not those the log has already).
        var head = JSONWriter(capacity: 128)
        head.beginObject()
        head.key("engine"); head.string(engineId)
        head.key("task_id"); head.string(id)
        head.key("first"); head.integer(w.firstSeq)
        head.key("complete"); head.bool(complete)
        head.key("events")

        var args: [RedisArgument] = ["EVAL", RedisWriter.writeTaskScript, s.batchId == nil ? "9" : "10",
                                     RedisArgument(keys.state(id)), RedisArgument(keys.events(id)),
                                     RedisArgument(keys.logs(id)), RedisArgument(keys.cancel(id)),
                                     RedisArgument(keys.previews(id)), RedisArgument(keys.tasks),
                                     RedisArgument(keys.tasksByCreation), RedisArgument(keys.heartbeats),
                                     RedisArgument(keys.logged(id))]
        args.reserveCapacity(args.count + 21 + w.logs.count)
        if let batch = s.batchId { args.append(RedisArgument(keys.batch(batch))) }
        // A new task's: what an earlier task of the same id left (history, log, a cancel request) is not its own.
        let first = w.firstSeq == 1 && !w.again
        args.append(RedisArgument(id))
        args.append(RedisArgument(String(s.seq)))
        args.append(RedisArgument(stateJSON))
        args.append(s.status.isTerminal ? ttl : activeTTL)
        args.append(RedisArgument(keys.channel))
        args.append(RedisArgument(head.bytes))
        args.append(first ? "1" : "0")
        args.append(RedisArgument(String(SystemClock().now())))
        // The task's place in the listing: creation time and id never change, so its first write is enough.
        args.append(w.firstSeq == 1 ? RedisArgument(ListPosition(createdAt: s.createdAt, id: id).sortKey) : "")
        args.append(s.status.isTerminal ? "1" : "0")
        // A finished task's log and previews live retention_seconds from its end, like its state: every write
        // renews them, not only one with new entries (previews are written on their own, `enqueuePreview`).
        args.append(s.previewURL != nil ? "1" : "0")
        if let last = events.last {
            args.append(RedisArgument("\(max(last.seq, s.seq))-0"))
            args.append(RedisArgument(String(w.firstSeq)))
            args.append(complete ? "1" : "0")
        } else {
            args.append(contentsOf: ["", "", ""])
        }
        args.append(RedisArgument(eventsWriter.bytes))
        args.append(RedisArgument(String(RedisWriter.streamMaxLength)))
        args.append(RedisArgument(String(-TaskRecord.logCapacity)))
        args.append(RedisArgument(engineId))
        args.append(RedisArgument(String(w.logsTotal - w.logs.count)))
        for entry in w.logs { args.append(RedisArgument(StoredEvents.logJSON(entry))) }
        c.append(args)
    }
}
