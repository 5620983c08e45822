//! The types both sides of archfarm speak. No I/O lives here.
//!
//! * [`platform`]: parsing and normalising `os/arch[/variant]`; the single home of those rules.
//! * [`reference`]: image references (`REGISTRY/REPOSITORY[:TAG][@DIGEST]`) and content digests.
//! * [`secret`]: tokens that never show in logs; [`build_secret`]: `--secret` values for `RUN
//!   --mount=type=secret` steps.
//! * [`api`]: the JSON bodies of the coordinator's HTTP API, for CI clients and agents alike.
//! * [`events`]: the Server-Sent Events of job and farm streams.
//! * [`tokens`]: join and API tokens, their scopes and prefixes.
//! * [`limits`]: caps on a build context archive, the same on the coordinator and agents.
//! * [`cache`]: registry build caches (`--cache-to/--cache-from`), kept apart per platform.
//! * [`image_meta`]: labels and annotations on a job's images (`--label`, `--annotation`).
//! * [`foreign_binary`]: paths a job allows to hold ELF files for another architecture.
//! * [`smoke_test`]: a command run in each platform's built image before it is pushed.
//! * [`network`]: the network of a build's `RUN` steps, as agents allow it and jobs ask for it.
//! * [`registry_auth`]: registry credentials from Docker's `config.json`; [`redact`]: hiding secret
//!   values in log lines.
//! * [`repository_pattern`]: where a job may push (token patterns, allowed registries);
//!   [`registry_text`]: what of a registry's answer may be shown; [`registry_hosts`]: where a
//!   registry may send requests on to; [`pull`]: how agents pull base images (mirrors, plain-HTTP
//!   registries, pull credentials).

pub mod api;
pub mod build_secret;
pub mod cache;
pub mod duration;
pub mod events;
pub mod foreign_binary;
pub mod image_meta;
pub mod limits;
pub mod network;
pub mod platform;
pub mod provenance;
pub mod pull;
pub mod redact;
pub mod reference;
pub mod registry_auth;
pub mod registry_hosts;
pub mod registry_text;
pub mod repository_pattern;
pub mod retention;
pub mod secret;
pub mod smoke_test;
pub mod tokens;

pub use build_secret::BuildSecret;
pub use cache::{CacheMode, CacheRef};
pub use network::Network;
pub use platform::{Platform, PlatformError};
pub use reference::{Digest, ImageRef, ReferenceError};
pub use registry_auth::{RegistryAuths, RegistryCredential};
pub use secret::Secret;
