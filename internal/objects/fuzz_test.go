package objects_test

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/objects"
)

// FuzzDecode checks that any value either decodes to a JSON object that
// round-trips, or is rejected with an error: never a panic, never a
// non-object, never invalid UTF-8.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"a":1}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		data, err := objects.Decode(value)
		if err != nil {
			return
		}
		if data == nil {
			t.Fatal("nil data without error")
		}
		if !utf8.Valid(value) {
			t.Fatal("accepted invalid UTF-8")
		}
		raw, err := json.Marshal(data)
		if err != nil {
			t.Fatalf("decoded data does not marshal: %v", err)
		}
		if _, err := objects.Decode(raw); err != nil {
			t.Fatalf("round trip failed: %v", err)
		}
	})
}

// FuzzParseKey checks that an accepted key always yields names within the
// grammar.
func FuzzParseKey(f *testing.F) {
	f.Add("/ccm/objects/sites/shop")
	f.Fuzz(func(t *testing.T, key string) {
		typ, id, err := objects.ParseKey("/ccm", key)
		if err != nil {
			return
		}
		if !api.ValidName(typ) || !api.ValidName(id) {
			t.Fatalf("accepted %q as %q/%q", key, typ, id)
		}
	})
}
