/// After a Redis restart: the templates and completion records (the fleet's ETA history) this engine knows,
/// written again where Redis lacks them (docs/REDIS.md, "Redis restarted without what it acknowledged").
extension RedisWriter {
    /// Merges ARGV[2…] (records, oldest first) into the list KEYS[1]: the records it does not hold are added, the
    /// whole then ordered by timestamp, the newest ARGV[1] kept. A record is known by its `task_id` and `timestamp`
    /// (another engine, or another version, may have written the same run in other bytes), by its bytes when it
    /// has no `task_id`. Answers how many it added; 0 leaves the list untouched. The added records are pushed
    /// first, so a Redis out of memory refuses the merge before it has written anything.
    static let mergeRecords = RedisArgument("""
        local function read(doc)
          local ok, r = pcall(cjson.decode, doc)
          if ok and type(r) == 'table' then
            local at = type(r.timestamp) == 'number' and r.timestamp or 0
            if type(r.task_id) == 'string' then return r.task_id .. '\\0' .. string.format('%.17g', at), at end
            return doc, at
          end
          return doc, 0
        end
        local list = redis.call('LRANGE', KEYS[1], 0, -1)
        local keyed, have = {}, {}
        for i, v in ipairs(list) do
          local id, at = read(v)
          have[id] = true
          keyed[i] = {at, i, v}
        end
        local missing = {}
        for i = 2, #ARGV do
          local id, at = read(ARGV[i])
          if not have[id] then
            have[id] = true
            missing[#missing + 1] = ARGV[i]
            keyed[#keyed + 1] = {at, #keyed + 1, ARGV[i]}
          end
        end
        if #missing == 0 then return 0 end
        redis.call('RPUSH', KEYS[1], unpack(missing))
        table.sort(keyed, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
        redis.call('DEL', KEYS[1])
        local batch = {}
        for i = math.max(1, #keyed - tonumber(ARGV[1]) + 1), #keyed do
          batch[#batch + 1] = keyed[i][3]
          if #batch == 500 then
            redis.call('RPUSH', KEYS[1], unpack(batch))
            batch = {}
          end
        end
        if #batch > 0 then redis.call('RPUSH', KEYS[1], unpack(batch)) end
        return #missing
        """)

    /// Queues the restore with the other writes: `HSETNX` of each template (one another engine registered since
    /// stays), and per template the newest `CompletionHistory.capacity` of its records (`WriterSource.fleetHistory`),
    /// through `mergeRecords`.
    /// - Returns: how many templates and records were queued, and how many the full queue refused.
    func restoreFleetHistory() -> (templates: Int, records: Int, refused: Int) {
        let history = engine.fleetHistory()
        var templates = 0, records = 0, refused = 0
        for t in history.templates {
            if enqueue(commands: [["HSETNX", RedisArgument(keys.templates), RedisArgument(t.id),
                                   RedisArgument(t.stagesJSON)]]) {
                templates += 1
            } else {
                refused += 1
            }
        }
        var byTemplate: [IdKey: [CompletionRecord]] = [:]
        for record in history.completions { byTemplate[IdKey(record.templateId), default: []].append(record) }
        for (template, all) in byTemplate {
            var args: [RedisArgument] = ["EVAL", RedisWriter.mergeRecords, "1", RedisArgument(keys.eta(template.id)),
                                         RedisArgument(String(CompletionHistory.capacity))]
            for record in all.suffix(CompletionHistory.capacity) {
                var w = JSONWriter()
                record.write(to: &w)
                args.append(RedisArgument(w.bytes))
            }
            if enqueue(commands: [args]) {
                records += args.count - 5
            } else {
                refused += 1
            }
        }
        return (templates, records, refused)
    }
}
