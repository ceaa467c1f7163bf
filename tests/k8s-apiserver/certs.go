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

// Names of the files kept in --cert-dir. Tests (and curl) use them directly.
const (
	caCertFile     = "ca.crt"
	caKeyFile      = "ca.key"
	servingCert    = "server.crt"
	servingKey     = "server.key"
	clientCertFile = "client.crt"
	clientKeyFile  = "client.key"
)

// Identity of the test client. O=system:masters is the group the
// authorizer always allows, exactly as on a real cluster.
const (
	clientCN    = "snp-test"
	clientGroup = "system:masters"
)

// ensureCerts makes a CA, a serving cert and a client cert in dir, unless all
// of them already exist. Reusing them is what lets a client keep its
// kubeconfig across a stop/start of the server.
func ensureCerts(dir string) error {
	all := []string{caCertFile, caKeyFile, servingCert, servingKey, clientCertFile, clientKeyFile}
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

	// ECDSA P-256: fast to generate and accepted by Go, OpenSSL and rustls.
	// Ten years, so a long-lived cert dir never expires under a test.
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

	srvDER, srvKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "snp-test-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
	if err != nil {
		return err
	}
	cliDER, cliKey, err := issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: clientCN, Organization: []string{clientGroup}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return err
	}

	// Keys last: a crash midway leaves an incomplete set that the check
	// above reports, rather than a set that looks complete.
	for _, w := range []struct {
		name string
		der  []byte
		key  crypto.Signer
	}{
		{caCertFile, caDER, nil}, {servingCert, srvDER, nil}, {clientCertFile, cliDER, nil},
		{caKeyFile, nil, caKey}, {servingKey, nil, srvKey}, {clientKeyFile, nil, cliKey},
	} {
		var block *pem.Block
		if w.key != nil {
			// PKCS#8 ("PRIVATE KEY") is the one key format every client
			// library (kube-rs with rustls or openssl, client-go) reads.
			der, err := x509.MarshalPKCS8PrivateKey(w.key)
			if err != nil {
				return err
			}
			block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
		} else {
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

// clientTLS is what our own readiness probe uses: the same identity and CA
// that the kubeconfig hands out, so READY proves that path works end to end.
func clientTLS(dir string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, clientCertFile), filepath.Join(dir, clientKeyFile))
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
