package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ccm-dev/ccm/api"
)

// DefaultLockTTL is the lease TTL of the lock session.
const DefaultLockTTL = 30 * time.Second

// ErrLockLost is returned when a write under the lock finds that this node
// no longer holds it.
var ErrLockLost = errors.New("cluster lock lost")

// sameInstance reports whether other was announced by the agent that
// announces p: the one that holds the same state directory.
func sameInstance(p, other api.Presence) bool {
	return p.Instance != "" && p.Instance == other.Instance
}

// Options configures a Cluster.
type Options struct {
	Prefix string // DefaultPrefix when empty
	Node   string
}

// Cluster reads and writes one cluster's shared state.
type Cluster struct {
	api.Keys
	client *clientv3.Client
	node   string
}

// New returns a Cluster for a node.
func New(client *clientv3.Client, opts Options) *Cluster {
	return &Cluster{Keys: api.NewKeys(opts.Prefix), client: client, node: opts.Node}
}

// Client returns the etcd client.
func (c *Cluster) Client() *clientv3.Client { return c.client }

// Failure returns the oldest failure record, or nil when the flag is
// clear.
func (c *Cluster) Failure(ctx context.Context) (*api.Failure, error) {
	f, _, err := c.Failures(ctx)
	if len(f) == 0 {
		return nil, err
	}
	return &f[0], err
}

