// Command go-spiffe-client is a SPIFFE workload built only on go-spiffe v2 (the version pinned
// in go.mod). It reads its identity from a Workload API endpoint and prints what it got as
// JSON, or uses it for mutual TLS with another such workload.
//
//	go-spiffe-client fetch  -socket unix:///path -audience aud
//	go-spiffe-client server -socket unix:///path -listen 127.0.0.1:0 -authorize spiffe://td/client
//	go-spiffe-client client -socket unix:///path -connect 127.0.0.1:port -authorize spiffe://td/server
//
// fetch makes every Workload API call through workloadapi.Client and checks what it got with
// go-spiffe's own verifiers (x509svid.Verify against the X.509 bundles, jwtsvid.ParseAndValidate
// against the JWT bundles). server listens with tlsconfig.MTLSServerConfig over an X509Source,
// prints "listening <addr>", and answers each connection whose client it authorized with one
// JSON line naming the peer's SPIFFE ID; client dials with tlsconfig.MTLSClientConfig and
// prints the server's answer and the server's SPIFFE ID. A refused handshake makes client exit
// with status 1 and the error on stderr.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// X509SVID is one X509-SVID as the workload received it.
type X509SVID struct {
	SpiffeID string `json:"spiffe_id"`
	Hint     string `json:"hint"`
	ChainPEM string `json:"chain_pem"`
	// KeyPEM is the private key, PKCS#8.
	KeyPEM string `json:"key_pem"`
	// VerifiedID is what x509svid.Verify returned for the chain against the X.509 bundles;
	// VerifyError is its error.
	VerifiedID  string `json:"verified_id,omitempty"`
	VerifyError string `json:"verify_error,omitempty"`
}

// X509Bundle is one trust domain's X.509 authorities.
type X509Bundle struct {
	TrustDomain string `json:"trust_domain"`
	PEM         string `json:"pem"`
}

// JWTSVID is one JWT-SVID and what validating it said.
type JWTSVID struct {
	SpiffeID string   `json:"spiffe_id"`
	Hint     string   `json:"hint"`
	Token    string   `json:"token"`
	Audience []string `json:"audience"`
	Expiry   int64    `json:"expiry"`
	// LocalID is what jwtsvid.ParseAndValidate returned against the JWT bundles.
	LocalID    string `json:"local_id,omitempty"`
	LocalError string `json:"local_error,omitempty"`
	// WrongAudienceError is what jwtsvid.ParseAndValidate said for another audience.
	WrongAudienceError string `json:"wrong_audience_error,omitempty"`
	// ValidatedID and ValidatedClaims are what the Workload API's ValidateJWTSVID returned.
	ValidatedID     string         `json:"validated_id,omitempty"`
	ValidatedClaims map[string]any `json:"validated_claims,omitempty"`
	ValidateError   string         `json:"validate_error,omitempty"`
}

// JWTBundle is one trust domain's JWT authorities.
type JWTBundle struct {
	TrustDomain string          `json:"trust_domain"`
	KeyIDs      []string        `json:"key_ids"`
	JWKS        json.RawMessage `json:"jwks"`
}

