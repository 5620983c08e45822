//! Registry credentials on the agent: its own `--registry-auth` file (used when a lease carries no
//! credential for its registry), its `--registry-ca-cert`, and the private auth file buildah reads
//! for the length of one build.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use archfarm_protocol::registry_auth::count_pem_certificates;
use archfarm_protocol::{RegistryAuths, RegistryCredential};
use oci_client::secrets::RegistryAuth;

/// File name of the CA certificate in the directory passed to `buildah --cert-dir`.
const CA_FILE: &str = "ca.crt";

/// What the agent was configured with for registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// The agent's own credentials (`--registry-auth`); a lease's credential wins over them.
    pub own: RegistryAuths,
    /// PEM bytes of `--registry-ca-cert`, for oci-client.
    pub ca_cert: Option<Vec<u8>>,
}

impl RegistryAccess {
    /// Reads `--registry-auth` and `--registry-ca-cert`. Errors name the file (and entry) and never
    /// quote a secret.
    pub fn load(auth_file: Option<&Path>, ca_file: Option<&Path>) -> Result<Self, String> {
        let own = match auth_file {
            None => RegistryAuths::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read --registry-auth file {}: {e}", path.display())
                })?;
                RegistryAuths::parse(&path.display().to_string(), &text)
                    .map_err(|e| e.to_string())?
            }
        };
        let ca_cert = match ca_file {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    format!(
                        "cannot read --registry-ca-cert file {}: {e}",
                        path.display()
                    )
                })?;
                count_pem_certificates(&String::from_utf8_lossy(&bytes)).map_err(|p| {
                    format!(
                        "--registry-ca-cert file {}: {p}; expected PEM CA certificates",
                        path.display()
                    )
                })?;
                Some(bytes)
            }
        };
        Ok(RegistryAccess { own, ca_cert })
    }

    /// The credential for a build: the lease's when it has one, else the agent's own for
    /// `registry`, else none (anonymous).
    pub fn resolve(
        &self,
        from_lease: Option<&RegistryCredential>,
        registry: &str,
    ) -> Option<RegistryCredential> {
        from_lease.or_else(|| self.own.get(registry)).cloned()
    }

    /// Writes the CA into `dir/ca.crt` for `buildah --cert-dir dir`; returns `dir`, or None when no
    /// CA was given.
    pub fn write_cert_dir(&self, dir: &Path) -> io::Result<Option<PathBuf>> {
        let Some(pem) = &self.ca_cert else {
            return Ok(None);
        };
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::write(dir.join(CA_FILE), pem)?;
        Ok(Some(dir.to_path_buf()))
    }
}

/// oci-client's form of a credential. Identity tokens (OAuth2 refresh tokens) are refused with a
/// message: oci-client cannot exchange them for an access token.
pub fn oci_auth(
    credential: Option<&RegistryCredential>,
    registry: &str,
) -> Result<RegistryAuth, String> {
    Ok(match credential {
        None => RegistryAuth::Anonymous,
        Some(RegistryCredential::Basic { username, password }) => {
            RegistryAuth::Basic(username.clone(), password.expose().to_string())
        }
        Some(RegistryCredential::RegistryToken(t)) => RegistryAuth::Bearer(t.expose().to_string()),
        Some(RegistryCredential::IdentityToken(_)) => {
            return Err(format!(
                "the credential for {registry} is an identity token, which the agent can give to \
                 buildah but cannot use to push; give a username and password (or access token)"
            ))
        }
    })
}

/// A containers `auth.json` holding one credential, in a directory of its own (mode 0700, the file
/// 0600), removed with everything in it when this guard is dropped: when the build ends, fails,
/// is cancelled or panics.
#[derive(Debug)]
pub struct PrivateAuthFile {
    dir: PathBuf,
    file: PathBuf,
}

impl PrivateAuthFile {
    /// Writes `credential` for `registry` to a new file under `parent`.
    pub fn create(
        parent: &Path,
        registry: &str,
        credential: &RegistryCredential,
    ) -> io::Result<Self> {
        Self::create_all(parent, &[(registry, credential)])
    }

