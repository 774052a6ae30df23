/// When a task takes a preview (`progress_preview_due`, the engine's own captures): the one rule of milestones and
/// step multiples, apart from the task's other changes. Its bookkeeping (`capturedMilestones`, `lastPreviewStep`)
/// is stored in `TaskRecord` and touched only here, under the task's shard lock like every other field.
extension TaskRecord {
    /// A preview the task would take now.
    enum DuePreview {
        /// With `everySteps`: the step whose multiple of N was crossed.
        case step(Int64)
        /// The milestones crossed so far (a count of `milestones`), the last of them newly.
        case milestones(Int)
    }

    /// The one rule of when a preview is taken: when overall progress first crosses a milestone (or, with
    /// `everySteps`, once the step has crossed the next multiple of N since the last preview), once each; never
    /// for a finished task. Reads only: `previewDue` takes what this returns, `progress_preview_due` asks it.
    func duePreview(milestones: [Double], everySteps: Int) -> DuePreview? {
        guard !status.isTerminal else { return nil }
        if everySteps > 0 {
            // A runner offering frames every few steps need not land on the multiple itself.
            let n = Int64(everySteps)
            guard lastStep > 0, lastStep / n > max(lastPreviewStep, 0) / n else { return nil }
            return .step(lastStep)
        }
        var crossed = capturedMilestones
        while crossed < milestones.count && overallProgress >= milestones[crossed] { crossed += 1 }
        return crossed > capturedMilestones ? .milestones(crossed) : nil
    }

    /// The name of a preview file due now (`duePreview`), or nil. Marks it taken.
    func previewDue(milestones: [Double], everySteps: Int, fileStem: String) -> String? {
        guard let due = duePreview(milestones: milestones, everySteps: everySteps) else { return nil }
        let label: String
        switch due {
        case let .step(step):
            lastPreviewStep = step
            label = "s\(step)"
        case let .milestones(crossed):
            capturedMilestones = crossed
            let m = milestones[crossed - 1]
            label = m.rounded() == m ? String(Int(m)) : String(m)
        }
        // Video tasks preview their current frame: its index goes into the name.
        let frame = category == "video_generation" ? "_f\(lastStep)" : ""
        return "\(fileStem)_\(label)\(frame).png"
    }
}
