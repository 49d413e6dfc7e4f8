package objects_test

import (
	"fmt"
	"testing"

	"github.com/ccm-dev/ccm/internal/objects"
)

func benchMirror(n int) *objects.Mirror {
	m := objects.NewMirror("/ccm")
	kvs := make([]objects.KV, n)
	for i := range kvs {
		kvs[i] = objects.KV{Key: fmt.Sprintf("/ccm/objects/sites/s%05d", i), Value: []byte(`{"user":"u","domains":["a.example"]}`), ModRevision: int64(i + 1)}
	}
	m.Reset(kvs, int64(n))
	return m
}

// BenchmarkMirrorApply applies one watch event to a mirror of 10,000
// objects.
func BenchmarkMirrorApply(b *testing.B) {
	m := benchMirror(10000)
	rev := int64(10000)
	b.ReportAllocs()
	for b.Loop() {
		rev++
		m.Apply([]objects.KV{{Key: "/ccm/objects/sites/s00042", Value: []byte(`{"user":"v","domains":["b.example"]}`), ModRevision: rev}})
	}
}

// BenchmarkMirrorSnapshot takes a snapshot of 10,000 objects after one
// change (the per-run cost: one type re-sorted).
func BenchmarkMirrorSnapshot(b *testing.B) {
	m := benchMirror(10000)
	rev := int64(10000)
	b.ReportAllocs()
	for b.Loop() {
		rev++
		m.Apply([]objects.KV{{Key: "/ccm/objects/sites/s00042", Value: []byte(`{"user":"v"}`), ModRevision: rev}})
		if len(m.Snapshot().List("sites")) != 10000 {
			b.Fatal("lost objects")
		}
	}
}
