package dashboard

import (
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Access decides who may read the dashboard. The zero value serves only
// requests addressed to a loopback name, without authentication.
type Access struct {
	// Hosts are the names, besides loopback ones, that requests may
	// address (the Host header, without its port): a page on another
	// origin that rebinds its own DNS name to this address is refused.
	Hosts []string
	// Token, when set, is required: as "Authorization: Bearer <token>",
	// or as the cookie that POST /login sets for a browser.
	Token string
}

// tokenCookie is the cookie that carries the token for a browser, whose
// event stream cannot send an Authorization header.
const tokenCookie = "ccm_dashboard"

// ReadToken reads a bearer token from file: its first line, which must not
// be empty. The file should be readable by its owner only.
func ReadToken(file string) (string, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	token, _, _ := strings.Cut(string(raw), "\n")
	if token = strings.TrimSpace(token); len(token) < 16 {
		return "", fmt.Errorf("token file %s: the token must be at least 16 characters", file)
	}
	return token, nil
}

// guard refuses requests to other hosts, and without the token when one
// is set; it serves POST /login for browsers.
func (a Access) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.hostAllowed(r.Host) {
			http.Error(w, fmt.Sprintf("host %q is not served here: only loopback names and those given with --allow-host", hostOnly(r.Host)), http.StatusMisdirectedRequest)
			return
		}
		if a.Token == "" {
			h.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/login" {
			a.login(w, r)
			return
		}
		if !a.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ccm dashboard"`)
			if r.Method == http.MethodGet && r.URL.Path == "/" {
				w.Header().Set("Content-Type", "text/html; charset=utf-8")
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = fmt.Fprint(w, loginPage)
				return
			}
			http.Error(w, "unauthorized: send the dashboard's token", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// loginPage asks a browser for the token; it needs no script.
const loginPage = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ccm cluster</title></head>
<body><form method="post" action="/login"><label>Dashboard token <input type="password" name="token" autofocus></label>
<button type="submit">Open</button></form></body></html>
`

func (a Access) login(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	if !a.valid(r.PostFormValue("token")) {
		time.Sleep(500 * time.Millisecond) // no fast guessing
		http.Error(w, "unauthorized: wrong token", http.StatusUnauthorized)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: a.Token, Path: "/", HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (a Access) authorized(r *http.Request) bool {
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && a.valid(bearer) {
		return true
	}
	c, err := r.Cookie(tokenCookie)
	return err == nil && a.valid(c.Value)
}

func (a Access) valid(token string) bool {
	return subtle.ConstantTimeCompare([]byte(token), []byte(a.Token)) == 1
}

// hostAllowed reports whether a request may address host.
func (a Access) hostAllowed(host string) bool {
	name := strings.ToLower(hostOnly(host))
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return true
	}
	if ip := net.ParseIP(name); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, h := range a.Hosts {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

// hostOnly strips the port and IPv6 brackets from a Host header.
func hostOnly(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		return h
	}
	return strings.Trim(host, "[]")
}

// TLSConfig serves HTTPS with cert and key and, with clientCA, accepts
// only clients whose certificate that CA signed.
func TLSConfig(cert, key, clientCA string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("dashboard certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if clientCA == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(clientCA)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("client CA " + clientCA + ": no PEM certificate")
	}
	cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	return cfg, nil
}
