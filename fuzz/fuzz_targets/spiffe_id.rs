//! SPIFFE ID and trust domain parsing: never panics; accepted IDs keep their text and split
//! into trust domain and path that rebuild the same ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_core::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s);
        let td = TrustDomain::new(id.trust_domain_name()).expect("trust domain of a valid id");
        let rebuilt = SpiffeId::from_parts(&td, id.path()).expect("path of a valid id");
        assert_eq!(rebuilt, id);
    }
    if let Ok(td) = TrustDomain::parse(s) {
        assert_eq!(TrustDomain::new(td.as_str()).as_ref(), Ok(&td));
    }
});