// Failures returns every failure record, oldest first (none: the flag is
// clear), with the cluster revision they were read at.
func (c *Cluster) Failures(ctx context.Context) ([]api.Failure, int64, error) {
	resp, err := c.client.Get(ctx, c.FailuresRange(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", c.FailuresRange(), err)
	}
	return api.DecodeFailures(c.Keys, resp.Kvs), resp.Header.Revision, nil
}

// Resume clears the failure flag, and only the flag: every node's record,
// and the legacy flag, in one transaction. A pause is someone's
// maintenance window and has its own command (Unpause). It returns the
// records it cleared (none: the flag was clear).
func (c *Cluster) Resume(ctx context.Context) ([]api.Failure, error) {
	records := c.FailuresRange() + "/"
	resp, err := c.client.Txn(ctx).Then(
		clientv3.OpGet(c.LegacyFailureKey()), clientv3.OpGet(records, clientv3.WithPrefix()),
		clientv3.OpDelete(c.LegacyFailureKey()), clientv3.OpDelete(records, clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", c.FailuresRange(), err)
	}
	kvs := append(resp.Responses[0].GetResponseRange().Kvs, resp.Responses[1].GetResponseRange().Kvs...)
	return api.DecodeFailures(c.Keys, kvs), nil
}

// Unpause lifts the pause and returns it (nil: the rollout was not
// paused).
func (c *Cluster) Unpause(ctx context.Context) (*api.Pause, error) {
	resp, err := c.client.Txn(ctx).Then(clientv3.OpGet(c.PausedKey()), clientv3.OpDelete(c.PausedKey())).Commit()
	if err != nil {
		return nil, fmt.Errorf("delete %s: %w", c.PausedKey(), err)
	}
	return api.DecodePause(resp.Responses[0].GetResponseRange().Kvs), nil
}

// Node states, as ccm status shows them.
const (
	StateIdle    = "idle"
	StateWaiting = "waiting" // for the lock
	StateRunning = "running" // holds the lock
	StateHalted  = "halted"  // its last run was stopped by the flag
	StatePaused  = "paused"  // the rollout is paused
	StateFailed  = "failed"  // its last run failed
	StateDown    = "down"    // no agent alive
	// StateUnknown is every node's state in a stale view (View.AsStale):
	// etcd could not be read since View.ReadAt.
	StateUnknown = "unknown"
)

// NodeView is what ccm status shows of one node.
type NodeView struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// Converged is the last revision the node converged.
	Converged int64 `json:"converged_revision"`
	// Behind is set while a change that concerns the node is not
	// converged there yet.
	Behind   bool          `json:"behind"`
	Status   *api.Status   `json:"status,omitempty"`
	Presence *api.Presence `json:"presence,omitempty"`
	// Problem is what the node's agent last reported it could not do.
	Problem *api.Problem `json:"problem,omitempty"`
	// Release is the configuration release the node runs ("" for its
	// --config-dir): its agent's, or its last run's when it is down.
	Release string `json:"release,omitempty"`
	// ReloadError is why the agent's last load of a configuration failed.
	ReloadError string `json:"reload_error,omitempty"`
	// ReleaseStoredError is why the copy in etcd of the release the
	// node runs is broken; it runs its verified staged copy.
	ReleaseStoredError string `json:"release_stored_error,omitempty"`
	// Drift is what the node's drift watcher last found, in one line
	// (api.Drift.Summary).
	Drift string `json:"drift,omitempty"`
	// Labels are the labels operators gave the node (ccm node label):
	// those a call by label matches, not those its agent claims.
	Labels map[string]string `json:"labels,omitempty"`
}

// View is the whole cluster as ccm status shows it.
type View struct {
	// Failure is the oldest failure record, Failures all of them: the
	// flag is up while there is one.
	Failure  *api.Failure  `json:"failure,omitempty"`
	Failures []api.Failure `json:"failures,omitempty"`
	Pause    *api.Pause    `json:"pause,omitempty"`
	Rollout  api.Rollout   `json:"rollout"`
	// Canary is the newest change a canary converged (with a canary
	// strategy, the changes up to it run in batches).
	Canary *api.Canary `json:"canary,omitempty"`
	// Holder is the node holding the lock ("" when free); Holders every
	// node holding a slot, when the rollout runs in batches.
	Holder  string   `json:"holder,omitempty"`
	Holders []string `json:"holders,omitempty"`
	// Release is the promoted release (nil: agents read --config-dir).
	Release *api.ReleasePointer `json:"release,omitempty"`
	// Waiting lists the nodes queued for the lock, in order.
	Waiting []string `json:"waiting,omitempty"`
	// Queue is every key of the lock queue that counts, in order.
	Queue []Queued   `json:"queue,omitempty"`
	Nodes []NodeView `json:"nodes"` // sorted by name
	// Summary counts the nodes, as the first line of ccm status and the
	// dashboard show them.
	Summary Summary `json:"summary"`
	// SharedActionKeys lists the groups of alive nodes that publish the
	// same action key: nodes cloned from one image, each able to open the
	// secrets sealed to the others.
	SharedActionKeys [][]string `json:"shared_action_keys,omitempty"`
	// Quarantines is every quarantine record, by object then node.
	Quarantines []api.Quarantine `json:"quarantines,omitempty"`
	// Revision is the etcd revision the view was read at.
	Revision int64 `json:"revision"`
	// ReadAt is when the view was read from etcd.
	ReadAt time.Time `json:"read_at"`
	// Stale is set on a view shown after etcd could no longer be read
	// (AsStale): nothing in it is known to hold now.
	Stale bool `json:"stale,omitempty"`
	// Partial says what the view leaves out, and why, when the etcd
	// identity that read it may not read every node: a node's own role
	// reads its own records, the cluster's flag, pause, lock and release.
	Partial string `json:"partial,omitempty"`
}

// statusNeeds is the role ccm status and the dashboard need.
const statusNeeds = "read on the cluster's prefix (a viewer's role: ccm rbac print --viewer NAME), or a node's role with that node's --node"

// View reads the failure flag, the lock queue and every node, at one
// revision.
func (c *Cluster) View(ctx context.Context) (*View, error) {
	resp, err := c.client.Txn(ctx).Then(
		clientv3.OpGet(c.FailuresRange(), clientv3.WithPrefix()),
		clientv3.OpGet(c.LockPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(c.PausedKey()),
		clientv3.OpGet(c.RolloutKey()),
		clientv3.OpGet(c.ObjectsPrefix(), append(clientv3.WithLastRev(), clientv3.WithPrefix(), clientv3.WithKeysOnly())...),
		clientv3.OpGet(c.CanaryPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(c.QuarantinePrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(c.ReleasePointerKey()),
	).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.Prefix(), deniedHint(err, statusNeeds))
	}
	release := ""
	var newest int64
	if kvs := resp.Responses[4].GetResponseRange().Kvs; len(kvs) > 0 {
		newest = kvs[0].ModRevision
	}
	v := &View{
		Failures: api.DecodeFailures(c.Keys, resp.Responses[0].GetResponseRange().Kvs),
		Pause:    api.DecodePause(resp.Responses[2].GetResponseRange().Kvs),
		Rollout:  api.DecodeRollout(resp.Responses[3].GetResponseRange().Kvs),
		Revision: resp.Header.Revision,
		ReadAt:   time.Now().UTC(),

		Quarantines: api.DecodeQuarantines(c.Keys, resp.Responses[6].GetResponseRange().Kvs),
	}
	if kvs := resp.Responses[7].GetResponseRange().Kvs; len(kvs) > 0 {
		p, err := api.DecodeReleasePointer(c.ReleasePointerKey(), kvs[0].Value)
		if err != nil {
			p = &api.ReleasePointer{ID: "unreadable"}
		}
		v.Release, release = p, p.ID
	}
	if len(v.Failures) > 0 {
		v.Failure = &v.Failures[0]
	}
	if canary := newestCanary(api.DecodeCanaries(c.Keys, resp.Responses[5].GetResponseRange().Kvs)); canary.Revision > 0 {
		v.Canary = &canary
	}
	nodes, err := c.scanNodes(ctx, resp.Header.Revision)
	if errors.Is(err, rpctypes.ErrPermissionDenied) && c.node != "" {
		// A node's role reads its own records alone.
		nodes, err = c.ownNode(ctx, resp.Header.Revision)
		if err == nil {
			v.Partial = fmt.Sprintf("only node %s: this etcd identity may not read every node under %s (a viewer's role may: ccm rbac print --viewer NAME)", c.node, c.NodesPrefix())
		}
	}
	if err != nil {
		return nil, deniedHint(err, statusNeeds)
	}
	labels, err := c.viewLabels(ctx, resp.Header.Revision)
	if err != nil {
		return nil, deniedHint(err, statusNeeds)
	}
	for _, n := range nodes {
		n.Labels = labels[n.Name]
	}
	byLease := map[string]string{}
	for _, n := range nodes {
		if n.Presence != nil {
			byLease[n.Presence.Lease] = n.Name
		}
	}
	locked := map[string]string{}
	for i, q := range decodeQueue(c.Keys, resp.Responses[1].GetResponseRange().Kvs) {
		if q.Legacy {
			// Only the presence on the same lease can name its node.
			q.Node = cmp.Or(byLease[q.Lease], "(lease "+q.Lease+")")
		}
		// The first key holds the lock: nothing is queued before it, even
		// between its slot and its held_since mark.
		q.Held = q.Held || i == 0
		v.Queue = append(v.Queue, q)
		if q.Held {
			if v.Holder == "" {
				v.Holder = q.Node
			}
			v.Holders = append(v.Holders, q.Node)
			locked[q.Node] = StateRunning
		} else {
			v.Waiting = append(v.Waiting, q.Node)
			if locked[q.Node] == "" {
				locked[q.Node] = StateWaiting
			}
		}
	}
	byKey := map[string][]string{}
	for _, n := range nodes {
		n.describe(locked[n.Name], v.Pause != nil, newest, release)
		v.Nodes = append(v.Nodes, *n)
		v.Summary.count(n)
		if p := n.Presence; p != nil && p.ActionKey != "" {
			byKey[p.ActionKey] = append(byKey[p.ActionKey], n.Name)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		if len(byKey[key]) > 1 {
			v.SharedActionKeys = append(v.SharedActionKeys, byKey[key])
		}
	}
	return v, nil
}

// AsStale returns a copy of v for a reader that can no longer read etcd:
// every node's state is unknown, the summary counts every node as
// unknown and none as converged, behind, failed or down, and the lock
// holders and queue are left out. ReadAt stays the time of the last good
// read. Each node's records are kept, as what was last known.
func (v *View) AsStale() *View {
	s := *v
	s.Stale = true
	s.Holder, s.Holders, s.Waiting, s.Queue = "", nil, nil, nil
	s.Summary = Summary{Nodes: len(v.Nodes), Unknown: len(v.Nodes)}
	s.Nodes = make([]NodeView, len(v.Nodes))
	for i, n := range v.Nodes {
		n.State = StateUnknown
		s.Nodes[i] = n
	}
	return &s
}

// Summary counts the nodes of a view. A node is counted once as
// converged (its last run converged and it is not behind) and, apart
// from that, in each of behind, failed and down that holds.
type Summary struct {
	Nodes     int `json:"nodes"`
	Converged int `json:"converged"`
	Behind    int `json:"behind"`
	Failed    int `json:"failed"`
	Down      int `json:"down"`
	// Unknown counts the nodes whose state is unknown: every node of a
	// stale view.
	Unknown int `json:"unknown,omitempty"`
}

func (s *Summary) count(n *NodeView) {
	s.Nodes++
	if n.Behind {
		s.Behind++
	} else if n.Status != nil && n.Status.Result == api.ResultConverged {
		s.Converged++
	}
	switch n.State {
	case StateFailed:
		s.Failed++
	case StateDown:
		s.Down++
	}
}

// String is the summary in words: "5 nodes: 3 converged, 1 behind, 1
// failed, 0 down".
func (s Summary) String() string {
	if s.Unknown > 0 {
		return fmt.Sprintf("%d nodes: %d unknown", s.Nodes, s.Unknown)
	}
	return fmt.Sprintf("%d nodes: %d converged, %d behind, %d failed, %d down", s.Nodes, s.Converged, s.Behind, s.Failed, s.Down)
}

// Alive returns the presence of every node whose agent is alive, sorted
// by name.
func (c *Cluster) Alive(ctx context.Context) ([]api.Presence, error) {
	nodes, err := c.scanNodes(ctx, 0)
	if err != nil {
		return nil, err
	}
	var out []api.Presence
	for _, n := range nodes {
		if n.Presence != nil {
			out = append(out, *n.Presence)
		}
	}
	return out, nil
}

// scanLimit is how many keys under nodes/ scanNodes lists in one request
// before it hops from node to node instead.
var scanLimit int64 = 4096

// scanNodes reads every node's status and presence at revision rev (0:
// the current one), sorted by name. A node's keys also hold its replies
// to actions, which can be many and large, so it never reads the values
// under the prefix: it lists the keys alone when they are few, and
// otherwise hops from node to node.
func (c *Cluster) scanNodes(ctx context.Context, rev int64) ([]*NodeView, error) {
	resp, err := c.client.Get(ctx, c.NodesPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(scanLimit), clientv3.WithRev(rev))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.NodesPrefix(), err)
	}
	if rev == 0 {
		rev = resp.Header.Revision
	}
	if resp.More {
		nodes, err := c.hopNodes(ctx, rev)
		sortByName(nodes)
		return nodes, err
	}
	var names []string
	for _, kv := range resp.Kvs {
		name, kind, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), c.NodesPrefix()), "/")
		if (kind == "status" || kind == "alive" || kind == "problem") && (len(names) == 0 || names[len(names)-1] != name) {
			names = append(names, name)
		}
	}
	var nodes []*NodeView
	for chunk := range slices.Chunk(names, api.MaxTxnOps/nodeRecords) {
		var ops []clientv3.Op
		for _, name := range chunk {
			ops = append(ops, c.nodeReads(name, rev)...)
		}
		tr, err := c.client.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", c.NodesPrefix(), err)
		}
		for i, name := range chunk {
			nodes = append(nodes, nodeView(name, tr.Responses[nodeRecords*i:]))
		}
	}
	sortByName(nodes)
	return nodes, nil
}

