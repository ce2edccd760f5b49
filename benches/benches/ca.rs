#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
//! CA hot paths against raw aws-lc-rs baselines.
//!
//! - `ca/x509_svid_from_csr`: CSR DER + entry → leaf DER (CSR signature check included)
//!   vs `ca/p256_sign_verify_baseline`: one raw P-256 verify + one raw P-256 sign.
//! - `ca/jwt_svid_sign`: one JWT-SVID vs `ca/p256_sign_baseline`: one raw P-256 sign.

use std::hint::black_box;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use criterion::{Criterion, criterion_group, criterion_main};
use ward_benches::CaFixture;
use ward_ca::SvidParams;

fn ca(c: &mut Criterion) {
    let f = CaFixture::new();
    let params = SvidParams {
        spiffe_id: &f.spiffe_id,
        dns_names: &f.dns_names,
        ttl: Duration::from_secs(3600),
    };
    let mut g = c.benchmark_group("ca");

    g.bench_function("x509_svid_from_csr", |b| {
        b.iter(|| f.ca.sign_x509_svid_from_csr(black_box(&f.csr), &params, f.now).unwrap())
    });

    // The same work done raw: verify a P-256 signature over a CSR-sized message, then sign a
    // leaf-sized message.
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        f.workload_key.pkcs8_der(),
    )
    .unwrap();
    let point = key.public_key().as_ref().to_vec();
    let verify_msg = vec![0x5au8; 200];
    let verify_sig = key.sign(&rng, &verify_msg).unwrap();
    let sign_msg = vec![0xa5u8; 450];
    let verifier = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &point);
    g.bench_function("p256_sign_verify_baseline", |b| {
        b.iter(|| {
            verifier.verify(black_box(&verify_msg), verify_sig.as_ref()).unwrap();
            key.sign(&rng, black_box(&sign_msg)).unwrap()
        })
    });

    let audiences = vec!["spiffe://example.org/backend".to_owned()];
    g.bench_function("jwt_svid_sign", |b| {
        b.iter(|| {
            f.jwt
                .sign(black_box(&f.spiffe_id), &audiences, f.now, Duration::from_secs(300))
                .unwrap()
        })
    });

    let jws_key = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        f.workload_key.pkcs8_der(),
    )
    .unwrap();
    let jws_msg = vec![0x61u8; 250];
    g.bench_function("p256_sign_baseline", |b| {
        b.iter(|| jws_key.sign(&rng, black_box(&jws_msg)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, ca);
criterion_main!(benches);
