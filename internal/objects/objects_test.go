package objects_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/internal/objects"
)

func TestDecodeRejectsEverythingButOneJSONObject(t *testing.T) {
	tests := []struct {
		name, value, want string
	}{
		{"invalid json", `{"a":`, "value is not valid JSON: unexpected EOF"},
		{"array", `[1,2]`, "value is a JSON array, want a JSON object"},
		{"string", `"x"`, "value is a JSON string, want a JSON object"},
		{"number", `42`, "value is a JSON number, want a JSON object"},
		{"null", `null`, "value is JSON null, want a JSON object"},
		{"trailing data", `{"a":1} {"b":2}`, "value has data after the JSON object"},
		{"not utf-8", "{\"a\":\"\xff\xfe\"}", "value is not valid UTF-8"},
		{"empty", ``, "value is not valid JSON: EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := objects.Decode([]byte(tt.value))
			assert.EqualError(t, err, tt.want)
		})
	}
}

func TestDecodeAcceptsLargeObjects(t *testing.T) {
	big := `{"blob":"` + strings.Repeat("x", 4<<20) + `"}`
	data, err := objects.Decode([]byte(big))
	require.NoError(t, err)
	assert.Len(t, data["blob"], 4<<20)
}

func TestParseKeyEnforcesTheGrammar(t *testing.T) {
	tests := []struct {
		key, typ, id, err string
	}{
		{key: "/ccm/objects/sites/shop", typ: "sites", id: "shop"},
		{key: "/ccm/objects/sites/a.b_c-1", typ: "sites", id: "a.b_c-1"},
		{key: "/ccm/objects/sites/../etc", err: `key "/ccm/objects/sites/../etc": id "../etc": must match`},
		{key: "/ccm/objects/sites/.hidden", err: `id ".hidden": must match`},
		{key: "/ccm/objects/sites/a/b", err: `id "a/b": must match`},
		{key: "/ccm/objects/sites/", err: `id "": must match`},
		{key: "/ccm/objects/sites", err: `want /ccm/objects/<type>/<id>`},
		{key: "/ccm/objects/-x/y", err: `type "-x": must match`},
		{key: "/ccm/objects/sites/" + strings.Repeat("a", 201), err: "must match"},
		{key: "/other/objects/sites/x", err: "is not under /ccm/objects/"},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			typ, id, err := objects.ParseKey("/ccm", tt.key)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.typ, typ)
			assert.Equal(t, tt.id, id)
		})
	}
}

func TestBuilderSortsAndSeparatesBadObjects(t *testing.T) {
	b := objects.NewBuilder("/ccm", 7, nil)
	b.Add("/ccm/objects/sites/zeta", []byte(`{"n":1}`), 3)
	b.Add("/ccm/objects/sites/alpha", []byte(`{"n":2}`), 4)
	b.Add("/ccm/objects/sites/broken", []byte(`{`), 5)
	b.Add("/ccm/objects/sites/bad$id", []byte(`{}`), 6)
	s := b.Snapshot()

	assert.Equal(t, int64(7), s.Revision)
	require.Len(t, s.List("sites"), 2)
	assert.Equal(t, "alpha", s.List("sites")[0].ID)
	assert.Equal(t, int64(4), s.List("sites")[0].Revision)
	assert.NotNil(t, s.List("nothing"), "an absent type is an empty list")
	assert.ErrorContains(t, s.Check("sites"), "object /ccm/objects/sites/broken: value is not valid JSON")
	assert.NoError(t, s.Check("users"))
	require.Len(t, s.Ignored, 1)
	assert.ErrorContains(t, s.Ignored[0], `id "bad$id"`)
}

func TestReadFileNamesTheBadObject(t *testing.T) {
	tests := []struct{ name, content, want string }{
		{"not a map", `[1]`, "want {\"<type>\": {\"<id>\": {...}}}"},
		{"bad object", `{"sites": {"shop": [1]}}`, "object /ccm/objects/sites/shop: value is a JSON array"},
		{"bad id", `{"sites": {"../x": {}}}`, `id "../x": must match`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "objects.json")
			require.NoError(t, os.WriteFile(p, []byte(tt.content), 0o644))
			_, err := objects.ReadFile(p, nil)
			assert.ErrorContains(t, err, p+": ")
			assert.ErrorContains(t, err, tt.want)
		})
	}
}