// viewLabels reads the operators' labels of every node at rev, or of the
// cluster's own node alone when its identity may read no other.
func (c *Cluster) viewLabels(ctx context.Context, rev int64) (map[string]map[string]string, error) {
	resp, err := c.client.Get(ctx, c.LabelsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev))
	if errors.Is(err, rpctypes.ErrPermissionDenied) && c.node != "" {
		resp, err = c.client.Get(ctx, c.LabelsKey(c.node), clientv3.WithRev(rev))
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.LabelsPrefix(), err)
	}
	return api.DecodeLabels(c.Keys, resp.Kvs), nil
}

// ownNode reads the records of the cluster's own node (Options.Node) at
// revision rev: what a node's role may read of nodes/.
func (c *Cluster) ownNode(ctx context.Context, rev int64) ([]*NodeView, error) {
	tr, err := c.client.Txn(ctx).Then(c.nodeReads(c.node, rev)...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", c.NodePrefix(c.node), err)
	}
	return []*NodeView{nodeView(c.node, tr.Responses)}, nil
}

// sortByName sorts by node name: keys sort "web-1/" before "web/".
func sortByName(nodes []*NodeView) {
	slices.SortFunc(nodes, func(a, b *NodeView) int { return strings.Compare(a.Name, b.Name) })
}

