//! The team-like build of `examples/realworld`, as the end-to-end test and the benchmark drive it:
//! its base index, the one-line change of `main.c`, and reading buildah's log for cache hits and
//! the image for the program built.

use std::fs;

use crate::context::BuildContext;
use crate::elf;
use crate::oci::ImageFs;

/// The dependency stage's compile step (a fragment of its `STEP` line in buildah's log).
pub const LIBRARY_STEP: &str = "ar rcs libmix.a";
/// The app stage's compile step.
pub const APP_STEP: &str = "gcc -O2 -static";
/// Where the program is in the final image.
pub const PROGRAM: &str = "/usr/local/bin/realworld";
/// The repository and tag of the base index in a test registry.
pub const BASE_REPO_TAG: &str = "base/bookworm-gcc:12";

/// Replaces the `APP_VERSION` line of the context's `main.c` (the one-line change), so the program
/// prints `realworld VERSION`; returns that string.
pub fn set_app_version(context: &BuildContext, version: &str) -> String {
    let path = context.path().join("main.c");
    let source = fs::read_to_string(&path).expect("main.c in the realworld context");
    let line = source
        .lines()
        .find(|l| l.starts_with("#define APP_VERSION "))
        .expect("main.c defines APP_VERSION");
    let printed = format!("realworld {version}");
    let changed = source.replacen(line, &format!("#define APP_VERSION \"{printed}\""), 1);
    fs::write(&path, changed).expect("write main.c");
    printed
}

/// Whether buildah took the step whose `STEP n/m: …` line contains `step` from its cache, as its
/// log says (`--> Using cache ID` before the next step); None when the log has no such step.
pub fn step_cached(log: &str, step: &str) -> Option<bool> {
    let mut lines = log
        .lines()
        .skip_while(|l| !(l.contains("STEP ") && l.contains(step)));
    lines.next()?;
    Some(
        lines
            .take_while(|l| !l.contains("STEP "))
            .any(|l| l.contains("--> Using cache ")),
    )
}

/// Reads the program out of the single-platform image `image` (skopeo and umoci) and checks it is
/// an ELF file for `platform` carrying `version`; a description of what is wrong otherwise.
pub fn check_program(image: &str, platform: &str, version: &str) -> Result<(), String> {
    let fs = ImageFs::unpack(image);
    let path = fs.root().join(PROGRAM.trim_start_matches('/'));
    let bytes = fs::read(&path).map_err(|e| format!("{PROGRAM} in {image}: {e}"))?;
    let wanted = elf::machine_of_platform(platform);
    match elf::machine(&bytes) {
        Some(m) if m == wanted => {}
        other => {
            return Err(format!(
                "{PROGRAM} in {image} ({platform}) has ELF machine {other:?}, not {wanted}"
            ))
        }
    }
    if !bytes
        .windows(version.len())
        .any(|w| w == version.as_bytes())
    {
        return Err(format!(
            "{PROGRAM} in {image} ({platform}) does not carry {version:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
STEP 1/4: FROM base AS deps
STEP 3/4: COPY lib/ ./
--> Using cache 1111
--> 1111
STEP 4/4: RUN gcc -O2 -c mix.c && ar rcs libmix.a *.o && rm *.o
--> Cache pulled from remote reg/cache:abc
--> Using cache 2222
STEP 1/5: FROM base AS app
STEP 5/5: RUN gcc -O2 -static -o realworld main.c
realworld 1.0.1
--> 3333
";

    #[test]
    fn finds_cached_and_uncached_steps() {
        assert_eq!(step_cached(LOG, LIBRARY_STEP), Some(true));
        assert_eq!(step_cached(LOG, APP_STEP), Some(false));
        assert_eq!(step_cached(LOG, "COPY lib/"), Some(true));
        assert_eq!(step_cached(LOG, "no such step"), None);
    }
}
