//! SPIFFE bundle and plain JWKS decoding: never panics; an accepted bundle encodes and
//! decodes back to itself.
//!
//! First input byte even: the rest is the document. Odd: the rest edits the fixture bundle's
//! SPIFFE JSON (see `fixture::mutate`).
#![no_main]

#[path = "fixture.rs"]
mod fixture;

use libfuzzer_sys::fuzz_target;
use ward_core::bundle::json::jwt_authorities_from_jwks;
use ward_core::{Bundle, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 1 {
        let json = fixture::fixture().bundle.to_spiffe_json().expect("fixture encodes");
        fixture::mutate(json.as_bytes(), rest)
    } else {
        rest.to_vec()
    };
    let td = TrustDomain::new("example.org").expect("valid trust domain");
    if let Ok(bundle) = Bundle::from_spiffe_json(td.clone(), &bytes) {
        let json = bundle.to_spiffe_json().expect("a decoded bundle encodes");
        let again = Bundle::from_spiffe_json(td, json.as_bytes()).expect("encoded bundle decodes");
        assert_eq!(again, bundle);
    }
    if let Ok(authorities) = jwt_authorities_from_jwks(&bytes) {
        let mut bundle = Bundle::new(TrustDomain::new("example.org").expect("valid"));
        bundle.jwt_authorities = authorities;
        let jwks = bundle.to_jwks_json().expect("decoded authorities encode");
        let again = jwt_authorities_from_jwks(jwks.as_bytes()).expect("encoded jwks decodes");
        assert_eq!(again, bundle.jwt_authorities);
    }
});
