package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"time"
)

// DefaultRetention is how long requests and replies stay in etcd.
const DefaultRetention = 24 * time.Hour

// The states of a reply. Running is the only one that is not final.
const (
	StateRunning     = "running"
	StateSucceeded   = "succeeded"
	StateFailed      = "failed"
	StateTimedOut    = "timed_out"
	StateRejected    = "rejected"
	StateInterrupted = "interrupted"
)

// The states a reader shows for a request whose reply it lacks: none yet,
// or one it cannot decode. No node writes them.
const (
	StatePending    = "pending"
	StateUnreadable = "unreadable"
)

// Final reports whether a reply in state s is the last one a node writes.
func Final(s string) bool {
	switch s {
	case StateSucceeded, StateFailed, StateTimedOut, StateRejected, StateInterrupted:
		return true
	}
	return false
}

// Request asks one node to run one action. The caller writes it; a node
// only reads it.
type Request struct {
	ID     string            `json:"id"`
	Action string            `json:"action"`
	Params map[string]string `json:"params,omitempty"`
	// By names the caller as the caller claims; a node that requires
	// signatures names the signing key instead (Reply.By).
	By      string    `json:"by,omitempty"`
	Created time.Time `json:"created"`
	// Deadline, when set, is the last moment the node may pick the
	// request up; later it is rejected.
	Deadline time.Time `json:"deadline,omitzero"`
	// Timeout, when set, shortens the handler's own timeout.
	Timeout Duration `json:"timeout,omitzero"`
	// ReplyKey is the caller's public key for this call (base64 X25519):
	// the output of a handler that declares secret_output is sealed to it.
	ReplyKey  string `json:"reply_key,omitempty"`
	Signature string `json:"signature,omitempty"`
}

// Reply is a node's answer to a request: written as running when the node
// claims the request, then once more with the final state.
type Reply struct {
	ID       string `json:"id"`
	Node     string `json:"node"`
	State    string `json:"state"`
	ExitCode *int   `json:"exit_code,omitempty"`
	// Output is the handler's stdout: a JSON value if it printed one,
	// otherwise a JSON string.
	Output json.RawMessage `json:"output,omitempty"`
	Error  string          `json:"error,omitempty"`
	// Sealed, for a handler that declares secret_output, holds the output
	// and the error sealed to the request's reply key (Open reads them).
	Sealed string `json:"sealed,omitempty"`
	// By is the caller: the name of the key that signed the request on a
	// node that requires signatures (Signed), else the request's own by.
	By     string `json:"by,omitempty"`
	Signed bool   `json:"signed,omitempty"`
	// Instance is the agent instance (state directory) that claimed it.
	Instance string    `json:"instance,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// NewID returns a unique request ID that sorts by creation time and
// follows the object ID grammar.
func NewID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405.000000Z") + "-" + hex.EncodeToString(b[:])
}

// CallRecord is the value of CallKey(id), written with a call's first
// requests and on the same lease: the nodes the call addresses. Only
// callers write it; a node never reads it.
type CallRecord struct {
	Action  string    `json:"action"`
	Nodes   []string  `json:"nodes"`
	Created time.Time `json:"created"`
}
