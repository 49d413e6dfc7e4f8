package etcdtest

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Counts is what an etcd member says it did, read from its /metrics: the
// counters that tests and the bench bound per node or per call.
type Counts struct {
	Commits       float64 // raft proposals committed
	Events        float64 // watch events sent
	WatchRequests float64 // watch requests received (creations and cancellations)
	Txns, Ranges  float64 // Txn and Range calls served
	// Reported names the counters the member reported ("commits",
	// "events", "watch requests", "txns", "ranges"): one it does not
	// report would read as zero and pass every bound.
	Reported map[string]bool
}

// MemberCounts reads endpoint's /metrics (a member's client URL).
func MemberCounts(endpoint string) (Counts, error) {
	c := Counts{Reported: map[string]bool{}}
	resp, err := http.Get(endpoint + "/metrics")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return c, fmt.Errorf("%s/metrics: %w", endpoint, err)
	}
	grpc := func(name, metric, method string) bool {
		return strings.HasPrefix(name, metric+"{") && strings.Contains(name, `grpc_method="`+method+`"`)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(value, 64)
		switch {
		case name == "etcd_server_proposals_committed_total":
			c.Commits, c.Reported["commits"] = v, true
		case name == "etcd_debugging_mvcc_events_total":
			c.Events, c.Reported["events"] = v, true
		case grpc(name, "grpc_server_msg_received_total", "Watch"):
			c.WatchRequests, c.Reported["watch requests"] = c.WatchRequests+v, true
		case grpc(name, "grpc_server_handled_total", "Txn"):
			c.Txns, c.Reported["txns"] = c.Txns+v, true
		case grpc(name, "grpc_server_handled_total", "Range"):
			c.Ranges, c.Reported["ranges"] = c.Ranges+v, true
		}
	}
	return c, nil
}
