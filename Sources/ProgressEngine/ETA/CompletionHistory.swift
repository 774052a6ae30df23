/// Completion records per template + quality + resource configuration, the newest `capacity` of each kept,
/// with the statistics of each level of similar-task matching cached until a record changes them.
final class CompletionHistory: Sendable {
    static let capacity = 1000
    /// Distinct template + quality + resource configuration combinations kept; past it, the one whose newest
    /// record is oldest is dropped, so callers inventing configurations cannot grow memory without bound.
    static let maxKeys = 1000
    /// Records a level of matching needs before it is preferred over a less specific one.
    static let minimumRecords = 3

    /// A set of similar records: one level of similar-task matching.
    enum Level: Hashable, Sendable {
        /// Same template, quality and resource configuration.
        case exact(template: IdKey, quality: String?, resource: String?)
        /// Same template and quality, any resources.
        case quality(template: IdKey, quality: String?)
        case template(IdKey)
        /// Any template of the category.
        case category(String)
        /// Same template and resource configuration, any quality: whose queue a task waits in.
        case resource(template: IdKey, resource: String?)

        /// Whether a record, kept under `key`, belongs to this level.
        func matches(_ key: Key, _ record: CompletionRecord) -> Bool {
            switch self {
            case let .exact(template, quality, resource):
                return key == Key(template: template, quality: quality, resource: resource)
            case let .quality(template, quality): return key.template == template && key.quality == quality
            case let .template(template): return key.template == template
            case let .category(category): return record.category == category
            case let .resource(template, resource): return key.template == template && key.resource == resource
            }
        }
    }

    struct Key: Hashable {
        let template: IdKey
        let quality: String?
        /// The resource configuration as canonical JSON (`resourceKey`).
        let resource: String?
    }

    /// A level narrowed for one task: to the runs whose stage ran as the runner says the task's does, and moved
    /// to the task's size (`EngineCore.predictor(for:)`).
    struct Narrowing: Hashable {
        let level: Level
        let variantStage: Int?
        let variant: String?
        let workload: Workload?
    }

    /// A task's history (`narrowed(...)`).
    struct Narrowed: Sendable {
        /// The similar tasks' records, narrowed by variant and moved to the task's size.
        let history: HistoryStatistics
        /// Whether `history` is already narrowed by size.
        let bySize: Bool
        /// When `history` was moved to the task's size by a law (`HistoryStatistics.scaled(to:)`): the runs
        /// nearest that size as they were, for the duration of a stage that has not reported yet.
        let unscaled: HistoryStatistics?
    }

    /// Narrowed sets kept at most; past it, all are dropped (they are recomputed on the next read). Each holds up to
    /// 5√n moved copies of records (158 for a full ring of 1,000), so the bound is on memory as much as on count;
    /// the tasks read at one time are far fewer kinds and sizes than that (bench-eta: same speed as with 4,096).
    static let maxNarrowed = 256

    private struct Store {
        var rings: [Key: Ring<CompletionRecord>] = [:]
        var cache: [Level: HistoryStatistics] = [:]
        /// Narrowed statistics (nil: nothing left after narrowing), dropped with their level's cache entry.
        var narrowed: [Narrowing: Narrowed] = [:]
        /// Records added so far: a narrowing computed outside the lock is kept only if none arrived meanwhile.
        var generation = 0
    }

    private let store = Locked(Store())

    /// The history's lock, for the fork handlers (`EngineCore.forkLocks`).
    var lockForFork: any ForkLock { store }

    /// A resource configuration as text that is equal for equal configurations: object keys sorted at every
    /// depth, so {"gpu": "A100", "count": 2} and {"count": 2, "gpu": "A100"} match.
    /// - Parameter config: a task's or a record's `resource_config`.
    /// - Returns: canonical compact JSON.
    static func resourceKey(_ config: JSONValue) -> String {
        func canonical(_ v: JSONValue) -> JSONValue {
            switch v {
            case let .object(members):
                return .object(members.sorted { $0.0 < $1.0 }.map { ($0.0, canonical($0.1)) })
            case let .array(elements): return .array(elements.map(canonical))
            default: return v
            }
        }
        return canonical(config).serialized()
    }

    /// Keeps a record (from a completed task or a caller) and drops the cached statistics it changes.
    /// - Parameter record: the record.
    func add(_ record: CompletionRecord) {
        let key = Key(template: IdKey(record.templateId), quality: record.quality,
                      resource: record.resourceConfig.map(CompletionHistory.resourceKey))
        store.withLock { s in
            if s.rings[key] == nil && s.rings.count >= CompletionHistory.maxKeys {
                let stalest = s.rings.min { ($0.value.last?.timestamp ?? 0) < ($1.value.last?.timestamp ?? 0) }
                if let stalest { s.rings[stalest.key] = nil }
                s.cache.removeAll()
                s.narrowed.removeAll()
            }
            s.rings[key, default: Ring(capacity: CompletionHistory.capacity)].append(record)
            // A level's cache entry can only change when a record it matches arrives (or one it matched is
            // pushed out of that same ring), so only these are dropped.
            s.cache.removeValue(forKey: .exact(template: key.template, quality: key.quality, resource: key.resource))
            s.cache.removeValue(forKey: .quality(template: key.template, quality: key.quality))
            s.cache.removeValue(forKey: .template(key.template))
            s.cache.removeValue(forKey: .resource(template: key.template, resource: key.resource))
            // A record pushed out may have had another category than the new one.
            s.cache = s.cache.filter { level, _ in if case .category = level { return false } else { return true } }
            let kept = s.cache
            s.narrowed = s.narrowed.filter { kept[$0.key.level] != nil }
            s.generation &+= 1
        }
    }

