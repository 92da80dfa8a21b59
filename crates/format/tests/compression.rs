//! Bundles are compressed in zstd's multi-threaded mode; the bytes must not depend on how many
//! workers the machine that writes them has.

use smoker_format::bundle::write::configure;
use std::io::Write as _;

/// 40 MiB (more than two compression jobs) of mixed data: text-like runs and noise.
fn payload() -> Vec<u8> {
    let mut out = Vec::with_capacity(40 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut line = 0u64;
    while out.len() < 40 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x >> 60) < 10 {
            line += 1;
            out.extend_from_slice(
                format!(
                    "2026-03-01 line={line} level=info temp_c={} fan={}%\n",
                    x % 97,
                    x % 100
                )
                .as_bytes(),
            );
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

fn compress(data: &[u8], workers: u32) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), smoker_format::bundle::ZSTD_LEVEL)
        .expect("a zstd encoder");
    configure(&mut enc, workers).expect("bundle parameters are accepted");
    // Uneven writes, as a tar writer makes them.
    for piece in data.chunks(100_003) {
        enc.write_all(piece).expect("compress");
    }
    enc.finish().expect("finish the frame")
}

#[test]
fn one_and_four_workers_write_the_same_bytes() {
    let data = payload();
    let one = compress(&data, 1);
    let four = compress(&data, 4);
    assert_eq!(one.len(), four.len(), "1 and 4 workers: different sizes");
    assert!(one == four, "1 and 4 workers wrote different bytes");
    // Zero workers means single-threaded mode to zstd; `configure` never asks for it.
    assert!(compress(&data, 0) == one, "0 workers is not taken as 1");
    assert_eq!(zstd::decode_all(&one[..]).expect("decodes"), data);
    assert!(one.len() < data.len(), "the data compresses");
}
