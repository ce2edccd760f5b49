//! Selector parsing: never panics; accepted selectors print back to the same text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_core::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(selector) = Selector::parse(s) {
        assert_eq!(selector.to_string(), s);
        assert_eq!(Selector::parse(&selector.to_string()), Ok(selector));
    }
});
