/// After a Redis restart: the templates and completion records (the fleet's ETA history) this engine knows, written
/// again where Redis lacks them (docs/REDIS.md, "Redis restarted without what it acknowledged").
extension RedisWriter {
    /// RPUSH to KEYS[1] each of ARGV[2…] (oldest first) that the list does not hold, then LTRIM it to the last
    /// ARGV[1]; answers how many it added. Idempotent, and several engines restoring the same history add each
    /// record once (a record is written by one serializer, so equal records are equal bytes).
    static let pushMissing = RedisArgument("""
        local have = {}
        for _, v in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do have[v] = true end
        local added = 0
        for i = 2, #ARGV do
          if not have[ARGV[i]] then
            redis.call('RPUSH', KEYS[1], ARGV[i])
            have[ARGV[i]] = true
            added = added + 1
          end
        end
        redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
        return added
        """)

    /// Queues the restore with the other writes: `HSETNX` of each template (one another engine registered since
    /// stays), and per template the newest `CompletionHistory.capacity` records through `pushMissing`.
    /// - Returns: how many templates and records were queued.
    func restoreFleetHistory() -> (templates: Int, records: Int) {
        let history = engine.fleetHistory()
        for t in history.templates {
            _ = enqueue(commands: [["HSETNX", RedisArgument(keys.templates), RedisArgument(t.id),
                                    RedisArgument(t.stagesJSON)]])
        }
        var byTemplate: [IdKey: [CompletionRecord]] = [:]
        for record in history.completions { byTemplate[IdKey(record.templateId), default: []].append(record) }
        var records = 0
        for (template, all) in byTemplate {
            var args: [RedisArgument] = ["EVAL", RedisWriter.pushMissing, "1", RedisArgument(keys.eta(template.id)),
                                         RedisArgument(String(CompletionHistory.capacity))]
            for record in all.suffix(CompletionHistory.capacity) {
                var w = JSONWriter()
                record.write(to: &w)
                args.append(RedisArgument(w.bytes))
            }
            records += args.count - 5
            _ = enqueue(commands: [args])
        }
        return (history.templates.count, records)
    }
}
