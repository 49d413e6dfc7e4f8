// Package applier converges the files of configurations on this node: it
// plans (render and compare with disk) and applies (write, prune, validate,
// roll back, run on_change).
//
// Guarantees, per configuration:
//   - Nothing is written unless the configuration rendered completely and
//     every check command accepted its staged file.
//   - A file is replaced by rename of a temp file in the same directory
//     that was created with the final mode and owner and fsynced; the
//     directory is fsynced after the rename. Readers see the old or the new
//     file, never a torn one.
//   - A file whose bytes, mode and owner already match is not touched.
//   - Only files listed in the configuration's manifest (in the state
//     directory) are ever removed: ccm never deletes a file it did not write.
//   - If validate fails, every file the run changed or removed is restored
//     byte for byte with its old mode and owner, and the manifest is kept.
//   - A run is one transaction: when one of its configurations fails, the
//     configurations it changed before are rolled back too, and their
//     on_change runs again. A run a crash interrupted is rolled back.
//   - on_change runs once per run, only after a change; a failure is
//     remembered in the state directory and retried next run.
//
// Commands are argv lists run without a shell, in their own process group,
// killed with the group at their timeout. They inherit the environment
// without CCM_PASSWORD.
package applier
