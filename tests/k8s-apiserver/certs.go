package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files kept in --cert-dir. Tests (and curl) use them directly.
const (
	caCertFile  = "ca.crt"
	caKeyFile   = "ca.key"
	servingCert = "server.crt"
	servingKey  = "server.key"
	// The service-account token signing key (kube-apiserver signs and verifies tokens
	// with it; tokens are what pods and the controller manager's controllers use).
	saKeyFile    = "sa.key"
	saPublicFile = "sa.pub"
)

// An identity that authenticates with a client certificate signed by the CA: the user
// is the CN, the groups are the O fields, as kube-apiserver's x509 authenticator reads
// them. Each gets <name>.crt, <name>.key and a kubeconfig.
type identity struct {
	name   string // file names
	cn     string
	groups []string
}

var (
	// An administrator: system:masters may do anything, whatever RBAC says.
	admin = identity{"admin", "snp-admin", []string{"system:masters"}}
	// The shim, exactly as its service account is seen by RBAC: the username and the
	// two groups kube-apiserver gives a token of snp-system/snp-shim. RBAC is checked
	// for real against deploy/rbac.yaml.
	shim = identity{"shim", "system:serviceaccount:snp-system:snp-shim",
		[]string{"system:serviceaccounts", "system:serviceaccounts:snp-system"}}
	// kube-controller-manager's own user, bound by the bootstrap RBAC policy. Its
	// controllers act as service accounts of kube-system (--use-service-account-credentials).
	kcmIdentity = identity{"controller-manager", "system:kube-controller-manager", nil}

	identities = []identity{admin, shim, kcmIdentity}
)

func certFile(id identity) string { return id.name + ".crt" }
func keyFile(id identity) string  { return id.name + ".key" }

// ensureCerts makes a CA, a serving cert, a client cert per identity and the
// service-account key in dir, unless all of them already exist. Reusing them is what
// lets clients keep their kubeconfigs (and pods their tokens) across a restart.
func ensureCerts(dir string) error {
	all := []string{caCertFile, caKeyFile, servingCert, servingKey, saKeyFile, saPublicFile}
	for _, id := range identities {
		all = append(all, certFile(id), keyFile(id))
	}
	missing := 0
	for _, f := range all {
		if _, err := os.Stat(filepath.Join(dir, f)); errors.Is(err, os.ErrNotExist) {
			missing++
		}
	}
	if missing == 0 {
		return nil
	}
	if missing != len(all) {
		// A half-written set would silently mix two CAs; refuse instead.
		return fmt.Errorf("cert dir %s holds only some of %v; remove it or complete it", dir, all)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}

	// ECDSA P-256: fast to generate and accepted by Go, OpenSSL and rustls (and as an
	// ES256 service-account signing key). Ten years, so a long-lived cert dir never
	// expires under a test.
	notBefore := time.Now().Add(-time.Hour) // tolerate small clock skew
	notAfter := notBefore.Add(10 * 365 * 24 * time.Hour)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "snp-test-ca"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}

	issue := func(tmpl *x509.Certificate) ([]byte, crypto.Signer, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber = serial()
		tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
		return der, key, err
	}

	type file struct {
		name string
		der  []byte        // a certificate, or
		key  crypto.Signer // a private key
		pub  crypto.PublicKey
	}
	// Certificates first, keys last: a crash midway leaves an incomplete set that the
	// check above reports, rather than a set that looks complete.
	certs := []file{{name: caCertFile, der: caDER}}
	keys := []file{{name: caKeyFile, key: caKey}}

	srvDER, srvKey, err := issue(&x509.Certificate{
		// The names clients use, and the in-cluster names kube-apiserver expects to
		// serve (the kubernetes Service), though nothing resolves those here.
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
	if err != nil {
		return err
	}
	certs = append(certs, file{name: servingCert, der: srvDER})
	keys = append(keys, file{name: servingKey, key: srvKey})
	for _, id := range identities {
		der, key, err := issue(&x509.Certificate{
			Subject:     pkix.Name{CommonName: id.cn, Organization: id.groups},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		if err != nil {
			return err
		}
		certs = append(certs, file{name: certFile(id), der: der})
		keys = append(keys, file{name: keyFile(id), key: key})
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	certs = append(certs, file{name: saPublicFile, pub: saKey.Public()})
	keys = append(keys, file{name: saKeyFile, key: saKey})

	for _, w := range append(certs, keys...) {
		var block *pem.Block
		switch {
		case w.key != nil:
			// PKCS#8 ("PRIVATE KEY") is the one key format every client
			// library (kube-rs with rustls or openssl, client-go) reads.
			der, err := x509.MarshalPKCS8PrivateKey(w.key)
			if err != nil {
				return err
			}
			block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
		case w.pub != nil:
			der, err := x509.MarshalPKIXPublicKey(w.pub)
			if err != nil {
				return err
			}
			block = &pem.Block{Type: "PUBLIC KEY", Bytes: der}
		default:
			block = &pem.Block{Type: "CERTIFICATE", Bytes: w.der}
		}
		if err := os.WriteFile(filepath.Join(dir, w.name), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

// clientTLS is what our own readiness probe uses: the admin's identity and the CA
// its kubeconfig hands out, so READY proves that path works end to end.
func clientTLS(dir string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile(admin)), filepath.Join(dir, keyFile(admin)))
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate in %s", caCertFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool}, nil
}
