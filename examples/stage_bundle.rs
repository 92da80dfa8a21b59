//! Benchmark helper: runs the verify + stage step of `apply` (`store::stage`) alone on a bundle
//! and prints the seconds it took, so it can be timed against `zstd -dc | tar -x`.
//!
//! Usage: `stage_bundle BUNDLE PUBLIC_KEY ROOT` (ROOT: a host root whose `staging/` is used;
//! the staged copy is removed again).

use smoker::layout::Layout;
use smoker_format::signing::TrustedKeys;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, key, root] = args.as_slice() else {
        return Err("usage: stage_bundle BUNDLE PUBLIC_KEY ROOT".into());
    };
    let keys = TrustedKeys::from_file(key.as_ref())?;
    let layout = Layout::new(root);
    let file = std::fs::File::open(bundle)?;
    let start = Instant::now();
    let staged = smoker::store::stage(&layout, file, &keys)?;
    let took = start.elapsed().as_secs_f64();
    println!("{took:.3}");
    drop(staged);
    Ok(())
}
