// Package api is ccm's wire: what a caller of node actions writes and
// reads, and nothing else. A request (Request) and its reply (Reply) with
// their states and ids; the signed payload of a request (SignedPayload,
// Sign: RFC 8785 JSON under an OpenSSH SSHSIG, bound to one node of one
// cluster); and the sealed boxes of secret parameters and secret outputs
// (Key, Seal, Reply.Open). docs/REFERENCE.md ("Node actions") is its
// contract.
//
// It imports no template, metrics or configuration package of ccm's, so
// that a cluster API built on package client is built against the wire
// alone (client's TestTheClientIsBuiltOnTheWireAlone keeps it so).
package api