// hopNodes is scanNodes for many keys: two keys and the first key of the
// next node in one transaction per node.
func (c *Cluster) hopNodes(ctx context.Context, rev int64) ([]*NodeView, error) {
	end := clientv3.GetPrefixRangeEnd(c.NodesPrefix())
	next := func(from string) clientv3.Op {
		return clientv3.OpGet(from, clientv3.WithRange(end), clientv3.WithKeysOnly(), clientv3.WithLimit(1), clientv3.WithRev(rev))
	}
	fail := func(err error) error { return fmt.Errorf("read %s: %w", c.NodesPrefix(), err) }
	resp, err := c.client.Txn(ctx).Then(next(c.NodesPrefix())).Commit()
	if err != nil {
		return nil, fail(err)
	}
	var nodes []*NodeView
	for {
		kvs := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs
		if len(kvs) == 0 {
			return nodes, nil
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(string(kvs[0].Key), c.NodesPrefix()), "/")
		// "0" follows "/": the first key after every key of this node.
		after := strings.TrimSuffix(c.NodePrefix(name), "/") + "0"
		resp, err = c.client.Txn(ctx).Then(append(c.nodeReads(name, rev), next(after))...).Commit()
		if err != nil {
			return nil, fail(err)
		}
		if n := nodeView(name, resp.Responses); n.Status != nil || n.Presence != nil || n.Problem != nil {
			nodes = append(nodes, n)
		}
	}
}

