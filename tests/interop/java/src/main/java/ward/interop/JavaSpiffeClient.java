package ward.interop;

import com.google.gson.Gson;
import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import io.spiffe.bundle.jwtbundle.JwtBundle;
import io.spiffe.bundle.jwtbundle.JwtBundleSet;
import io.spiffe.bundle.x509bundle.X509Bundle;
import io.spiffe.bundle.x509bundle.X509BundleSet;
import io.spiffe.spiffeid.TrustDomain;
import io.spiffe.svid.jwtsvid.JwtSvid;
import io.spiffe.svid.x509svid.X509Svid;
import io.spiffe.svid.x509svid.X509SvidValidator;
import io.spiffe.workloadapi.DefaultJwtSource;
import io.spiffe.workloadapi.DefaultWorkloadApiClient;
import io.spiffe.workloadapi.DefaultX509Source;
import io.spiffe.workloadapi.JwtSource;
import io.spiffe.workloadapi.JwtSourceOptions;
import io.spiffe.workloadapi.WorkloadApiClient;
import io.spiffe.workloadapi.X509Context;
import io.spiffe.workloadapi.X509Source;
import java.security.cert.X509Certificate;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A SPIFFE workload built only on java-spiffe (io.spiffe:java-spiffe-core, pinned in pom.xml).
 *
 * <pre>
 * java -jar java-spiffe-client.jar fetch  unix:///path/to/api.sock audience
 * java -jar java-spiffe-client.jar source unix:///path/to/api.sock audience
 * </pre>
 *
 * <p>{@code fetch} makes every Workload API call through {@code WorkloadApiClient}
 * (FetchX509SVID, FetchX509Bundles, FetchJWTSVID, FetchJWTBundles, ValidateJWTSVID), checks each
 * chain with {@code X509SvidValidator} and each JWT-SVID with {@code JwtSvid.parseAndValidate}
 * against the JWT bundles, and prints one JSON object. A failed call prints the exception and
 * its causes on stderr and exits 1.
 *
 * <p>{@code source} holds an {@code X509Source} and a {@code JwtSource}: it prints one
 * {@code jwt-svid <json>} line (the JWT-SVID the JwtSource fetched for the audience, validated
 * against the JwtSource's bundles and through ValidateJWTSVID), then one {@code x509-svid <json>}
 * line for the X509Source's SVID and another each time the source's SVID changes, until killed.
 */
public final class JavaSpiffeClient {
    private static final Gson GSON = new Gson();
    private static final Duration INIT_TIMEOUT = Duration.ofSeconds(30);

    private JavaSpiffeClient() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: fetch|source <unix:///socket> <audience>");
            System.exit(2);
        }
        try {
            switch (args[0]) {
                case "fetch" -> fetch(args[1], args[2]);
                case "source" -> source(args[1], args[2]);
                default -> {
                    System.err.println("unknown mode " + args[0]);
                    System.exit(2);
                }
            }
        } catch (Exception e) {
            System.err.println(describe(e));
            System.exit(1);
        }
        System.exit(0);
    }

    private static void fetch(String address, String audience) throws Exception {
        WorkloadApiClient client = DefaultWorkloadApiClient.newClient(
                DefaultWorkloadApiClient.ClientOptions.builder().spiffeSocketPath(address).build());
        try {
            X509Context context = client.fetchX509Context();
            JsonObject out = new JsonObject();
            JsonArray svids = new JsonArray();
            for (X509Svid svid : context.getX509Svids()) {
                JsonObject s = x509Svid(svid, context.getX509BundleSet());
                s.addProperty("key_pem", pem("PRIVATE KEY", svid.getPrivateKey().getEncoded()));
                svids.add(s);
            }
            out.add("x509_svids", svids);
            out.add("x509_bundles", x509Bundles(client.fetchX509Bundles()));
            out.add("context_bundles", x509Bundles(context.getX509BundleSet()));

            JwtBundleSet jwtBundles = client.fetchJwtBundles();
            JsonArray bundles = new JsonArray();
            List<JwtBundle> sorted = new ArrayList<>(jwtBundles.getBundles().values());
            sorted.sort(Comparator.comparing(b -> b.getTrustDomain().getName()));
            for (JwtBundle bundle : sorted) {
                JsonObject b = new JsonObject();
                b.addProperty("trust_domain", bundle.getTrustDomain().getName());
                JsonArray keyIds = new JsonArray();
                bundle.getJwtAuthorities().keySet().stream().sorted().forEach(keyIds::add);
                b.add("key_ids", keyIds);
                bundles.add(b);
            }
            out.add("jwt_bundles", bundles);

            JsonArray jwtSvids = new JsonArray();
            for (JwtSvid svid : client.fetchJwtSvids(audience)) {
                jwtSvids.add(jwtSvid(svid, audience, jwtBundles, client));
            }
            out.add("jwt_svids", jwtSvids);
            System.out.println(GSON.toJson(out));
        } finally {
            client.close();
        }
    }

    private static void source(String address, String audience) throws Exception {
        X509Source x509 = DefaultX509Source.newSource(DefaultX509Source.X509SourceOptions.builder()
                .spiffeSocketPath(address).initTimeout(INIT_TIMEOUT).build());
        JwtSource jwt = DefaultJwtSource.newSource(JwtSourceOptions.builder()
                .spiffeSocketPath(address).initTimeout(INIT_TIMEOUT).build());
        WorkloadApiClient client = DefaultWorkloadApiClient.newClient(
                DefaultWorkloadApiClient.ClientOptions.builder().spiffeSocketPath(address).build());
        JwtSvid svid = jwt.fetchJwtSvid(audience);
        System.out.println("jwt-svid " + GSON.toJson(jwtSvid(svid, audience, jwt, client)));
        System.out.flush();
        X509Certificate last = null;
        while (true) {
            X509Svid current = x509.getX509Svid();
            if (!current.getLeaf().equals(last)) {
                last = current.getLeaf();
                JsonObject s = x509Svid(current, x509);
                TrustDomain td = current.getSpiffeId().getTrustDomain();
                X509Bundle bundle = x509.getBundleForTrustDomain(td);
                s.addProperty("bundle_trust_domain", bundle.getTrustDomain().getName());
                s.addProperty("bundle_authorities", bundle.getX509Authorities().size());
                System.out.println("x509-svid " + GSON.toJson(s));
                System.out.flush();
            }
            Thread.sleep(50);
        }
    }

    /** An X509-SVID as the Rust test reads it, its chain checked by java-spiffe's verifier. */
    private static JsonObject x509Svid(
            X509Svid svid, io.spiffe.bundle.BundleSource<X509Bundle> bundles) throws Exception {
        JsonObject s = new JsonObject();
        s.addProperty("spiffe_id", svid.getSpiffeId().toString());
        StringBuilder chain = new StringBuilder();
        for (X509Certificate cert : svid.getChain()) {
            chain.append(pem("CERTIFICATE", cert.getEncoded()));
        }
        s.addProperty("chain_pem", chain.toString());
        s.addProperty("chain_length", svid.getChain().size());
        s.addProperty("serial", svid.getLeaf().getSerialNumber().toString(16));
        s.addProperty("not_after", svid.getLeaf().getNotAfter().getTime() / 1000);
        try {
            X509SvidValidator.verifyChain(svid.getChain(), bundles);
            s.addProperty("verified_id", svid.getSpiffeId().toString());
        } catch (Exception e) {
            s.addProperty("verify_error", describe(e));
        }
        return s;
    }

    /** A JWT-SVID, validated locally (for its audience and for another) and by the agent. */
    private static JsonObject jwtSvid(
            JwtSvid svid,
            String audience,
            io.spiffe.bundle.BundleSource<JwtBundle> bundles,
            WorkloadApiClient client) {
        JsonObject s = new JsonObject();
        s.addProperty("spiffe_id", svid.getSpiffeId().toString());
        s.addProperty("token", svid.getToken());
        JsonArray aud = new JsonArray();
        svid.getAudience().stream().sorted().forEach(aud::add);
        s.add("audience", aud);
        s.addProperty("expiry", svid.getExpiry().getTime() / 1000);
        try {
            JwtSvid local = JwtSvid.parseAndValidate(svid.getToken(), bundles, Set.of(audience));
            s.addProperty("local_id", local.getSpiffeId().toString());
        } catch (Exception e) {
            s.addProperty("local_error", describe(e));
        }
        try {
            JwtSvid.parseAndValidate(svid.getToken(), bundles, Set.of(audience + "-other"));
        } catch (Exception e) {
            s.addProperty("wrong_audience_error", describe(e));
        }
        try {
            s.addProperty("validated_id",
                    client.validateJwtSvid(svid.getToken(), audience).getSpiffeId().toString());
        } catch (Exception e) {
            s.addProperty("validate_error", describe(e));
        }
        return s;
    }

    private static JsonArray x509Bundles(X509BundleSet set) throws Exception {
        List<Map.Entry<TrustDomain, X509Bundle>> entries = new ArrayList<>(set.getBundles().entrySet());
        entries.sort(Comparator.comparing(e -> e.getKey().getName()));
        JsonArray out = new JsonArray();
        for (Map.Entry<TrustDomain, X509Bundle> e : entries) {
            // A set in java-spiffe: order the authorities by their DER so output is stable.
            List<byte[]> ders = new ArrayList<>();
            for (X509Certificate cert : e.getValue().getX509Authorities()) {
                ders.add(cert.getEncoded());
            }
            ders.sort(java.util.Arrays::compareUnsigned);
            StringBuilder pem = new StringBuilder();
            for (byte[] der : ders) {
                pem.append(pem("CERTIFICATE", der));
            }
            JsonObject b = new JsonObject();
            b.addProperty("trust_domain", e.getKey().getName());
            b.addProperty("pem", pem.toString());
            out.add(b);
        }
        return out;
    }

    private static String pem(String label, byte[] der) {
        String body = Base64.getMimeEncoder(64, "\n".getBytes()).encodeToString(der);
        return "-----BEGIN " + label + "-----\n" + body + "\n-----END " + label + "-----\n";
    }

    /** The exception and its causes, one per line: "Class: message". */
    private static String describe(Throwable e) {
        StringBuilder out = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (out.length() > 0) {
                out.append("\ncaused by ");
            }
            out.append(t.getClass().getName()).append(": ").append(t.getMessage());
        }
        return out.toString();
    }
}