    /// Writes each credential under its key (a registry, or a registry and repository; the
    /// first for a key wins) to a new file under `parent`.
    pub fn create_all(parent: &Path, entries: &[(&str, &RegistryCredential)]) -> io::Result<Self> {
        let dir = parent.join(format!("auth-{}", uuid::Uuid::new_v4().simple()));
        // Not recursive: the directory must be new, so no one else can have opened it.
        DirBuilder::new().mode(0o700).create(&dir)?;
        let guard = PrivateAuthFile {
            file: dir.join("auth.json"),
            dir,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&guard.file)?;
        f.write_all(
            archfarm_protocol::registry_auth::auth_file_json(entries)
                .expose()
                .as_bytes(),
        )?;
        f.sync_all()?;
        Ok(guard)
    }

    /// The file, for `buildah --authfile`.
    pub fn path(&self) -> &Path {
        &self.file
    }
}

impl Drop for PrivateAuthFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a registry auth file");
            }
        }
    }
}

/// Fetches the build's registry credential again right before its push. A token the coordinator
/// scoped to the build's repository lives as long as its registry says (Docker Hub's five
/// minutes), so the one in the lease may have expired by the time a long build pushes.
#[derive(Clone)]
pub struct CredentialRefresh(
    std::sync::Arc<
        dyn Fn() -> crate::backend::BoxFuture<'static, Option<RegistryCredential>> + Send + Sync,
    >,
);

impl CredentialRefresh {
    /// Wraps `fetch`, which answers None when no fresh credential could be had.
    pub fn new(
        fetch: impl Fn() -> crate::backend::BoxFuture<'static, Option<RegistryCredential>>
            + Send
            + Sync
            + 'static,
    ) -> Self {
        CredentialRefresh(std::sync::Arc::new(fetch))
    }

    /// The fresh credential, or `fallback` (the lease's) when there is none.
    pub async fn or(&self, fallback: Option<&RegistryCredential>) -> Option<RegistryCredential> {
        match (self.0)().await {
            Some(fresh) => Some(fresh),
            None => fallback.cloned(),
        }
    }
}

impl std::fmt::Debug for CredentialRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialRefresh")
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use archfarm_protocol::Secret;

    fn basic() -> RegistryCredential {
        RegistryCredential::Basic {
            username: "ci".into(),
            password: Secret::new("hunter2"),
        }
    }

    #[test]
    fn auth_file_is_private_and_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let guard = PrivateAuthFile::create(parent.path(), "reg.io:5000", &basic()).unwrap();
        let file = guard.path().to_path_buf();
        let dir = file.parent().unwrap().to_path_buf();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        let parsed =
            RegistryAuths::parse("auth.json", &std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(parsed.get("reg.io:5000"), Some(&basic()));
        assert!(!format!("{guard:?}").contains("hunter2"));
        drop(guard);
        assert!(!dir.exists(), "removed with its directory");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn lease_credential_wins_over_the_agents_own() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(
            &file,
            r#"{"auths": {"reg.io": {"username": "own", "password": "p"}}}"#,
        )
        .unwrap();
        let access = RegistryAccess::load(Some(&file), None).unwrap();
        assert_eq!(
            access.resolve(Some(&basic()), "reg.io"),
            Some(basic()),
            "the lease's"
        );
        match access.resolve(None, "reg.io") {
            Some(RegistryCredential::Basic { username, .. }) => assert_eq!(username, "own"),
            other => panic!("{other:?}"),
        }
        assert_eq!(access.resolve(None, "other.io"), None);
        let e = RegistryAccess::load(Some(&dir.path().join("missing.json")), None).unwrap_err();
        assert!(
            e.contains("--registry-auth file") && e.contains("missing.json"),
            "{e}"
        );
        let e = RegistryAccess::load(None, Some(&file)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        assert!(oci_auth(
            Some(&RegistryCredential::IdentityToken(Secret::new("t"))),
            "r"
        )
        .unwrap_err()
        .contains("identity token"));
    }
}
