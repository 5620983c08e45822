//! Caps on a build context archive, shared by the coordinator (which checks an upload before it
//! stores it) and agents (which check again as they unpack), so both refuse the same archives;
//! on a job's build secrets, shared by the CLI (which checks before it uploads anything) and
//! the coordinator; and the part size of blob uploads to registries.
//!
//! A context comes from whoever submitted the job, so every number here bounds what reading one
//! costs: entry data, entry count, the headers before each entry (GNU long names and PAX records,
//! which tar readers hold in memory) and path lengths.

/// Longest path (or link target) of an entry, in bytes: Linux's `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest component of a path, in bytes: Linux's `NAME_MAX`.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Most bytes the headers of one entry may take: its own 512-byte header plus any GNU long name,
/// GNU long link and PAX records before it. Two paths of [`MAX_PATH_BYTES`] fit with room to spare.
pub const MAX_HEADER_BYTES: u64 = 64 << 10;

/// Largest value of one build secret, in bytes: BuildKit's cap (500 KiB), so a secret that works
/// with `docker buildx build --secret` works here. Secrets travel in the job's JSON and live in
/// the database while the job runs; a larger file (a whole keystore) belongs in a registry or a
/// private base image instead.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
/// Most build secrets one job may pass.
pub const MAX_SECRETS: usize = 32;
/// Most bytes all of a job's secret values may take in its submission, JSON-escaped: the
/// coordinator reads at most 1 MiB of JSON per request, and the rest of the job needs room too.
pub const MAX_SECRETS_TOTAL_BYTES: usize = 768 * 1024;
/// Longest build secret id, in bytes. It names a file under `/run/secrets/` in a `RUN` step.
pub const MAX_SECRET_ID_BYTES: usize = 128;

/// Bytes per `PATCH` of a chunked blob upload, for agents' pushes and the coordinator's copies
/// alike (oci-client's `ClientConfig::push_chunk_size`): every part but a blob's last is this
/// large, and a blob no larger goes up in one `PUT`. Amazon ECR refuses a non-final part under
/// 5 MiB (S3 multipart upload's minimum) with `400 PART_TOO_SMALL`; 8 MiB clears it with room,
/// keeps what an upload holds in memory to one part, and keeps each request short enough for the
/// registry read timeouts on a slow link.
pub const UPLOAD_CHUNK_BYTES: usize = 8 << 20;

/// Caps on what one context may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of entry data: file contents, plus whatever data other entries carry (it is
    /// read and skipped, so it costs as much to decompress). Default 2 GiB.
    pub max_bytes: u64,
    /// Number of archive entries. Default 100 000.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 100_000,
        }
    }
}

/// A path, or one of its components, over [`MAX_PATH_BYTES`] or [`MAX_COMPONENT_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathTooLong {
    /// True when one component is too long, false when the whole path is.
    pub component: bool,
    /// Its length in bytes.
    pub len: usize,
    /// The limit it passed, in bytes.
    pub limit: usize,
}

/// Checks a path (or link target) of an entry, as raw bytes, against [`MAX_PATH_BYTES`] and
/// [`MAX_COMPONENT_BYTES`]. The kernel would refuse longer ones too, but only after a tar reader
/// had built them, and with an error that quotes the whole path.
pub fn check_path_len(path: &[u8]) -> Result<(), PathTooLong> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathTooLong {
            component: false,
            len: path.len(),
            limit: MAX_PATH_BYTES,
        });
    }
    match path
        .split(|&b| b == b'/')
        .find(|c| c.len() > MAX_COMPONENT_BYTES)
    {
        Some(c) => Err(PathTooLong {
            component: true,
            len: c.len(),
            limit: MAX_COMPONENT_BYTES,
        }),
        None => Ok(()),
    }
}

/// An entry's name fit for an error message: lossy UTF-8, cut to its first 100 characters (with
/// `…`) when longer, so a refusal of a huge name does not quote all of it.
pub fn entry_name_for_error(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if name.chars().count() > 100 {
        format!("{}…", name.chars().take(100).collect::<String>())
    } else {
        name.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_components_are_capped() {
        assert_eq!(check_path_len(b"a/b/c"), Ok(()));
        let longest = vec![b'a'; MAX_COMPONENT_BYTES];
        assert_eq!(check_path_len(&longest), Ok(()));
        let wide = vec![b'a'; MAX_COMPONENT_BYTES + 1];
        assert_eq!(
            check_path_len(&wide),
            Err(PathTooLong {
                component: true,
                len: 256,
                limit: 255
            })
        );
        let deep = "d/".repeat(MAX_PATH_BYTES / 2 + 1);
        assert_eq!(
            check_path_len(deep.as_bytes()),
            Err(PathTooLong {
                component: false,
                len: deep.len(),
                limit: MAX_PATH_BYTES
            })
        );
        let cut = entry_name_for_error("é".repeat(150).as_bytes());
        assert_eq!(cut, format!("{}…", "é".repeat(100)));
        assert_eq!(entry_name_for_error(b"short"), "short");
    }
}