// nodeRecords is how many keys nodeReads reads per node.
const nodeRecords = 3

// nodeReads reads a node's status, alive and problem keys at rev, in the
// order nodeView decodes them.
func (c *Cluster) nodeReads(name string, rev int64) []clientv3.Op {
	return []clientv3.Op{
		clientv3.OpGet(c.StatusKey(name), clientv3.WithRev(rev)),
		clientv3.OpGet(c.AliveKey(name), clientv3.WithRev(rev)),
		clientv3.OpGet(c.ProblemKey(name), clientv3.WithRev(rev)),
	}
}

// nodeView decodes the responses to a node's nodeReads.
func nodeView(name string, reads []*etcdserverpb.ResponseOp) *NodeView {
	first := func(r *etcdserverpb.ResponseOp) *mvccpb.KeyValue {
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			return kvs[0]
		}
		return nil
	}
	return &NodeView{Name: name, Status: api.DecodeStatus(name, first(reads[0])),
		Presence: api.DecodePresence(name, first(reads[1])), Problem: api.DecodeProblem(first(reads[2]))}
}

// describe derives the node's state and whether it is behind. This is the
// one place that decides what a node's state is; newest is the revision
// of the newest object write in the cluster.
func (n *NodeView) describe(lock string, paused bool, newest int64, release string) {
	if n.Status != nil {
		n.Converged, n.Release = n.Status.Converged, n.Status.Release
	}
	if n.Presence != nil {
		n.Release, n.ReloadError = n.Presence.Release, n.Presence.ReloadError
		n.ReleaseStoredError = n.Presence.ReleaseStoredError
		n.Drift = n.Presence.Drift.Summary()
	}
	switch {
	case n.Presence == nil && lock == "":
		n.State = StateDown
	case lock != "":
		n.State = lock
	case paused:
		n.State = StatePaused
	case n.Status != nil && n.Status.Result == api.ResultHalted:
		n.State = StateHalted
	case n.Status != nil && n.Status.Result == api.ResultFailed:
		n.State = StateFailed
	default:
		n.State = StateIdle
	}
	n.Behind = n.behind(newest, release)
}

// behind is the one definition of BEHIND, which ccm status and the
// dashboard show: a change the node should have is not converged there.
//   - An alive agent says which changes concern it (Presence.Pending).
//   - A run that was halted skipped a change.
//   - A run that failed tried a revision it did not converge.
//   - A node with no agent alive cannot say what concerns it: it is behind
//     once any object was written after the revision it converged.
//   - A node that runs another release than the promoted one (release:
//     its id, "" when none is promoted).
func (n *NodeView) behind(newest int64, release string) bool {
	s := n.Status
	switch {
	case n.Release != release:
		return true
	case n.Presence != nil && n.Presence.Pending > n.Converged:
		return true
	case s != nil && s.Result == api.ResultHalted:
		return true
	case s != nil && s.Result == api.ResultFailed && s.Revision > n.Converged:
		return true
	case n.State == StateDown:
		return newest > n.Converged
	}
	return false
}

// Status returns a node's last run, or nil if it never ran.
func (c *Cluster) Status(ctx context.Context, node string) (*api.Status, error) {
	return getJSON[api.Status](ctx, c.client, c.StatusKey(node))
}

// Presence returns a node's presence, or nil if its agent is not alive.
func (c *Cluster) Presence(ctx context.Context, node string) (*api.Presence, error) {
	return getJSON[api.Presence](ctx, c.client, c.AliveKey(node))
}

// ReportProblem writes what this node's agent cannot do to its problem
// key; nil deletes it.
func (c *Cluster) ReportProblem(ctx context.Context, p *api.Problem) error {
	key := c.ProblemKey(c.node)
	var err error
	if p == nil {
		_, err = c.client.Delete(ctx, key)
	} else {
		raw, _ := json.Marshal(p)
		_, err = c.client.Put(ctx, key, string(raw))
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// getJSON reads key as a JSON T, or nil when it does not exist.
func getJSON[T any](ctx context.Context, cli *clientv3.Client, key string) (*T, error) {
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	v := new(T)
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	return v, nil
}
