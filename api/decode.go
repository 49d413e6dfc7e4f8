package api

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The decoders below read ccm's records as etcd returns them, with the
// rules every agent, ccm status, the dashboard and a cluster API share: a
// record's node (and object) is its key's, never what its value claims.

// DecodeFailures reads the failure records from a range of FailuresRange,
// oldest first; keys that are not records are ignored. A value that is
// not a record (a flag set by hand) still counts, its text as the error.
func DecodeFailures(k Keys, kvs []*mvccpb.KeyValue) []Failure {
	var out []Failure
	for _, kv := range slices.SortedFunc(slices.Values(kvs), func(a, b *mvccpb.KeyValue) int {
		return cmp.Compare(a.CreateRevision, b.CreateRevision)
	}) {
		node, ok := k.FailureOf(string(kv.Key))
		if !ok {
			continue
		}
		var f Failure
		if err := json.Unmarshal(kv.Value, &f); err != nil {
			f = Failure{Error: string(kv.Value)}
		}
		if node == "" {
			f.Legacy = true
		} else {
			f.Node = node
		}
		out = append(out, f)
	}
	return out
}

// DecodePause reads the pause from the range of PausedKey: nil when it
// does not exist; a value that is not a pause (set by hand) is still a
// pause, its text as the reason.
func DecodePause(kvs []*mvccpb.KeyValue) *Pause {
	if len(kvs) == 0 {
		return nil
	}
	p := &Pause{}
	if err := json.Unmarshal(kvs[0].Value, p); err != nil {
		p.Reason = string(kvs[0].Value)
	}
	return p
}

// DecodeRollout reads the strategy from the range of RolloutKey; a
// missing or unreadable value is the serial rollout.
func DecodeRollout(kvs []*mvccpb.KeyValue) Rollout {
	r := Serial
	if len(kvs) > 0 && json.Unmarshal(kvs[0].Value, &r) != nil {
		r = Serial
	}
	return r
}

// DecodeCanaries reads the canary records from a range of CanaryPrefix: a
// record counts only under its node's own key, and only for a change
// older than the record itself (a node cannot approve a change before it
// exists, so a forged record can at most approve what its node could
// have converged).
func DecodeCanaries(k Keys, kvs []*mvccpb.KeyValue) []Canary {
	var out []Canary
	for _, kv := range kvs {
		node, ok := k.CanaryOf(string(kv.Key))
		var c Canary
		if !ok || json.Unmarshal(kv.Value, &c) != nil || c.Revision <= 0 || c.Revision >= kv.ModRevision {
			continue
		}
		c.Node = node
		out = append(out, c)
	}
	return out
}

// DecodeQuarantines reads quarantine records, by object then node. The
// node and the object are the key's, whatever the value claims, so a node
// can never quarantine in another node's name; a value that is not a
// record, or that names a revision from after its own write, holds
// nothing back (its revision is 0).
func DecodeQuarantines(k Keys, kvs []*mvccpb.KeyValue) []Quarantine {
	var out []Quarantine
	for _, kv := range kvs {
		node, typ, id, ok := k.QuarantineOf(string(kv.Key))
		if !ok {
			continue
		}
		var q Quarantine
		if err := json.Unmarshal(kv.Value, &q); err != nil {
			q = Quarantine{Error: fmt.Sprintf("unreadable record: %v", err)}
		}
		q.Node, q.Type, q.ID = node, typ, id
		if q.Revision >= kv.ModRevision {
			q.Revision = 0
		}
		out = append(out, q)
	}
	slices.SortFunc(out, func(a, b Quarantine) int {
		if c := strings.Compare(a.Object(), b.Object()); c != 0 {
			return c
		}
		return strings.Compare(a.Node, b.Node)
	})
	return out
}

// DecodeLabels reads the operators' labels (LabelsKey), by node; a value
// that is not a JSON object of strings is no labels.
func DecodeLabels(k Keys, kvs []*mvccpb.KeyValue) map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, kv := range kvs {
		node, ok := k.ownSegment(k.LabelsPrefix(), string(kv.Key))
		labels := map[string]string{}
		if ok && json.Unmarshal(kv.Value, &labels) == nil {
			out[node] = labels
		}
	}
	return out
}

// DecodeStatus reads node's StatusKey (nil kv: it never ran); an
// unreadable value is a status whose result is "unreadable".
func DecodeStatus(node string, kv *mvccpb.KeyValue) *Status {
	if kv == nil {
		return nil
	}
	s := &Status{}
	if json.Unmarshal(kv.Value, s) != nil {
		s = &Status{Node: node, Result: "unreadable"}
	}
	return s
}

// DecodePresence reads node's AliveKey: nil when there is none, or when
// it is on no lease, since only an agent's presence is on its session's
// lease. The node is the key's and the lease etcd's, whatever the value
// claims.
func DecodePresence(node string, kv *mvccpb.KeyValue) *Presence {
	if kv == nil || kv.Lease == 0 {
		return nil
	}
	p := &Presence{}
	if json.Unmarshal(kv.Value, p) != nil {
		p = &Presence{}
	}
	p.Node, p.Lease = node, fmt.Sprintf("%x", kv.Lease)
	return p
}

// DecodeProblem reads node's ProblemKey (nil kv: none).
func DecodeProblem(kv *mvccpb.KeyValue) *Problem {
	if kv == nil {
		return nil
	}
	p := &Problem{}
	if json.Unmarshal(kv.Value, p) != nil {
		p = &Problem{Error: "unreadable problem record"}
	}
	return p
}
