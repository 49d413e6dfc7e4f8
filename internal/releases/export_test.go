package releases

// Digest is the release id of files, for tests that write manifests by
// hand.
var Digest = digest
