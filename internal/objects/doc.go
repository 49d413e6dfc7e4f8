// Package objects is the desired state that configurations render: the
// objects stored under <prefix>/objects/<type>/<id> in etcd.
//
// A Snapshot is every object at one etcd revision, grouped by type and sorted
// by ID, so that rendering is deterministic. It is read from etcd in one Get
// (Load) or from a JSON file for offline plans (ReadFile).
//
// Guarantees:
//   - A key outside the <type>/<id> grammar is reported in Snapshot.Ignored
//     and never rendered.
//   - A value that is not a UTF-8 JSON object is reported in
//     Snapshot.Invalid under its type, naming the key; the configurations
//     that use that type refuse to render rather than render without it.
package objects
