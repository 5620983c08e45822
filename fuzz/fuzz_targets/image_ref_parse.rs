//! `ImageRef::parse` and `Digest::parse` on arbitrary UTF-8: they never panic; an accepted reference's
//! `Display` (the fully qualified form, `docker.io/library/` filled in) parses back to the same value,
//! its registry is `host[:port]` as its field documents, and a digest is kept exactly as given.
#![no_main]

use archfarm_protocol::reference::{host_of, Digest, ImageRef, DEFAULT_REGISTRY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match ImageRef::parse(input) {
        Ok(r) => check_reference(input, &r),
        Err(e) => {
            assert_eq!(e.input, input);
            assert!(!e.reason.is_empty(), "{input:?}: empty reason");
        }
    }
    match Digest::parse(input) {
        Ok(d) => {
            assert_eq!(d.to_string(), input, "a digest is kept as given");
            assert_eq!(d.as_str(), input);
            assert_eq!(Digest::parse(d.as_str()).as_ref(), Ok(&d));
            let hex = d.hex();
            assert_eq!(hex.len(), 64, "{input:?}");
            let bytes: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
                .collect();
            assert_eq!(Digest::from_sha256_bytes(&bytes), d, "{input:?}");
            let json = serde_json::to_string(&d).expect("serialise");
            assert_eq!(
                serde_json::from_str::<Digest>(&json).ok().as_ref(),
                Some(&d)
            );
        }
        Err(e) => assert_eq!(e.input, input),
    }
});

fn check_reference(input: &str, r: &ImageRef) {
    let shown = r.to_string();
    let again = ImageRef::parse(&shown).unwrap_or_else(|e| {
        panic!("{input:?} parsed to {r:?}, shown as {shown:?}, which fails: {e}")
    });
    assert_eq!(&again, r, "{input:?} -> {shown:?} re-parses differently");
    assert_eq!(again.to_string(), shown, "{input:?}: Display is not stable");
    assert_eq!(r.name(), format!("{}/{}", r.registry, r.repository));
    assert!(
        shown.starts_with(&r.name()),
        "{input:?}: {shown:?} does not start with its name"
    );
    // No registry in the input means the default one.
    if r.registry == DEFAULT_REGISTRY && !input.starts_with(DEFAULT_REGISTRY) {
        assert!(
            input.contains('/') || r.repository.starts_with("library/"),
            "{input:?}: single component without library/: {r:?}"
        );
    }
    // `registry` is documented as "host with optional port": after the host, nothing or `:PORT`.
    let host = host_of(&r.registry);
    assert_eq!(r.host(), host);
    assert!(!host.is_empty(), "{input:?}: empty registry host in {r:?}");
    let rest = &r.registry[host.len()..];
    assert!(
        rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "{input:?}: registry {:?} is not host[:port] (host {host:?}, then {rest:?})",
        r.registry
    );
    if let Some(d) = &r.digest {
        assert!(shown.ends_with(&format!("@{d}")), "{shown:?}");
    }
    if let Some(t) = &r.tag {
        assert!(!t.is_empty() && t.len() <= 128, "{input:?}: tag {t:?}");
    }
}
