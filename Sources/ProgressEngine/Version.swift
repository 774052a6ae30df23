/// The library's version; must equal PROGRESS_VERSION_* in include/progress.h (an ABI test checks).
enum ProgressVersion {
    static let major: Int32 = 0
    static let minor: Int32 = 1
    static let patch: Int32 = 0
    static let number: Int32 = major * 10000 + minor * 100 + patch
}
