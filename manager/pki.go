package manager

// The manager's PKI for mutual TLS between the manager and its clients
// (agents, the CLI): a CA of its own in DATA-DIR/pki, a server certificate
// it issues itself, and client certificates `vmfex manager issue-cert`
// issues. With TLS the API may listen beyond loopback: both ends prove who
// they are and the bearer token no longer crosses the network in clear.

import (
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

// PKI file names under a data directory.
const (
	PKIDir        = "pki"
	CACertFile    = "ca.crt"
	caKeyFile     = "ca.key"
	ServerCert    = "server.crt"
	serverKeyFile = "server.key"
)

// certValidity is how long issued certificates are valid.
const certValidity = 5 * 365 * 24 * time.Hour

// EnsurePKI creates, if missing, the CA and the server certificate (valid
// for hosts: IP addresses and DNS names) in dataDir/pki, and returns the
// server's TLS configuration: TLS 1.3, client certificates required and
// verified against the CA.
func EnsurePKI(dataDir string, hosts []string) (*tls.Config, error) {
	dir := filepath.Join(dataDir, PKIDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caCert, caKey, err := loadOrCreateCA(dir)
	if err != nil {
		return nil, err
	}
	certPath, keyPath := filepath.Join(dir, ServerCert), filepath.Join(dir, serverKeyFile)
	if _, err := os.Stat(certPath); errors.Is(err, os.ErrNotExist) {
		if err := issue(caCert, caKey, "vmfex manager", hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, certPath, keyPath); err != nil {
			return nil, err
		}
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// IssueClientCert issues a client certificate for name with the CA in
// dataDir/pki, writing outDir/NAME.crt and outDir/NAME.key (mode 0600).
func IssueClientCert(dataDir, name, outDir string) (certPath, keyPath string, err error) {
	return IssueCert(dataDir, name, outDir, nil)
}

// IssueCert is IssueClientCert for a certificate that also serves TLS for
// hosts (IP addresses and DNS names) when any are given: an FI agent's
// control API.
func IssueCert(dataDir, name, outDir string, hosts []string) (certPath, keyPath string, err error) {
	if !ValidName(name) {
		return "", "", fmt.Errorf("client name %q: use letters, digits, '.', '_' or '-'", name)
	}
	caCert, caKey, err := loadCA(filepath.Join(dataDir, PKIDir))
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(outDir, 0o700); err != nil {
		return "", "", err
	}
	certPath, keyPath = filepath.Join(outDir, name+".crt"), filepath.Join(outDir, name+".key")
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if len(hosts) > 0 {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	return certPath, keyPath, issue(caCert, caKey, name, hosts, usage, certPath, keyPath)
}

// ServerTLS returns the configuration of a server (an FI agent's control
// API) that presents the certificate in certFile/keyFile and admits only
// clients with a certificate the CA in caFile issued.
func ServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}, nil
}

func loadOrCreateCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		return loadCA(dir)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "vmfex CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(filepath.Join(dir, caKeyFile), key); err != nil {
		return nil, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, CACertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CACertFile), filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("the manager's CA in %s: %w (start vmfex manager --tls once to create it)", dir, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("the CA key is not an ECDSA key")
	}
	return cert, key, nil
}

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, hosts []string, usage []x509.ExtKeyUsage, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writePEM(keyPath, key); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writePEM(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// serial returns a random certificate serial number (nil only if the
// system's randomness failed, which CreateCertificate then reports).
func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
