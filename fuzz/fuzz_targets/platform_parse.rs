//! `Platform::parse` on arbitrary UTF-8: it never panics, normalisation is idempotent (a parsed
//! platform's `Display` parses back to the same value, already in canonical form), serde agrees with
//! `parse`, and the kernel machine name of every accepted platform maps back to its architecture.
#![no_main]

use archfarm_protocol::platform::{parse_list, Platform, ACCEPTED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match Platform::parse(input) {
        Ok(p) => {
            let shown = p.to_string();
            let again = Platform::parse(&shown)
                .unwrap_or_else(|e| panic!("{input:?} parsed to {shown:?}, which fails: {e}"));
            assert_eq!(again, p, "{input:?} -> {shown:?} re-parses differently");
            assert_eq!(
                again.to_string(),
                shown,
                "{input:?}: Display is not canonical"
            );
            assert_eq!(p.os(), "linux", "{input:?}");
            // Canonical strings only ever use the OCI names (no aliases, no upper case).
            assert!(
                ACCEPTED.contains(&shown.as_str())
                    || shown.starts_with("linux/amd64/v")
                    || shown.starts_with("linux/arm/v"),
                "{input:?} normalised to {shown:?}, which is no canonical platform"
            );
            let machine = p.machine();
            let back = Platform::from_machine(machine)
                .unwrap_or_else(|| panic!("{shown}: machine name {machine:?} does not parse"));
            assert_eq!(
                back.architecture(),
                p.architecture(),
                "{shown} via {machine}"
            );
            let json = serde_json::to_string(&p).expect("serialise");
            let parsed: Platform = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(parsed, p, "{input:?}: serde round trip via {json}");
        }
        Err(e) => {
            assert_eq!(e.input, input);
            assert!(!e.reason.is_empty(), "{input:?}: empty reason");
            assert!(
                e.to_string().contains("linux/ppc64le"),
                "{input:?}: the message does not list what is accepted: {e}"
            );
        }
    }
    // A list parses exactly when each of its items does, and keeps them normalised and unique.
    if let Ok(list) = parse_list(input) {
        for (i, p) in list.iter().enumerate() {
            assert!(!list[..i].contains(p), "{input:?}: duplicate {p}");
            assert_eq!(Platform::parse(&p.to_string()).as_ref(), Ok(p));
        }
    }
});
