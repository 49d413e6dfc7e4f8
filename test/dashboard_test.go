package test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/ccm-dev/ccm/api"
	"github.com/ccm-dev/ccm/internal/cluster"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// browser is a page of a real headless Chromium.
type browser struct {
	t   *testing.T
	ctx context.Context
}

func newBrowser(t *testing.T, url string) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("no chromium on this machine (.ci/run installs Debian's)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true), chromedp.WindowSize(1280, 860))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	_, err = chromedp.Run(ctx, chromedp.Navigate(url))
	require.NoError(t, err)
	return &browser{t: t, ctx: ctx}
}

// openDashboard starts ccm dashboard as admin and opens it in a browser
// once it serves.
func openDashboard(t *testing.T, admin *node) *browser {
	t.Helper()
	addr := freeAddr(t)
	admin.start("dashboard", "--listen", addr)
	url := "http://" + addr + "/"
	eventually(t, 30*time.Second, func() bool {
		resp, err := http.Get(url + "state.json")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	}, "the dashboard serves")
	return newBrowser(t, url)
}

// waitFor waits until the JavaScript expression js holds on the page: the
// page shows what the test expects, from its DOM.
func (b *browser) waitFor(js, msg string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond)))
	if err != nil {
		html, _ := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS("main")))
		b.t.Fatalf("the page never showed: %s (%v)\n%s", msg, err, html)
	}
}

// text returns the text of the element sel.
func (b *browser) text(sel string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(sel)))
	require.NoError(b.t, err)
	return s
}

// rows is a JavaScript count of the node rows matching attrs.
func rows(attrs string) string {
	return fmt.Sprintf(`document.querySelectorAll('#nodes tbody tr%s').length`, attrs)
}

