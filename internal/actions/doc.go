// Package actions carries real-time requests to nodes over etcd: the
// request and reply records, the handler files that declare what a node
// answers, and the engine inside the agent that claims each request at
// most once, runs its handler and reports the outcome.
//
// A caller writes <prefix>/actions/<node>/<id>; the node claims it by
// creating <prefix>/nodes/<node>/replies/<id> in a transaction, so that no
// request ever runs twice, even across a crash: a request whose reply
// exists is never run again, and a reply still "running" when the agent
// starts is rewritten as "interrupted".
package actions
