/// After a Redis restart: the templates this engine knows and the completion records it made (the fleet's ETA
/// history), written again where Redis lacks them (docs/REDIS.md, "Redis restarted without what it acknowledged").
extension RedisWriter {
    /// Merges ARGV[2…] (records, oldest first) into the list KEYS[1]: those it does not hold are added, the whole
    /// ordered by each record's `"timestamp"` (its last one in the record: a resource configuration written before
    /// it may hold the word too), the newest ARGV[1] kept. Answers how many it added; 0 leaves the list untouched.
    /// Only the engine that made a record writes it back, and one serializer wrote it both times, so a record the
    /// list holds is the same bytes.
    static let mergeRecords = RedisArgument("""
        local list = redis.call('LRANGE', KEYS[1], 0, -1)
        local have = {}
        for _, v in ipairs(list) do have[v] = true end
        local added = 0
        for i = 2, #ARGV do
          if not have[ARGV[i]] then
            have[ARGV[i]] = true
            list[#list + 1] = ARGV[i]
            added = added + 1
          end
        end
        if added == 0 then return 0 end
        local function timestamp(doc)
          local at, i = nil, 0
          repeat
            i = string.find(doc, '"timestamp":', i + 1, true)
            if i then at = i end
          until not i
          return at and tonumber(string.match(doc, '^%s*([-%d.eE+]+)', at + 12)) or 0
        end
        local keyed = {}
        for i, v in ipairs(list) do keyed[i] = {timestamp(v), i, v} end
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
        return added
        """)

    /// Queues the restore with the other writes: `HSETNX` of each template (one another engine registered since
    /// stays), and per template the newest `CompletionHistory.capacity` records this engine made, through
    /// `mergeRecords`.
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
