/// A task's predicted completion: `seconds` after its latest event (`updated_at`), with a confidence in 0...1.
struct ETAEstimate: Sendable, Equatable {
    /// Seconds from the task's latest event to its predicted completion; 0 once completed.
    var seconds: Double
    /// 0...1: higher means a smaller expected error (see `ETAPredictor`).
    var confidence: Double
    /// The predictor's standard deviation of `seconds`; internal (queue forecasts add it up), not published.
    var deviation: Double
}
