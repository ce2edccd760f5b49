//! JWT-SVID parsing and validation: never panics, never accepts a random token, and accepts
//! a mutated valid token only with the original subject and claims.
//!
//! First input byte even: the rest is the token. Odd: the rest edits the fixture's token
//! (see `fixture::mutate`).
#![no_main]

#[path = "fixture.rs"]
mod fixture;

use libfuzzer_sys::fuzz_target;
use ward_core::{UnverifiedJwtSvid, jwtsvid};

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let f = fixture::fixture();
    let bytes =
        if mode % 2 == 1 { fixture::mutate(f.token.as_bytes(), rest) } else { rest.to_vec() };
    let Ok(token) = std::str::from_utf8(&bytes) else { return };
    if let Ok(unverified) = UnverifiedJwtSvid::parse(token) {
        assert!(!unverified.key_id().is_empty());
    }
    if let Ok(svid) = jwtsvid::validate(token, &f.bundle, &[fixture::AUDIENCE], fixture::now()) {
        let original = jwtsvid::validate(&f.token, &f.bundle, &[fixture::AUDIENCE], fixture::now())
            .expect("fixture token is valid");
        assert_eq!(svid, original);
    }
});
