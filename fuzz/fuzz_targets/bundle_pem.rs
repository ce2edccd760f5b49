//! PEM certificate decoding: never panics; accepted certificates encode and decode back.
//!
//! First input byte even: the rest is the text. Odd: the rest edits the fixture bundle's PEM
//! (see `fixture::mutate`).
#![no_main]

#[path = "fixture.rs"]
mod fixture;

use libfuzzer_sys::fuzz_target;
use ward_core::bundle::pem::{decode_certificates, encode_certificates};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 1 {
        let f = fixture::fixture();
        let pem = encode_certificates(&[&f.root, &f.intermediate, &f.leaf]);
        fixture::mutate(pem.as_bytes(), rest)
    } else {
        rest.to_vec()
    };
    let Ok(s) = std::str::from_utf8(&bytes) else { return };
    if let Ok(certs) = decode_certificates(s) {
        let pem = encode_certificates(&certs);
        assert_eq!(decode_certificates(&pem).as_ref(), Ok(&certs));
    }
});
