package actions

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

func TestCappedKeepsTheHeadOrTheTailAndCountsTheRest(t *testing.T) {
	head := &capped{max: 4}
	_, _ = head.Write([]byte("abc"))
	_, _ = head.Write([]byte("defg"))
	assert.Equal(t, "abcd", string(head.bytes()))
	assert.Equal(t, int64(3), head.dropped)

	tail := &capped{max: 4, keepTail: true}
	_, _ = tail.Write([]byte("abc"))
	_, _ = tail.Write([]byte("defg"))
	assert.Equal(t, "defg", string(tail.bytes()))
}

func TestOutputStaysJSONWhenItIsJSON(t *testing.T) {
	assert.JSONEq(t, `{"a":1}`, string(outputJSON([]byte("{ \"a\": 1 }\n"))))
	var s string
	assert.NoError(t, json.Unmarshal(outputJSON([]byte("plain \x1b[2J text")), &s))
	assert.Equal(t, "plain \x1b[2J text", s, "anything else is a JSON string, escapes kept as data")
	assert.Nil(t, outputJSON(nil))
}

func TestAPatternMustMatchTheWholeValue(t *testing.T) {
	h := &Handler{Name: "x", Params: map[string]Param{"site": {Pattern: regexp.MustCompile(`^(?:[a-z]+)$`), Required: true}}}
	assert.NoError(t, h.CheckParams(map[string]string{"site": "shop"}))
	err := h.CheckParams(map[string]string{"site": "shop; reboot", "other": "1"})
	assert.ErrorContains(t, err, "parameter site: does not match")
	assert.ErrorContains(t, err, `parameter "other" is not declared`)
	assert.Len(t, strings.Split(err.Error(), "\n"), 2, "every problem, one per line")
}

func TestRedactionCatchesASecretPrintedAsJSON(t *testing.T) {
	secret := "Hunter2\"<x>é"
	goJSON, _ := json.Marshal(map[string]string{"pw": secret})
	python := []byte(`{"pw": "Hunter2\"<x>\u00e9"}`) // json.dumps, ensure_ascii
	for _, out := range [][]byte{[]byte("pw=" + secret), goJSON, python} {
		got := string(redact(out, []string{secret}))
		assert.NotContains(t, got, "Hunter2", "%s", out)
		assert.Contains(t, got, "[secret]")
	}
}

func TestAGroupBelowMinGIDIsRefusedByNumberAndName(t *testing.T) {
	r := RunAs{Param: "user", MinUID: 1000, MinGID: 1000, DenyGroups: DefaultDenyGroups}
	assert.ErrorContains(t, r.checkGroups("cust", []uint32{1500, 100}), `run_as: user "cust": group users (gid 100)`)
	assert.ErrorContains(t, r.checkGroups("cust", []uint32{1500, 100}), "below min_gid 1000")
	assert.NoError(t, r.checkGroups("cust", []uint32{1500, 2000}))
}

func TestAFloodFromOneCallerDoesNotQueueTheOthersBehindIt(t *testing.T) {
	var kvs []*mvccpb.KeyValue
	for i := range 5 {
		kvs = append(kvs, &mvccpb.KeyValue{Key: []byte(fmt.Sprint("flood", i)), Value: []byte(`{"by":"flooder"}`)})
	}
	kvs = append(kvs, &mvccpb.KeyValue{Key: []byte("ops"), Value: []byte(`{"by":"ops"}`)})
	var order []string
	for _, kv := range fairOrder(kvs) {
		order = append(order, string(kv.Key))
	}
	assert.Equal(t, []string{"flood0", "ops", "flood1", "flood2", "flood3", "flood4"}, order)
}
