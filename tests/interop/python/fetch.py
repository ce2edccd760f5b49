"""A SPIFFE workload built only on py-spiffe (the `spiffe` package, pinned in requirements.txt).

Fetches its X509-SVIDs, X.509 bundles, JWT-SVIDs for one audience and JWT bundles from a
Workload API endpoint, validates each JWT-SVID with py-spiffe (locally against the JWT bundle
of its trust domain, and through the Workload API's ValidateJWTSVID), and prints everything as
one JSON object on stdout.

    python fetch.py unix:///path/to/api.sock [audience]
"""

import json
import sys

from cryptography.hazmat.primitives import serialization

from spiffe import JwtSvid, WorkloadApiClient


def pem_chain(certs):
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def x509_bundles(bundle_set):
    out = []
    for bundle in bundle_set.bundles:
        # A set in py-spiffe: order the authorities by their DER so output is stable.
        certs = sorted(bundle.x509_authorities, key=lambda c: c.public_bytes(serialization.Encoding.DER))
        out.append({"trust_domain": str(bundle.trust_domain), "pem": pem_chain(certs)})
    return sorted(out, key=lambda b: b["trust_domain"])


def error_text(err):
    return "{}: {}".format(type(err).__name__, err)


def main():
    socket = sys.argv[1]
    audience = sys.argv[2] if len(sys.argv) > 2 else "ward-interop"
    client = WorkloadApiClient(socket_path=socket, default_timeout=30)
    try:
        context = client.fetch_x509_context()
        out = {
            "x509_svids": [],
            "x509_bundles": x509_bundles(client.fetch_x509_bundles()),
            "context_bundles": x509_bundles(context.x509_bundle_set),
            "jwt_svids": [],
            "jwt_bundles": [],
        }
        for svid in context.x509_svids:
            key = svid.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            out["x509_svids"].append(
                {"spiffe_id": str(svid.spiffe_id), "chain_pem": pem_chain(svid.cert_chain), "key_pem": key.decode()}
            )

        jwt_bundles = client.fetch_jwt_bundles()
        for bundle in jwt_bundles.bundles:
            out["jwt_bundles"].append(
                {"trust_domain": str(bundle.trust_domain), "key_ids": sorted(bundle.jwt_authorities.keys())}
            )
        out["jwt_bundles"].sort(key=lambda b: b["trust_domain"])

        for svid in client.fetch_jwt_svids(audience={audience}):
            got = {
                "spiffe_id": str(svid.spiffe_id),
                "token": svid.token,
                "audience": sorted(svid.audience),
                "expiry": svid.expiry,
            }
            bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
            try:
                got["local_id"] = str(JwtSvid.parse_and_validate(svid.token, bundle, {audience}).spiffe_id)
            except Exception as err:  # reported, and checked by the caller
                got["local_error"] = error_text(err)
            try:
                JwtSvid.parse_and_validate(svid.token, bundle, {audience + "-other"})
            except Exception as err:
                got["wrong_audience_error"] = error_text(err)
            try:
                got["validated_id"] = str(client.validate_jwt_svid(svid.token, audience).spiffe_id)
            except Exception as err:
                got["validate_error"] = error_text(err)
            out["jwt_svids"].append(got)
    finally:
        client.close()
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