    /// Every record kept, oldest first.
    func allRecords() -> [CompletionRecord] {
        store.withLock { s in
            var out: [CompletionRecord] = []
            for ring in s.rings.values { ring.forEach { out.append($0) } }
            return out.sorted { $0.timestamp < $1.timestamp }
        }
    }

    /// Records of a template (of one quality, or of all when `quality` is nil), oldest first.
    /// - Parameters:
    ///   - template: the template.
    ///   - quality: one quality, or nil for all.
    /// - Returns: the records, any resource configuration.
    func records(template: String, quality: String?) -> [CompletionRecord] {
        store.withLock { s in
            var out: [CompletionRecord] = []
            for (key, ring) in s.rings where key.template == IdKey(template) && (quality == nil || key.quality == quality) {
                ring.forEach { out.append($0) }
            }
            return out.sorted { $0.timestamp < $1.timestamp }
        }
    }

    /// The statistics of one level, from the cache or computed (and cached) under the lock.
    /// - Parameter level: which records.
    /// - Returns: their statistics (count 0 when there are none).
    func statistics(_ level: Level) -> HistoryStatistics {
        store.withLock { s in
            if let cached = s.cache[level] { return cached }
            var matching: [CompletionRecord] = []
            for (key, ring) in s.rings {
                ring.forEach { record in if level.matches(key, record) { matching.append(record) } }
            }
            matching.sort { $0.timestamp < $1.timestamp }
            let statistics = HistoryStatistics(records: matching)
            s.cache[level] = statistics
            return statistics
        }
    }

    /// The history of one task: its similar tasks' (`similar`), narrowed to the runs whose stage `variant.stage`
    /// ran as `variant.name` says (`HistoryStatistics.variant`), then moved to the task's size when it has one
    /// (`HistoryStatistics.scaled(to:)`, else the runs nearest its size, `similar(workload:)`); each narrowing only
    /// where enough records are left. Cached per level, variant and size until a record changes the level: a
    /// dashboard reads many tasks of a few kinds, and a queued task's forecast reads every task ahead of it.
    /// - Returns: nil without any record.
    func narrowed(template: String, quality: String?, resource: String?, category: String?,
                  variant: (stage: Int, name: String)?, workload: Workload?) -> Narrowed? {
        guard let (level, history) = similarLevel(template: template, quality: quality, resource: resource,
                                                  category: category) else { return nil }
        if variant == nil && workload == nil { return Narrowed(history: history, bySize: false, unscaled: nil) }
        let key = Narrowing(level: level, variantStage: variant?.stage, variant: variant?.name, workload: workload)
        let (cached, generation) = store.withLock { s in (s.narrowed[key], s.generation) }
        if let cached { return cached }
        var narrowed = history
        if let variant, let matching = history.variant(stage: variant.stage, variant.name) { narrowed = matching }
        let nearest = workload.flatMap { narrowed.similar(workload: $0) }
        let scaled = workload.flatMap { narrowed.scaled(to: $0) }
        let result = Narrowed(history: scaled ?? nearest ?? narrowed, bySize: scaled != nil || nearest != nil,
                              unscaled: scaled == nil ? nil : nearest)
        store.withLock { s in
            guard s.generation == generation, s.cache[level] != nil else { return }
            if s.narrowed.count >= CompletionHistory.maxNarrowed { s.narrowed.removeAll() }
            s.narrowed[key] = result
        }
        return result
    }

    /// Similar-task matching: the most specific level with `minimumRecords` records (same template, quality and
    /// resources; then same template and quality; then template; then category), else the most specific one
    /// with any, else nil.
    /// - Parameters:
    ///   - template: the task's template.
    ///   - quality: its quality.
    ///   - resource: its resource configuration as `resourceKey`.
    ///   - category: its template category.
    /// - Returns: the chosen level's statistics.
    func similar(template: String, quality: String?, resource: String?, category: String?) -> HistoryStatistics? {
        similarLevel(template: template, quality: quality, resource: resource, category: category)?.1
    }

    private func similarLevel(template: String, quality: String?, resource: String?, category: String?)
        -> (Level, HistoryStatistics)? {
        let template = IdKey(template)
        var levels: [Level] = [.exact(template: template, quality: quality, resource: resource),
                               .quality(template: template, quality: quality), .template(template)]
        if let category { levels.append(.category(category)) }
        var fallback: (Level, HistoryStatistics)?
        for level in levels {
            let statistics = self.statistics(level)
            if statistics.count >= CompletionHistory.minimumRecords { return (level, statistics) }
            if fallback == nil && statistics.count > 0 { fallback = (level, statistics) }
        }
        return fallback
    }
}
