//! The pipeline's own registry credentials, sent with a job (`archfarm build`, from the
//! pipeline's docker config): sealed with AES-256-GCM before they reach the database, opened only
//! for that job's leases and stitching, deleted when the job ends.
//!
//! Why the database and not memory: any replica may lease a job's build or take over its
//! stitching, and a coordinator restarted mid-job must still finish it; a credential held in one
//! process's memory would fail both. Why sealed: the database (its backups, `pg_dump`, a DBA's
//! session) then never holds the credential readable; the key is not in it. Every replica needs
//! the same key (`--job-credential-key`; the Helm chart makes one); without it a coordinator
//! keeps a key of its own in its data directory, which serves one coordinator (SQLite) only.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use archfarm_protocol::{RegistryCredential, Secret};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// File in the data directory holding the key when `--job-credential-key` is not given.
pub const KEY_FILE: &str = "job-credential.key";

/// One sealed credential as stored: which key sealed it, and `base64(nonce || ciphertext+tag)`.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredential {
    /// The registry (`HOST[:PORT]`, normalised) it is for.
    pub registry: String,
    /// [`CredentialKey::id`] of the key that sealed it.
    pub key_id: String,
    /// Nonce and ciphertext, base64.
    pub sealed: String,
}

impl std::fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedCredential({}, key {})",
            self.registry, self.key_id
        )
    }
}

/// The key credentials are sealed with.
pub struct CredentialKey {
    key: LessSafeKey,
    id: String,
    /// Where it came from, for messages: the flag, or the file in the data directory.
    origin: String,
}

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialKey({}, {})", self.id, self.origin)
    }
}

impl CredentialKey {
    /// The key from `--job-credential-key` (any secret of at least 32 characters, hashed into a
    /// 256-bit key), else from the data directory's key file, made on first start.
    pub fn load(configured: Option<&Secret>, data_dir: &Path) -> anyhow::Result<Self> {
        if let Some(secret) = configured {
            if secret.expose().trim().len() < 32 {
                anyhow::bail!(
                    "--job-credential-key must be at least 32 characters (e.g. `openssl rand -base64 32`)"
                );
            }
            return Ok(Self::from_secret(
                secret.expose().trim().as_bytes(),
                "--job-credential-key",
            ));
        }
        let path = data_dir.join(KEY_FILE);
        match read_private(&path) {
            Ok(text) if text.trim().len() >= 32 => {
                return Ok(Self::from_secret(
                    text.trim().as_bytes(),
                    &path.display().to_string(),
                ))
            }
            Ok(_) => anyhow::bail!(
                "{} is shorter than 32 characters; delete it to have a new one made",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot use {}", path.display())),
        }
        let mut raw = [0u8; 32];
        aws_lc_rs::rand::fill(&mut raw).map_err(|_| anyhow::anyhow!("no random numbers"))?;
        let text = hex::encode(raw);
        write_private(&path, &text)
            .with_context(|| format!("cannot write the key file {}", path.display()))?;
        Ok(Self::from_secret(
            text.as_bytes(),
            &path.display().to_string(),
        ))
    }

    fn from_secret(secret: &[u8], origin: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"archfarm job credential key v1\0");
        h.update(secret);
        let raw = h.finalize();
        let id =
            hex::encode(&Sha256::digest([b"archfarm key id\0".as_slice(), &raw].concat())[..6]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte key"));
        CredentialKey {
            key,
            id,
            origin: origin.to_string(),
        }
    }

    /// A short fingerprint of the key (not the key), stored with each sealed credential so a
    /// coordinator holding another key can say so.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the key came from: `--job-credential-key`, or the key file's path.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Seals `credential` for `registry` of job `job_id`; both are bound in as associated data,
    /// so a sealed value copied to another job or registry does not open.
    pub fn seal(
        &self,
        job_id: Uuid,
        registry: &str,
        credential: &RegistryCredential,
    ) -> SealedCredential {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("random numbers");
        let mut data = serde_json::to_vec(credential).expect("a credential serialises");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(job_id, registry)),
                &mut data,
            )
            .expect("sealing cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        SealedCredential {
            registry: registry.to_string(),
            key_id: self.id.clone(),
            sealed: base64::engine::general_purpose::STANDARD.encode(out),
        }
    }

    /// Opens what [`CredentialKey::seal`] made; the error says why in words (never a value).
    pub fn open(
        &self,
        job_id: Uuid,
        sealed: &SealedCredential,
    ) -> Result<RegistryCredential, String> {
        // The error reaches the job (its submitter); key ids and the key file's path are the
        // operator's, so they go to the coordinator's log only.
        if sealed.key_id != self.id {
            tracing::error!(
                job.id = %job_id,
                registry = %sealed.registry,
                sealed_with = %sealed.key_id,
                key_id = %self.id,
                key_from = %self.origin,
                "a job's credential was sealed with another key: give every replica the same --job-credential-key"
            );
            return Err(format!(
                "the job's credential for {} was sealed by a coordinator with another key: the \
                 farm's replicas need the same --job-credential-key (the coordinator's log says more)",
                sealed.registry
            ));
        }
        let corrupt = || {
            tracing::error!(job.id = %job_id, registry = %sealed.registry, "a job's sealed credential does not open");
            format!(
                "the job's sealed credential for {} does not open",
                sealed.registry
            )
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&sealed.sealed)
            .map_err(|_| corrupt())?;
        if bytes.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let mut data = rest.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?,
                Aad::from(aad(job_id, &sealed.registry)),
                &mut data,
            )
            .map_err(|_| corrupt())?;
        serde_json::from_slice(plain).map_err(|_| corrupt())
    }
}

