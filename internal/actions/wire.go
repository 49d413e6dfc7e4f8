package actions

import "encoding/json"

// outputJSON is stdout as a reply carries it: kept as JSON when it is a
// JSON document, else as a JSON string.
func outputJSON(out []byte) json.RawMessage {
	if len(out) == 0 {
		return nil
	}
	if json.Valid(out) {
		var compact json.RawMessage
		if c, err := json.Marshal(json.RawMessage(out)); err == nil {
			compact = c
		}
		return compact
	}
	s, _ := json.Marshal(string(out))
	return s
}
