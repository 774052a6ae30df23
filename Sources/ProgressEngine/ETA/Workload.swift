import Glibc

/// The size of a job as its runner knows it at creation (`metadata.workload`: requested steps, megapixels, frames,
/// seconds of audio, tiles...): positive numbers by name. Before a stage reports progress the engine cannot see how
/// big the job is, and the time of every stage of a generation job follows its size far more than its template or
/// quality; with the size given, history is read from the runs of the nearest sizes (`HistoryStatistics.similar
/// (workload:)`) from the moment the task is created.
///
/// The names and their meaning are the host's own: the engine only compares runs that give the same names, by
/// the ratio of each value (log distance), so units do not matter as long as a template keeps to one.
struct Workload: Sendable, Hashable {
    /// (name, value > 0), sorted by name.
    let values: [(String, Double)]

    /// The names given, sorted.
    var names: [String] { values.map(\.0) }

    static func == (lhs: Workload, rhs: Workload) -> Bool {
        lhs.values.elementsEqual(rhs.values) { $0.0 == $1.0 && $0.1 == $1.1 }
    }

    func hash(into hasher: inout Hasher) {
        for (name, value) in values {
            hasher.combine(name)
            hasher.combine(value)
        }
    }

    /// The number of names kept at most: a size is a handful of figures, and the distance costs one log per name.
    static let maxValues = 8

    private init(sorted values: [(String, Double)]) {
        self.values = values
    }

    /// The workload of a task's metadata, if it has one: its "workload" member, an object. The metadata is the
    /// host's own, so members that are not positive finite numbers are skipped rather than refused, and a task
    /// whose metadata says nothing usable has no workload.
    /// - Parameter metadata: the task's `metadata`.
    /// - Returns: nil without a usable "workload" object.
    init?(metadata: JSONValue?) {
        guard case let .object(members)? = metadata,
              case let .object(entries)? = members.last(where: { $0.0 == "workload" })?.1 else { return nil }
        var values: [(String, Double)] = []
        for (name, value) in entries {
            if case let .number(n) = value, n.isFinite, n > 0, !values.contains(where: { $0.0 == name }) {
                values.append((name, n))
            }
        }
        guard !values.isEmpty else { return nil }
        self.init(sorted: Array(values.sorted { $0.0 < $1.0 }.prefix(Workload.maxValues)))
    }

    /// Parses the "workload" member of a completion record: an object of positive numbers. A record comes from a
    /// caller who controls its shape (`progress_eta_record_completion`), so a bad value is an error there.
    /// - Throws: `EngineError.json` for a value that is not a number, `.range` for one that is not > 0.
    static func parse(_ value: JSONValue, context: String) throws -> Workload? {
        guard case let .object(entries) = value else { throw EngineError.json("\(context) must be an object") }
        var values: [(String, Double)] = []
        for (name, entry) in entries {
            guard case let .number(n) = entry else { throw EngineError.json("\(context)[\"\(name)\"] must be a number") }
            guard n.isFinite, n > 0 else { throw EngineError.range("\(context)[\"\(name)\"] must be > 0, got \(n)") }
            if !values.contains(where: { $0.0 == name }) { values.append((name, n)) }
        }
        guard !values.isEmpty else { return nil }
        return Workload(sorted: Array(values.sorted { $0.0 < $1.0 }.prefix(Workload.maxValues)))
    }

    /// How far another run's size is from this one: the sum over the names of |log ratio|; nil when the two do not
    /// give the same names (sizes measured differently are not comparable).
    func distance(to other: Workload) -> Double? {
        guard other.values.count == values.count else { return nil }
        var sum = 0.0
        for (a, b) in zip(values, other.values) {
            guard a.0 == b.0 else { return nil }
            sum += abs(log(a.1) - log(b.1))
        }
        return sum
    }

    /// Writes the workload as an object, in the shape `parse` reads.
    func write(to w: inout JSONWriter) {
        w.beginObject()
        for (name, value) in values {
            w.key(name); w.number(value)
        }
        w.endObject()
    }
}
