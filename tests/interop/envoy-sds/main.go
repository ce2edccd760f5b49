// Command envoy-sds-client asks an SDS v3 server on a Unix socket for secrets the way Envoy
// does, using go-control-plane's generated types, and prints what it was served as JSON.
//
// Each -names flag is one request on a single StreamSecrets stream: the first opens the
// stream, each later one acknowledges the previous response (its version and nonce) and
// asks for a new set of names. Every response's resources are decoded into
// envoy.extensions.transport_sockets.tls.v3.Secret and checked with the message's
// generated validation rules (ValidateAll), as Envoy's own config validation would.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

const secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

type nameSets [][]string

func (n *nameSets) String() string { return fmt.Sprint(*n) }

func (n *nameSets) Set(v string) error {
	var names []string
	for _, name := range strings.Split(v, ",") {
		if name != "" {
			names = append(names, name)
		}
	}
	*n = append(*n, names)
	return nil
}

// TrustDomain is one trust domain of a SPIFFE validator.
type TrustDomain struct {
	Name      string `json:"name"`
	BundlePEM string `json:"bundle_pem"`
}

// Secret is one decoded resource.
type Secret struct {
	Name            string        `json:"name"`
	Kind            string        `json:"kind"`
	CertChainPEM    string        `json:"certificate_chain_pem,omitempty"`
	PrivateKeyPEM   string        `json:"private_key_pem,omitempty"`
	TrustedCAPEM    string        `json:"trusted_ca_pem,omitempty"`
	ValidatorName   string        `json:"validator_name,omitempty"`
	ValidatorTDs    []TrustDomain `json:"trust_domains,omitempty"`
	ValidationError string        `json:"validation_error,omitempty"`
}

// Response is one DiscoveryResponse, decoded.
type Response struct {
	VersionInfo string   `json:"version_info"`
	Nonce       string   `json:"nonce"`
	TypeURL     string   `json:"type_url"`
	Secrets     []Secret `json:"secrets"`
}

// Output is what the program prints.
type Output struct {
	Responses []Response `json:"responses"`
	// ErrorCode and ErrorMessage are the gRPC status that ended the stream early, if any.
	ErrorCode    string `json:"error_code,omitempty"`
	ErrorMessage string `json:"error_message,omitempty"`
}

func main() {
	socket := flag.String("socket", "", "path of the SDS Unix socket")
	nodeID := flag.String("node-id", "envoy-sds-client", "the Node id sent with the first request")
	fetch := flag.Bool("fetch", false, "use FetchSecrets (one request per -names) instead of a stream")
	envoyVersion := flag.String("envoy-version", "", "MAJOR.MINOR.PATCH sent as the Node's user_agent_build_version")
	disableValidator := flag.String("disable-spiffe-cert-validation", "", "Node metadata disable_spiffe_cert_validation (a string)")
	var sets nameSets
	flag.Var(&sets, "names", "comma-separated resource names of one request (repeatable)")
	flag.Parse()
	if *socket == "" || len(sets) == 0 {
		fmt.Fprintln(os.Stderr, "usage: envoy-sds-client -socket PATH -names A,B [-names C]...")
		os.Exit(2)
	}

	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	client := secretv3.NewSecretDiscoveryServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	node := &corev3.Node{Id: *nodeID, Cluster: "interop"}
	if *envoyVersion != "" {
		var v typev3.SemanticVersion
		if _, err := fmt.Sscanf(*envoyVersion, "%d.%d.%d", &v.MajorNumber, &v.MinorNumber, &v.Patch); err != nil {
			fail("-envoy-version %q: %v", *envoyVersion, err)
		}
		node.UserAgentName = "envoy"
		node.UserAgentVersionType = &corev3.Node_UserAgentBuildVersion{
			UserAgentBuildVersion: &corev3.BuildVersion{Version: &v},
		}
	}
	if *disableValidator != "" {
		node.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{
			"disable_spiffe_cert_validation": structpb.NewStringValue(*disableValidator),
		}}
	}

	var out Output
	if *fetch {
		for _, names := range sets {
			resp, err := client.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{
				Node: node, ResourceNames: names, TypeUrl: secretTypeURL,
			})
			if err != nil {
				out.setError(err)
				break
			}
			out.Responses = append(out.Responses, decode(resp))
		}
		print(out)
		return
	}

	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		fail("open stream: %v", err)
	}
	var last *discoveryv3.DiscoveryResponse
	for i, names := range sets {
		req := &discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: secretTypeURL}
		if i == 0 {
			req.Node = node
		} else {
			req.VersionInfo = last.VersionInfo
			req.ResponseNonce = last.Nonce
		}
		if err := stream.Send(req); err != nil {
			fail("send: %v", err)
		}
		resp, err := stream.Recv()
		if err != nil {
			out.setError(err)
			break
		}
		last = resp
		out.Responses = append(out.Responses, decode(resp))
	}
	_ = stream.CloseSend()
	print(out)
}

func (o *Output) setError(err error) {
	st := status.Convert(err)
	o.ErrorCode = st.Code().String()
	o.ErrorMessage = st.Message()
}

func decode(resp *discoveryv3.DiscoveryResponse) Response {
	out := Response{VersionInfo: resp.VersionInfo, Nonce: resp.Nonce, TypeURL: resp.TypeUrl, Secrets: []Secret{}}
	for _, res := range resp.Resources {
		if res.TypeUrl != secretTypeURL {
			fail("resource type %q", res.TypeUrl)
		}
		secret := new(tlsv3.Secret)
		if err := res.UnmarshalTo(secret); err != nil {
			fail("decode secret: %v", err)
		}
		s := Secret{Name: secret.Name}
		if err := secret.ValidateAll(); err != nil {
			s.ValidationError = err.Error()
		}
		switch t := secret.Type.(type) {
		case *tlsv3.Secret_TlsCertificate:
			s.Kind = "tls_certificate"
			s.CertChainPEM = string(t.TlsCertificate.GetCertificateChain().GetInlineBytes())
			s.PrivateKeyPEM = string(t.TlsCertificate.GetPrivateKey().GetInlineBytes())
		case *tlsv3.Secret_ValidationContext:
			s.Kind = "validation_context"
			ctx := t.ValidationContext
			s.TrustedCAPEM = string(ctx.GetTrustedCa().GetInlineBytes())
			if custom := ctx.GetCustomValidatorConfig(); custom != nil {
				s.ValidatorName = custom.Name
				config := new(tlsv3.SPIFFECertValidatorConfig)
				if err := custom.TypedConfig.UnmarshalTo(config); err != nil {
					fail("decode SPIFFE validator config: %v", err)
				}
				if err := config.ValidateAll(); err != nil && s.ValidationError == "" {
					s.ValidationError = err.Error()
				}
				for _, td := range config.TrustDomains {
					s.ValidatorTDs = append(s.ValidatorTDs, TrustDomain{
						Name: td.Name, BundlePEM: string(td.GetTrustBundle().GetInlineBytes()),
					})
				}
			}
		default:
			s.Kind = fmt.Sprintf("%T", t)
		}
		out.Secrets = append(out.Secrets, s)
	}
	return out
}

func print(out Output) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fail("encode: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "envoy-sds-client: "+format+"\n", args...)
	os.Exit(1)
}