fn aad(job_id: Uuid, registry: &str) -> Vec<u8> {
    format!("archfarm job {job_id} registry {registry}").into_bytes()
}

/// Reads a key file (the data directory's, or `--job-credential-key-file`), refusing one that
/// its group or others may read or write: whoever reads the key and the database reads every
/// running job's registry credentials. One owned by another user is read, with a warning.
pub fn read_private(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path)?;
    if meta.mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the key file is open to its group or others (mode {:o}); make it readable by \
                 the coordinator's user only (chmod 600), and consider the key exposed",
                meta.mode() & 0o777
            ),
        ));
    }
    if meta.uid() != rustix::process::geteuid().as_raw() {
        tracing::warn!(
            path = %path.display(),
            owner = meta.uid(),
            "the job credential key file is owned by another user, who can read or replace it"
        );
    }
    std::fs::read_to_string(path)
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// A job's own credentials, opened, by normalised registry. Empty for jobs that sent none.
#[derive(Debug, Clone, Default)]
pub struct JobCredentials {
    by_registry: BTreeMap<String, RegistryCredential>,
}

impl JobCredentials {
    /// Opens the sealed credentials of job `job_id`.
    pub fn open(
        key: &CredentialKey,
        job_id: Uuid,
        sealed: &[SealedCredential],
    ) -> Result<Self, String> {
        let mut by_registry = BTreeMap::new();
        for s in sealed {
            by_registry.insert(s.registry.clone(), key.open(job_id, s)?);
        }
        Ok(JobCredentials { by_registry })
    }

    /// None: a job that sent no credential.
    pub fn none() -> Self {
        JobCredentials::default()
    }

    /// The job's own credential for `registry`, if it sent one.
    pub fn get(&self, registry: &str) -> Option<&RegistryCredential> {
        let key = archfarm_protocol::registry_auth::normalise_registry(registry).ok()?;
        self.by_registry.get(&key)
    }

    /// Every secret string of every credential, for redaction.
    pub fn secrets(&self) -> Vec<Secret> {
        self.by_registry
            .values()
            .flat_map(|c| c.secrets())
            .collect()
    }

    /// The registries it has a credential for.
    pub fn registries(&self) -> impl Iterator<Item = &str> {
        self.by_registry.keys().map(String::as_str)
    }
}

/// The opened credentials of job `job_id` (none once it has ended); the inner error says why
/// they cannot be opened (another replica's key, a damaged row), in words.
pub async fn for_job(
    state: &crate::AppState,
    job_id: Uuid,
) -> crate::store::StoreResult<Result<JobCredentials, String>> {
    let sealed = state.store.job_credentials(job_id).await?;
    if sealed.is_empty() {
        return Ok(Ok(JobCredentials::none()));
    }
    Ok(JobCredentials::open(&state.credential_key, job_id, &sealed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic() -> RegistryCredential {
        RegistryCredential::Basic {
            username: "ci".into(),
            password: Secret::new("hunter2"),
        }
    }

    #[test]
    fn seals_opens_and_binds_job_and_registry() {
        let dir = tempfile::tempdir().unwrap();
        let key = CredentialKey::load(None, dir.path()).unwrap();
        let file = dir.path().join(KEY_FILE);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = CredentialKey::load(None, dir.path()).unwrap();
        assert_eq!(key.id(), again.id(), "the key file is kept");
        let job = Uuid::new_v4();
        let sealed = key.seal(job, "r.io", &basic());
        assert!(!sealed.sealed.contains("hunter2") && !format!("{sealed:?}").contains("hunter2"));
        let b64 = base64::engine::general_purpose::STANDARD.encode("ci:hunter2");
        assert!(!sealed.sealed.contains(&b64));
        assert_eq!(again.open(job, &sealed).unwrap(), basic());
        // Moved to another job or registry, it does not open.
        assert!(key
            .open(Uuid::new_v4(), &sealed)
            .unwrap_err()
            .contains("does not open"));
        let moved = SealedCredential {
            registry: "other.io".into(),
            ..sealed.clone()
        };
        assert!(key.open(job, &moved).is_err());
        // Another key says so, naming the flag.
        let other = CredentialKey::load(Some(&Secret::new("x".repeat(40))), dir.path()).unwrap();
        let e = other.open(job, &sealed).unwrap_err();
        assert!(
            e.contains("--job-credential-key")
                && !e.contains(key.id())
                && !e.contains(other.id())
                && !e.contains(&dir.path().display().to_string()),
            "the job's error names no key id nor the key file: {e}"
        );
        assert!(CredentialKey::load(Some(&Secret::new("short")), dir.path()).is_err());
        // A key file others may read is refused, saying how to fix it.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", CredentialKey::load(None, dir.path()).unwrap_err());
        assert!(e.contains("mode 644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = JobCredentials::open(&key, job, &[sealed]).unwrap();
        assert_eq!(creds.get("R.io"), Some(&basic()));
        assert_eq!(creds.get("other.io"), None);
        assert_eq!(creds.secrets()[0].expose(), "hunter2");
    }
}
