package dashboard_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/ccm-dev/ccm/internal/dashboard"
	"github.com/ccm-dev/ccm/internal/etcdtest"
)

// get requests path from srv with the Host header host and the header h.
func get(t *testing.T, c *http.Client, base, path, host string, h http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	require.NoError(t, err)
	req.Host = host
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

// A page on another origin that rebinds its DNS name to the dashboard's
// address sends its own name as Host: it is refused. Loopback names and
// the names allowed are served.
func TestTheDashboardAnswersOnlyItsOwnHostNames(t *testing.T) {
	srv := dashboard.New(nil, nil, zap.NewNop())
	web := httptest.NewServer(srv.Handler(dashboard.Access{Hosts: []string{"dash.example"}}))
	defer web.Close()
	for host, want := range map[string]int{
		"evil.example":        http.StatusMisdirectedRequest,
		"evil.example:9320":   http.StatusMisdirectedRequest,
		"127.0.0.1.evil.test": http.StatusMisdirectedRequest,
		"localhost:9320":      http.StatusOK,
		"127.0.0.1:9320":      http.StatusOK,
		"[::1]:9320":          http.StatusOK,
		"DASH.example:443":    http.StatusOK,
	} {
		resp := get(t, web.Client(), web.URL, "/state.json", host, nil)
		assert.Equal(t, want, resp.StatusCode, host)
	}
}

// With a token, every path needs it: as a bearer token, or as the cookie
// a browser gets from POST /login.
func TestTheDashboardTokenGuardsEveryPath(t *testing.T) {
	token := strings.Repeat("s3cret-", 4)
	file := filepath.Join(t.TempDir(), "token")
	require.NoError(t, os.WriteFile(file, []byte(token+"\n"), 0o600))
	read, err := dashboard.ReadToken(file)
	require.NoError(t, err)
	srv := dashboard.New(nil, nil, zap.NewNop())
	web := httptest.NewServer(srv.Handler(dashboard.Access{Token: read}))
	defer web.Close()
	c := web.Client()
	for _, p := range []string{"/", "/state.json", "/events", "/app.js"} {
		assert.Equal(t, http.StatusUnauthorized, get(t, c, web.URL, p, "localhost", nil).StatusCode, p)
		assert.Equal(t, http.StatusUnauthorized, get(t, c, web.URL, p, "localhost", http.Header{"Authorization": {"Bearer wrong-" + token}}).StatusCode, p)
	}
	assert.Equal(t, http.StatusOK, get(t, c, web.URL, "/state.json", "localhost", http.Header{"Authorization": {"Bearer " + token}}).StatusCode)

	noRedirect := *c
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noRedirect.PostForm(web.URL+"/login", url.Values{"token": {token}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusSeeOther, resp.StatusCode)
	cookies := resp.Cookies()
	require.Len(t, cookies, 1)
	assert.True(t, cookies[0].HttpOnly)
	assert.Equal(t, http.StatusOK, get(t, c, web.URL, "/state.json", "localhost", http.Header{"Cookie": {cookies[0].String()}}).StatusCode)

	_, err = dashboard.ReadToken(filepath.Join(t.TempDir(), "none"))
	assert.Error(t, err)
	require.NoError(t, os.WriteFile(file, []byte("short\n"), 0o600))
	_, err = dashboard.ReadToken(file)
	assert.ErrorContains(t, err, "at least 16 characters")
}

// With --client-ca, only a client whose certificate the CA signed gets a
// connection.
func TestTheDashboardRequiresAClientCertificate(t *testing.T) {
	pki := etcdtest.NewPKI(t)
	cert, key := pki.Issue("dashboard")
	cfg, err := dashboard.TLSConfig(cert, key, pki.CACert)
	require.NoError(t, err)
	srv := dashboard.New(nil, nil, zap.NewNop())
	web := httptest.NewUnstartedServer(srv.Handler(dashboard.Access{}))
	web.TLS = cfg
	web.StartTLS()
	defer web.Close()
	caPEM, err := os.ReadFile(pki.CACert)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(caPEM))
	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
	}
	_, err = client().Get(web.URL + "/state.json")
	assert.Error(t, err, "no client certificate: no connection")
	other := etcdtest.NewPKI(t)
	oc, ok := other.Issue("stranger")
	stranger, err := tls.LoadX509KeyPair(oc, ok)
	require.NoError(t, err)
	_, err = client(stranger).Get(web.URL + "/state.json")
	assert.Error(t, err, "a certificate of another CA: no connection")
	cc, ck := pki.Issue("operator")
	mine, err := tls.LoadX509KeyPair(cc, ck)
	require.NoError(t, err)
	resp, err := client(mine).Get(web.URL + "/state.json")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
}
