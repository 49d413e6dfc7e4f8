// Package render turns a configuration and a snapshot of objects into the
// exact files and directories it must produce, and shows how they differ
// from what is on disk.
//
// Rendering is deterministic: objects are iterated sorted by ID, and the same
// snapshot, node and configuration always give the same bytes. Render reads
// the filesystem only to confine paths; it never writes.
//
// Confinement: every rendered path must be absolute and clean (no "..", "."
// or "//", which is how object data injected into a path shows), free of
// control characters, within name-length limits, not itself a symlink, and
// its parent directory must resolve inside the root.
package render
