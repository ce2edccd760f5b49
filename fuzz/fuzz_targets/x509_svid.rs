//! X509-SVID chain verification: never panics on any chain and authority set, and never
//! returns an ID other than the one a mutated valid chain was issued for.
//!
//! First input byte even, raw mode: the next byte says how many of the following pieces are
//! chain certificates (the rest are authorities); pieces are a two-byte big-endian length and
//! that many bytes. First byte odd, mutation mode: the fixture's leaf, intermediate and root
//! are edited by the rest of the input (see `fixture::mutate`), the next byte choosing which.
#![no_main]

#[path = "fixture.rs"]
mod fixture;

use libfuzzer_sys::fuzz_target;
use ward_core::x509svid;

fn raw(data: &[u8]) {
    let Some((&chain_len, mut rest)) = data.split_first() else { return };
    let mut pieces = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let take = len.min(body.len());
        pieces.push(&body[..take]);
        rest = &body[take..];
    }
    let split = usize::from(chain_len).min(pieces.len());
    let (chain, authorities) = pieces.split_at(split);
    if let Ok(id) = x509svid::verify(chain, authorities, fixture::now()) {
        assert!(!id.trust_domain_name().is_empty());
    }
}

fn mutated(data: &[u8]) {
    let Some((&which, edits)) = data.split_first() else { return };
    let f = fixture::fixture();
    let (mut leaf, mut int, mut root) = (f.leaf.clone(), f.intermediate.clone(), f.root.clone());
    match which % 3 {
        0 => leaf = fixture::mutate(&leaf, edits),
        1 => int = fixture::mutate(&int, edits),
        _ => root = fixture::mutate(&root, edits),
    }
    if let Ok(id) = x509svid::verify(&[leaf, int], &[root], fixture::now()) {
        assert_eq!(id.as_str(), fixture::ID);
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode % 2 == 1 => mutated(rest),
        Some((_, rest)) => raw(rest),
        None => {}
    }
});
