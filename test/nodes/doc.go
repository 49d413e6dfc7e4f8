// Package nodes is the node harness: the Debian package of this tree,
// installed with dpkg in Debian 12 containers that boot systemd as PID 1
// (systemd-nspawn), each a node with real nginx and PHP-FPM and its own
// network namespace on a bridge, beside a 3-member etcd in namespaces of
// its own, so that a test can cut one node or the etcd leader off the
// network. Its tests carry the build tag "nodes": `make nodes-test` runs
// them as root, with the packages .ci/run installs; `make test` does not.
//
// The root image is built once with debootstrap from Debian's packages and
// kept in $CCM_NODES_CACHE (default /var/cache/ccm-test); each node boots
// an overlay of it, so that nothing a test does reaches the image.
package nodes
