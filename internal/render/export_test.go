package render

// SetMaxRenderHeap sets the heap budget of a render for a test, and
// returns the old one.
func SetMaxRenderHeap(n int64) int64 {
	old := maxRenderHeap
	maxRenderHeap = n
	return old
}