// Fetched is what fetch prints.
type Fetched struct {
	X509SVIDs   []X509SVID   `json:"x509_svids"`
	X509Bundles []X509Bundle `json:"x509_bundles"`
	// ContextBundles are the bundles FetchX509Context delivered with the SVIDs.
	ContextBundles []X509Bundle `json:"context_bundles"`
	JWTSVIDs       []JWTSVID    `json:"jwt_svids"`
	JWTBundles     []JWTBundle  `json:"jwt_bundles"`
}

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: go-spiffe-client fetch|server|client [flags]"))
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	socket := flags.String("socket", "", "Workload API address (unix:///path); SPIFFE_ENDPOINT_SOCKET when empty")
	audience := flags.String("audience", "ward-interop", "fetch: the JWT-SVID audience")
	listen := flags.String("listen", "127.0.0.1:0", "server: address to listen on")
	connect := flags.String("connect", "", "client: address to dial")
	authorize := flags.String("authorize", "", "server, client: the peer SPIFFE ID to accept")
	timeout := flags.Duration("timeout", 30*time.Second, "deadline for the whole run (fetch, client)")
	if err := flags.Parse(os.Args[2:]); err != nil {
		fail(err)
	}
	var opts []workloadapi.ClientOption
	if *socket != "" {
		opts = append(opts, workloadapi.WithAddr(*socket))
	}
	switch os.Args[1] {
	case "fetch":
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		out, err := fetch(ctx, opts, *audience)
		if err != nil {
			fail(err)
		}
		print(out)
	case "server":
		if err := serve(opts, *listen, *authorize); err != nil {
			fail(err)
		}
	case "client":
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		out, err := dial(ctx, opts, *connect, *authorize)
		if err != nil {
			fail(err)
		}
		print(out)
	default:
		fail(fmt.Errorf("unknown command %q", os.Args[1]))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "go-spiffe-client:", err)
	os.Exit(1)
}

func print(v any) {
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(v); err != nil {
		fail(err)
	}
}

func fetch(ctx context.Context, opts []workloadapi.ClientOption, audience string) (*Fetched, error) {
	client, err := workloadapi.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	defer client.Close()

	x509Ctx, err := client.FetchX509Context(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509Context: %w", err)
	}
	x509Bundles, err := client.FetchX509Bundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchX509Bundles: %w", err)
	}
	out := &Fetched{
		X509Bundles:    x509BundleList(x509Bundles),
		ContextBundles: x509BundleList(x509Ctx.Bundles),
	}
	for _, svid := range x509Ctx.SVIDs {
		chain, key, err := svid.Marshal()
		if err != nil {
			return nil, fmt.Errorf("marshalling the X509-SVID %s: %w", svid.ID, err)
		}
		got := X509SVID{SpiffeID: svid.ID.String(), Hint: svid.Hint, ChainPEM: string(chain), KeyPEM: string(key)}
		if id, _, err := x509svid.Verify(svid.Certificates, x509Bundles); err != nil {
			got.VerifyError = err.Error()
		} else {
			got.VerifiedID = id.String()
		}
		out.X509SVIDs = append(out.X509SVIDs, got)
	}

	jwtBundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		return nil, fmt.Errorf("FetchJWTBundles: %w", err)
	}
	for _, bundle := range jwtBundles.Bundles() {
		jwks, err := bundle.Marshal()
		if err != nil {
			return nil, fmt.Errorf("marshalling the JWT bundle of %s: %w", bundle.TrustDomain(), err)
		}
		kids := make([]string, 0, len(bundle.JWTAuthorities()))
		for kid := range bundle.JWTAuthorities() {
			kids = append(kids, kid)
		}
		sort.Strings(kids)
		out.JWTBundles = append(out.JWTBundles, JWTBundle{
			TrustDomain: bundle.TrustDomain().String(), KeyIDs: kids, JWKS: jwks,
		})
	}
	sort.Slice(out.JWTBundles, func(i, j int) bool { return out.JWTBundles[i].TrustDomain < out.JWTBundles[j].TrustDomain })

	svids, err := client.FetchJWTSVIDs(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		return nil, fmt.Errorf("FetchJWTSVIDs: %w", err)
	}
	for _, svid := range svids {
		token := svid.Marshal()
		got := JWTSVID{
			SpiffeID: svid.ID.String(), Hint: svid.Hint, Token: token,
			Audience: svid.Audience, Expiry: svid.Expiry.Unix(),
		}
		if local, err := jwtsvid.ParseAndValidate(token, jwtBundles, []string{audience}); err != nil {
			got.LocalError = err.Error()
		} else {
			got.LocalID = local.ID.String()
		}
		if _, err := jwtsvid.ParseAndValidate(token, jwtBundles, []string{audience + "-other"}); err != nil {
			got.WrongAudienceError = err.Error()
		}
		if validated, err := client.ValidateJWTSVID(ctx, token, audience); err != nil {
			got.ValidateError = err.Error()
		} else {
			got.ValidatedID = validated.ID.String()
			got.ValidatedClaims = validated.Claims
		}
		out.JWTSVIDs = append(out.JWTSVIDs, got)
	}
	return out, nil
}

