package main

import (
	"bytes"
	"encoding/json"
	"io"
)

// writeJSON writes v as JSON meant for people (and their scripts): one
// value, indented or on one line, without Go's HTML escaping, so that a
// login URL's & stays & and can be pasted.
func writeJSON(w io.Writer, v any, indent bool) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if indent {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// plainJSON returns raw without the HTML escapes Go's encoder wrote when
// it was stored (\u0026 for &, \u003c for <): the same value, as a person
// reads it. Anything that does not decode is returned as it is.
func plainJSON(raw json.RawMessage) json.RawMessage {
	if !bytes.Contains(raw, []byte(`\u00`)) {
		return raw
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return raw
	}
	var b bytes.Buffer
	if writeJSON(&b, v, false) != nil {
		return raw
	}
	return bytes.TrimRight(b.Bytes(), "\n")
}
