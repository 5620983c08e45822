//! `archfarm-scan-layer LAYER.tar.gz PLATFORM`: the agent's binary check
//! (`archfarm_agent::backend::binary_check`) on one gzip-compressed layer, in a process of its
//! own so that `archfarm-bench`'s binary-check part can measure its time and peak memory apart
//! from everything else. Prints what it saw as one line of JSON; exit 1 when the layer cannot be
//! read, 2 on bad arguments.

use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;

use archfarm_agent::backend::binary_check::{read_layer, Compression, LayerId, Scan};
use archfarm_protocol::foreign_binary::AllowedPaths;
use archfarm_protocol::Platform;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [layer, platform] = args.as_slice() else {
        eprintln!("usage: archfarm-scan-layer LAYER.tar.gz PLATFORM");
        return ExitCode::from(2);
    };
    let platform = match Platform::parse(platform) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("archfarm-scan-layer: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(mut scan) = Scan::new(&platform, AllowedPaths::default()) else {
        eprintln!("archfarm-scan-layer: {platform} is not judged");
        return ExitCode::from(2);
    };
    let file = match File::open(layer) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("archfarm-scan-layer: {layer}: {e}");
            return ExitCode::from(1);
        }
    };
    let id = LayerId {
        index: 1,
        count: 1,
        digest: layer.clone(),
    };
    let read = read_layer(
        &mut scan,
        &id,
        BufReader::with_capacity(256 * 1024, file),
        Compression::Gzip,
        &CancellationToken::new(),
    );
    if let Err(e) = read {
        eprintln!("archfarm-scan-layer: {e}");
        return ExitCode::from(1);
    }
    let (summary, foreign) = scan.finish();
    println!(
        "{}",
        serde_json::json!({
            "entries": summary.entries,
            "tar_bytes": summary.bytes,
            "judged": summary.judged,
            "foreign": foreign.len(),
            "first_foreign": foreign.first().map(|f| f.describe()),
        })
    );
    ExitCode::SUCCESS
}
