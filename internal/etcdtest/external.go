package etcdtest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// PKI is a throw-away certificate authority for TLS tests.
type PKI struct {
	t      testing.TB
	dir    string
	CACert string // PEM file
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

// NewPKI creates a CA in a temporary directory.
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	p := &PKI{t: t, dir: t.TempDir(), serial: 1}
	key := p.newKey()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ccm test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caKey = key
	p.CACert = p.write("ca.pem", "CERTIFICATE", der)
	return p
}

func (p *PKI) newKey() *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	return key
}

func (p *PKI) write(name, typ string, der []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// Issue signs a certificate for cn, valid for 127.0.0.1 and localhost, for
// both server and client use; it returns the certificate and key files.
func (p *PKI) Issue(cn string) (cert, key string) {
	p.t.Helper()
	p.serial++
	k := p.newKey()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write(cn+".pem", "CERTIFICATE", der), p.write(cn+"-key.pem", "EC PRIVATE KEY", kder)
}

// External is an etcd server run from the etcd binary (Debian's
// etcd-server), serving TLS with client-certificate authentication.
type External struct {
	t                     testing.TB
	PKI                   *PKI
	Endpoint              string // https://127.0.0.1:port
	cmd                   *exec.Cmd
	bin                   string
	peer                  string
	serverCert, serverKey string
	// RootCert and RootKey are the client certificate of the root user.
	RootCert, RootKey string
	rootAuth          string // user:password once auth is enabled
}

// StartExternal starts the etcd binary with TLS, or skips the test when
// the binary is not installed (CI installs it).
func StartExternal(t testing.TB) *External {
	t.Helper()
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("etcd binary not installed (apt-get install etcd-server etcd-client)")
	}
	if _, err := exec.LookPath("etcdctl"); err != nil {
		t.Skip("etcdctl not installed (apt-get install etcd-client)")
	}
	pki := NewPKI(t)
	serverCert, serverKey := pki.Issue("etcd-server")
	rootCert, rootKey := pki.Issue("root")
	client, peer := FreeAddr(t), FreeAddr(t)
	e := &External{t: t, PKI: pki, Endpoint: "https://" + client, RootCert: rootCert, RootKey: rootKey,
		bin: etcdBin, peer: "http://" + peer, serverCert: serverCert, serverKey: serverKey}
	e.start(t.TempDir())
	return e
}

// start runs etcd on dataDir and waits until it is healthy.
func (e *External) start(dataDir string) {
	t := e.t
	t.Helper()
	e.cmd = exec.Command(e.bin,
		"--name", "ext", "--data-dir", dataDir,
		"--listen-client-urls", e.Endpoint, "--advertise-client-urls", e.Endpoint,
		"--listen-peer-urls", e.peer, "--initial-advertise-peer-urls", e.peer,
		"--initial-cluster", "ext="+e.peer,
		"--cert-file", e.serverCert, "--key-file", e.serverKey,
		"--trusted-ca-file", e.PKI.CACert, "--client-cert-auth",
		"--log-level", "error",
	)
	var stderr bytes.Buffer
	e.cmd.Stderr = &stderr
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	cmd := e.cmd
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_, _ = cmd.Process.Wait()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := e.Etcdctl("endpoint", "health"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not become healthy: %s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop kills the server.
func (e *External) stop() {
	_ = e.cmd.Process.Kill()
	_, _ = e.cmd.Process.Wait()
}

// Snapshot saves a snapshot of the data to a file and returns its path.
func (e *External) Snapshot() string {
	e.t.Helper()
	file := filepath.Join(e.t.TempDir(), "snapshot.db")
	if out, err := e.Etcdctl("snapshot", "save", file); err != nil {
		e.t.Fatalf("snapshot save: %v: %s", err, out)
	}
	return file
}

// Restore stops etcd, restores snapshot into a new data directory (as an
// operator recovering from a disaster does) and starts it again on the
// same endpoint.
func (e *External) Restore(snapshot string) {
	e.t.Helper()
	e.stop()
	dir := filepath.Join(e.t.TempDir(), "restored")
	cmd := exec.Command("etcdctl", "snapshot", "restore", snapshot, "--data-dir", dir, "--name", "ext",
		"--initial-cluster", "ext="+e.peer, "--initial-advertise-peer-urls", e.peer)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("snapshot restore: %v: %s", err, out)
	}
	e.start(dir)
}

// Wipe stops etcd and starts it again on an empty data directory.
func (e *External) Wipe() {
	e.t.Helper()
	e.stop()
	e.start(e.t.TempDir())
}

// Etcdctl runs etcdctl as root (over TLS, with root's password once
// EnableAuth ran) and returns its combined output.
func (e *External) Etcdctl(args ...string) (string, error) {
	base := []string{"--endpoints", e.Endpoint, "--cacert", e.PKI.CACert, "--cert", e.RootCert, "--key", e.RootKey}
	if e.rootAuth != "" {
		base = append(base, "--user", e.rootAuth)
	}
	cmd := exec.Command("etcdctl", append(base, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// EnableAuth creates the root user with password and turns etcd auth on.
func (e *External) EnableAuth(password string) {
	e.t.Helper()
	enableAuth(e.t, e.Etcdctl, password)
	e.rootAuth = "root:" + password
}

// enableAuth creates the root user with password and turns auth on,
// through etcdctl.
func enableAuth(t testing.TB, etcdctl func(args ...string) (string, error), password string) {
	t.Helper()
	for _, args := range [][]string{
		{"user", "add", "root:" + password},
		{"user", "grant-role", "root", "root"},
		{"auth", "enable"},
	} {
		if out, err := etcdctl(args...); err != nil {
			t.Fatalf("etcdctl %v: %v: %s", args, err, out)
		}
	}
}