func x509BundleList(set *x509bundle.Set) []X509Bundle {
	var out []X509Bundle
	for _, bundle := range set.Bundles() {
		out = append(out, X509Bundle{TrustDomain: bundle.TrustDomain().String(), PEM: certsPEM(bundle.X509Authorities())})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TrustDomain < out[j].TrustDomain })
	return out
}

func certsPEM(certs []*x509.Certificate) string {
	var out []byte
	for _, cert := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return string(out)
}

// Served is the line server writes back to each client it accepted.
type Served struct {
	// PeerID is the client's SPIFFE ID, from its certificate.
	PeerID string `json:"peer_id"`
	// ServerID is the server's own SPIFFE ID.
	ServerID string `json:"server_id"`
	// Request is the line the client sent.
	Request string `json:"request"`
}

func source(ctx context.Context, opts []workloadapi.ClientOption) (*workloadapi.X509Source, error) {
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(opts...))
	if err != nil {
		return nil, fmt.Errorf("creating the X509Source: %w", err)
	}
	return src, nil
}

func serve(opts []workloadapi.ClientOption, listen, authorize string) error {
	peer, err := spiffeid.FromString(authorize)
	if err != nil {
		return fmt.Errorf("-authorize: %w", err)
	}
	ctx := context.Background()
	src, err := source(ctx, opts)
	if err != nil {
		return err
	}
	defer src.Close()
	listener, err := tls.Listen("tcp", listen, tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeID(peer)))
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", listener.Addr())
	for {
		conn, err := listener.Accept()
		if err != nil {
			return err
		}
		go answer(conn.(*tls.Conn), src)
	}
}

func answer(conn *tls.Conn, src *workloadapi.X509Source) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := conn.Handshake(); err != nil {
		fmt.Printf("handshake refused: %v\n", err)
		return
	}
	peer, err := x509svid.IDFromCert(conn.ConnectionState().PeerCertificates[0])
	if err != nil {
		fmt.Printf("peer without SPIFFE ID: %v\n", err)
		return
	}
	own, err := src.GetX509SVID()
	if err != nil {
		fmt.Printf("no own SVID: %v\n", err)
		return
	}
	request, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fmt.Printf("reading the request: %v\n", err)
		return
	}
	served := Served{PeerID: peer.String(), ServerID: own.ID.String(), Request: request[:len(request)-1]}
	line, _ := json.Marshal(served)
	fmt.Printf("served %s\n", line)
	_, _ = conn.Write(append(line, '\n'))
}

// Dialed is what client prints.
type Dialed struct {
	// OwnID is the client's SPIFFE ID.
	OwnID string `json:"own_id"`
	// PeerID is the server's SPIFFE ID, from its certificate.
	PeerID string `json:"peer_id"`
	// Reply is the server's answer.
	Reply Served `json:"reply"`
}

func dial(ctx context.Context, opts []workloadapi.ClientOption, connect, authorize string) (*Dialed, error) {
	peer, err := spiffeid.FromString(authorize)
	if err != nil {
		return nil, fmt.Errorf("-authorize: %w", err)
	}
	src, err := source(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	own, err := src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	dialer := tls.Dialer{Config: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(peer))}
	raw, err := dialer.DialContext(ctx, "tcp", connect)
	if err != nil {
		return nil, fmt.Errorf("mTLS handshake with %s: %w", connect, err)
	}
	conn := raw.(*tls.Conn)
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	server, err := x509svid.IDFromCert(conn.ConnectionState().PeerCertificates[0])
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(conn, "hello from %s\n", own.ID); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("reading the reply: %w", err)
	}
	out := &Dialed{OwnID: own.ID.String(), PeerID: server.String()}
	if err := json.Unmarshal(line, &out.Reply); err != nil {
		return nil, fmt.Errorf("decoding the reply %q: %w", line, err)
	}
	return out, nil
}