func TestDashboardFollowsARolloutThatFailsAndResumes(t *testing.T) {
	etcd := etcdtest.New(t, 1)
	dir := t.TempDir()
	log, marker := filepath.Join(dir, "on_change.log"), filepath.Join(dir, "broken")
	nodes := agents(t, etcd, 3, log, marker, "0")
	admin := caller(t, etcd, t.TempDir())
	page := openDashboard(t, admin)

	page.waitFor(`document.body.dataset.connection === "live"`, "the event stream is open")
	page.waitFor(rows(`[data-state="idle"][data-behind="false"]`)+` === 3`, "three converged nodes")
	page.waitFor(`document.querySelector('#summary').dataset.converged === "3"`, "the summary counts three converged nodes")
	assert.Equal(t, "3 nodes: 3 converged, 0 behind, 0 failed, 0 down", page.text("#summary"))
	page.waitFor(`document.querySelector('#etcd').dataset.healthy === "1" && document.querySelector('#etcd').dataset.endpoints === "1"`, "etcd healthy")
	assert.Equal(t, "1/1 endpoints healthy", page.text("#etcd"))
	assert.Equal(t, "serial (one node at a time)", page.text("#rollout"))
	assert.Equal(t, "free", page.text("#holders"))

	// An action shows with its outcome.
	r := admin.action("action", "run", "ccm.plan", "--node", "node1")
	require.Equal(t, 0, r.code, r.stderr)
	page.waitFor(`[...document.querySelectorAll('#actions tbody tr[data-node="node1"][data-state="succeeded"]')].some(tr => tr.querySelector('.action').textContent === "ccm.plan")`,
		"the action call and its reply")

	// A change that fails validate halts the rollout: the page names the
	// node, the configuration and the error, and the others fall behind.
	require.NoError(t, os.WriteFile(marker, nil, 0o644))
	rev := putSites(t, etcd, 1, "v2")
	failed := failedNode(t, cluster.New(etcd.Client(t), cluster.Options{Prefix: api.DefaultPrefix}), "a node fails validate")
	page.waitFor(`!document.querySelector('#failure').hidden && document.querySelector('#failure').dataset.node === `+strconv.Quote(failed), "the failure banner")
	assert.Equal(t, "sites", page.text("#failure .config"))
	assert.Contains(t, page.text("#failure .error"), "validate")
	// A second node's record shows beside the first, under its own name
	// (its value claims another node).
	_, err := etcd.Client(t).Put(context.Background(), api.NewKeys("").FailureKey("node9"), `{"node":"`+failed+`","configuration":"pools","error":"x"}`)
	require.NoError(t, err)
	page.waitFor(`document.querySelector('#failure .more').textContent === "Also failed: node9 (pools)"`, "every failure record, each by its key")
	page.waitFor(rows(fmt.Sprintf(`[data-node=%q][data-state="failed"]`, failed))+` === 1`, "the failed node")
	page.waitFor(rows(`[data-state="halted"][data-behind="true"]`)+` === 2`, "the other nodes halted, behind")
	page.waitFor(`document.querySelector('#summary').dataset.failed === "1" && document.querySelector('#summary').dataset.behind === "3"`, "the summary counts the failure")
	if shot := os.Getenv("CCM_DASHBOARD_SCREENSHOT"); shot != "" {
		png, err := chromedp.Run(page.ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(shot, png, 0o644))
	}

	// A quarantine record shows under the node of its key, as text: its
	// error is a customer's data.
	_, err = etcd.Client(t).Put(context.Background(), api.NewKeys("").QuarantineKey("node9", "sites", "evil"),
		`{"node":"node1","revision":5,"configuration":"sites","error":"<img src=x onerror=alert(1)>"}`)
	require.NoError(t, err)
	page.waitFor(`!document.querySelector('#quarantine').hidden && document.querySelectorAll('#quarantines tbody tr[data-object="sites/evil"][data-node="node9"]').length === 1`, "the quarantine table")
	assert.Equal(t, "<img src=x onerror=alert(1)>", page.text(`#quarantines tbody tr .error`), "shown as text, never markup")
	page.waitFor(`document.querySelectorAll('#quarantines img').length === 0`, "no element from the error")

	// A pause shows with its reason.
	r = admin.action("pause", "--reason", "maintenance window")
	require.Equal(t, 0, r.code, r.stderr)
	page.waitFor(`!document.querySelector('#pause').hidden`, "the pause banner")
	assert.Equal(t, "maintenance window", page.text("#pause .reason"))

	// Fixed and resumed: the flag and the pause go, every node converges
	// the change.
	require.NoError(t, os.Remove(marker))
	r = admin.action("resume")
	require.Equal(t, 0, r.code, r.stderr)
	r = admin.action("unpause")
	require.Equal(t, 0, r.code, r.stderr)
	for _, n := range nodes {
		n.reported(t, rev, api.ResultConverged)
	}
	page.waitFor(`document.querySelector('#failure').hidden && document.querySelector('#pause').hidden`, "no banner")
	page.waitFor(rows(`[data-state="idle"][data-behind="false"]`)+` === 3`, "three converged nodes again")
	page.waitFor(fmt.Sprintf(`[...document.querySelectorAll('#nodes tbody tr .converged')].every(td => Number(td.textContent) >= %d)`, rev),
		"every node converged the change's revision")
}

// freeAddr returns a loopback address no one listens on.
func freeAddr(t *testing.T) string { return etcdtest.FreeAddr(t) }

// The dashboard shows the promoted release, the release each node runs,
// and a node whose load of a promoted release failed, with why.
func TestDashboardShowsEachNodesReleaseAndAFailedLoad(t *testing.T) {
	t.Parallel()
	etcd := etcdtest.New(t, 1)
	admin := caller(t, etcd, t.TempDir())
	_, good := signedRelease(t, etcd, admin)
	page := openDashboard(t, admin)
	page.waitFor(fmt.Sprintf(`[...document.querySelectorAll('#nodes tbody tr .release')].filter(td => td.textContent === %q).length === 3`, good[:12]),
		"every node on the signed release")
	assert.Contains(t, page.text("#release"), good[:12])

	bad := push(t, admin, release(t, "bad:", ""))
	promote(t, etcd, admin, bad)
	page.waitFor(`[...document.querySelectorAll('#nodes tbody tr .detail')].some(td => td.textContent.startsWith("reload failed: release `+bad[:12]+` is not signed"))`,
		"the node that tried the unsigned release says why")
	page.waitFor(rows(`[data-behind="true"]`)+` === 3`, "every node is behind the promoted release")
	assert.Contains(t, page.text("#release"), bad[:12])
}
