// Package drift repairs hand edits of managed files within seconds: it
// watches, with inotify, the parent directory of every path the node's
// converged renders own (applier.Managed), and hands each debounced batch
// of changed paths to a Repairer, which compares them with the last
// converged render and restores what differs.
//
// It calls inotify through golang.org/x/sys/unix, not fsnotify: the agent
// already depends on x/sys; the watcher must see IN_Q_OVERFLOW and the
// ENOSPC of inotify_add_watch as what they are (fsnotify folds them into
// ErrEventOverflow and a generic error), and it needs IN_ONLYDIR,
// IN_DONT_FOLLOW and IN_EXCL_UNLINK, and the watch descriptors, to keep
// exactly one watch per directory.
//
// Guarantees:
//   - One watch per directory that holds a managed path, never per file:
//     watches used <= managed directories. A directory no longer needed
//     loses its watch (no leak across deploys); a directory deleted or
//     moved is watched again by path once it is back. A watch follows its
//     inode when a parent is moved: each watch records the directory's
//     device and inode, checked for the watches under a directory event
//     and for every watch each ScanEvery, and a stale one is dropped,
//     its paths checked, and the path watched again.
//   - ccm's own writes are not drift: every batch is checked against the
//     converged render (digest, mode, owner), so a path that matches what
//     ccm wrote is left alone, and a repair's own events find nothing.
//   - A path outside the managed set is never handed on, even when its
//     directory is watched: foreign files are not touched.
//   - A path repaired Storm times within Window is repaired with backoff
//     (doubling, up to MaxBackoff) and reported, not fought at full speed.
//   - On IN_Q_OVERFLOW every managed path is checked once, at most once
//     per FullEvery (a flood that overflows again and again is one full
//     check per interval, the overflows after it owed to the next).
//   - Where a watch cannot be had (the MaxWatches limit, or ENOSPC from
//     fs.inotify.max_user_watches), the directories without one are
//     scanned every ScanEvery instead, and that is logged once. Without
//     an inotify instance at all (fs.inotify.max_user_instances), every
//     directory is.
//
// Shutdown: Run returns when its context is cancelled, after the batch
// under way, with its reader goroutine stopped and the inotify descriptor
// closed.
package drift
