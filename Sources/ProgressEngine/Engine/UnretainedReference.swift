extension UnsafeBufferPointer {
    /// The class reference in slot `i` as a plain pointer, with no retain: reading the element would retain it,
    /// and that write to the object's header is what the hot paths avoid (a borrow under a lock, a cache hint).
    /// `Element` is a class type or an Optional of one (a single pointer, nil as 0); the caller keeps the object
    /// alive for as long as it uses the pointer.
    @inline(__always)
    func unretainedReference(at i: Int) -> UnsafeRawPointer? {
        assert(MemoryLayout<Element>.size == MemoryLayout<UnsafeRawPointer>.size, "not a class reference")
        return UnsafeRawPointer(baseAddress! + i).load(as: UnsafeRawPointer?.self)
    }
}
