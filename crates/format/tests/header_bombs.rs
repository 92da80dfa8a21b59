//! Tar extension headers spliced into a genuine signed bundle: a GNU long name (`L`), a GNU
//! long link (`K`) and PAX records (`x`) of 152 MiB each, placed before the first payload file
//! with the manifest and its signature untouched. The tar reader holds such records in memory
//! whatever their size (several times it, while its buffer grows); the verifier must stop it
//! within a few KiB, report `header-too-large`, and the whole run must stay far below the
//! Pi's memory. One test function, so this process's peak RSS belongs to it alone.

use smoker_format::bundle::read::{
    Discard, Limits, MAX_HEADER_BYTES, Trust, VerifyError, read_bundle,
};
use smoker_format::bundle::write::{Payload, write_bundle};
use smoker_format::digest::sha256_hex;
use smoker_format::manifest::{Arch, FileEntry, Manifest};
use smoker_format::signing::{SecretKey, TrustedKeys};
use std::io::{Read, Write};

const BOMB_BYTES: u64 = 152 * 1024 * 1024;

/// A genuine bundle whose payload holds a short-named file and one whose path needs a GNU
/// long-name record (over 100 bytes), signed with a fixed key. Returns it and the trusted keys.
fn genuine() -> (Vec<u8>, TrustedKeys, tempfile::TempDir) {
    let key = SecretKey::from_seed(*b"bombtest", [3u8; 32]);
    let long = format!("stack/{}/file.txt", "d".repeat(120));
    let mut m = Manifest::skeleton("bombs", "1.0.0", Arch::Amd64, "prod");
    let dir = tempfile::tempdir().expect("temporary directory");
    // A payload larger than the bombs, as in a real stack with data files: the payload bound
    // alone would then let a header record grow to the bombs' full size.
    let data = dir.path().join("data.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&data).expect("create"));
        let block: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..160 {
            f.write_all(&block).expect("write the data file");
        }
        f.flush().expect("flush");
    }
    let (data_sha, data_len) = smoker_format::digest::sha256_file(&data).expect("hash");
    let small = |path: &str, bytes: &[u8]| {
        (
            FileEntry {
                path: path.to_string(),
                size: bytes.len() as u64,
                sha256: sha256_hex(bytes),
                mode: 0o644,
            },
            Payload::Bytes(bytes.to_vec()),
        )
    };
    let payload = vec![
        small("stack/compose.yaml", b"services: {}\n"),
        (
            FileEntry {
                path: "stack/data.bin".into(),
                size: data_len,
                sha256: data_sha,
                mode: 0o644,
            },
            Payload::File(data.clone()),
        ),
        small(&long, b"a file behind a long name\n"),
    ];
    m.files = payload.iter().map(|(e, _)| e.clone()).collect();
    m.compose.files = vec!["stack/compose.yaml".into()];
    let sig = key
        .sign(&m.to_canonical_json()[..], "bomb test")
        .expect("signing works");
    let bundle = write_bundle(Vec::new(), &m, &sig, &payload).expect("the bundle is written");
    let pub_path = dir.path().join("test.pub");
    std::fs::write(&pub_path, key.public_key_file()).expect("write the public key");
    let keys = TrustedKeys::from_file(&pub_path).expect("the public key loads");
    (bundle, keys, dir)
}

/// The genuine bundle re-packed with `bomb` (a header and its data) in front of the first
/// payload entry; every other entry and the signed manifest are copied unchanged.
fn with_bomb(genuine: &[u8], kind: tar::EntryType) -> Vec<u8> {
    let tar_bytes = zstd::decode_all(genuine).expect("the genuine bundle decompresses");
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.window_log(23).expect("window log");
    let mut out = tar::Builder::new(enc);
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for (i, entry) in archive.entries().expect("entries").enumerate() {
        let mut entry = entry.expect("entry");
        if i == 2 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(BOMB_BYTES);
            h.set_mode(0o644);
            {
                let name = b"././@LongLink";
                let gnu = h.as_gnu_mut().expect("a GNU header");
                gnu.name[..name.len()].copy_from_slice(name);
            }
            h.set_cksum();
            out.append(&h, std::io::repeat(b'a').take(BOMB_BYTES))
                .expect("append the bomb");
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read the entry");
        let mut h = entry.header().clone();
        let path = entry.path().expect("path").into_owned();
        out.append_data(&mut h, path, &data[..])
            .expect("copy the entry");
    }
    let enc = out.into_inner().expect("finish the tar stream");
    let mut bytes = enc.finish().expect("finish the zstd frame");
    bytes.flush().expect("flush");
    bytes
}

fn verify(bundle: &[u8], keys: &TrustedKeys) -> Result<(), VerifyError> {
    read_bundle(bundle, Trust::Keys(keys), &mut Discard, Limits::default()).map(|_| ())
}

/// A result's debug form, cut short (a bomb's name can be 152 MiB long).
fn short<T: std::fmt::Debug>(r: &T) -> String {
    format!("{r:?}").chars().take(300).collect()
}

/// Peak resident memory of this process so far, in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Resets this process's peak RSS to its current RSS (Linux >= 4.0).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("reset VmHWM through /proc/self/clear_refs");
}

/// The genuine bundle with an 8 MiB long-name record in front of the manifest.
fn with_bomb_in_front(genuine: &[u8]) -> Vec<u8> {
    let tar_bytes = zstd::decode_all(genuine).expect("decompress");
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.window_log(23).expect("window log");
    let mut out = tar::Builder::new(enc);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(8 * 1024 * 1024);
    h.set_mode(0o644);
    h.set_cksum();
    out.append(&h, std::io::repeat(b'a').take(8 * 1024 * 1024))
        .expect("append the bomb");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read");
        let mut hd = entry.header().clone();
        let path = entry.path().expect("path").into_owned();
        out.append_data(&mut hd, path, &data[..]).expect("copy");
    }
    out.into_inner().expect("tar").finish().expect("zstd frame")
}

#[test]
fn long_name_long_link_and_pax_bombs_are_stopped_within_the_header_budget() {
    let (bundle, keys, _dir) = genuine();
    verify(&bundle, &keys).expect("the genuine bundle, long name included, verifies");
    let peek = smoker_format::bundle::read::peek_manifest_from(&bundle[..], &keys)
        .expect("the genuine manifest peeks");
    assert_eq!(peek.name, "bombs");

    let bombs: Vec<(&str, Vec<u8>)> = [
        ("GNU long name (L)", tar::EntryType::GNULongName),
        ("GNU long link (K)", tar::EntryType::GNULongLink),
        ("PAX records (x)", tar::EntryType::XHeader),
    ]
    .into_iter()
    .map(|(label, kind)| (label, with_bomb(&bundle, kind)))
    .collect();
    let in_front = with_bomb_in_front(&bundle);

    // Only the verifier's work counts from here on.
    reset_peak_rss();
    for (label, bomb) in &bombs {
        assert!(
            bomb.len() < 1024 * 1024,
            "{label}: the bomb must be small on disk ({} bytes)",
            bomb.len()
        );
        // The signed manifest is untouched: a peek still accepts it.
        smoker_format::bundle::read::peek_manifest_from(&bomb[..], &keys)
            .expect("the manifest in front of the bomb is genuine");
        match verify(bomb, &keys) {
            Err(VerifyError::HeaderTooLarge { limit }) => assert_eq!(limit, MAX_HEADER_BYTES),
            other => panic!("{label}: expected header-too-large, got {}", short(&other)),
        }
    }
    // In front of the manifest, the peek (which learns the profile before the lock) stops too.
    match smoker_format::bundle::read::peek_manifest_from(&in_front[..], &keys) {
        Err(VerifyError::HeaderTooLarge { .. }) => {}
        other => panic!("peek: expected header-too-large, got {}", short(&other)),
    }
    match verify(&in_front, &keys) {
        Err(VerifyError::HeaderTooLarge { .. }) => {}
        other => panic!("verify: expected header-too-large, got {}", short(&other)),
    }
    let peak_mib = peak_rss_kib() / 1024;
    eprintln!("peak RSS while rejecting the bombs: {peak_mib} MiB");
    assert!(
        peak_mib <= 64,
        "peak RSS {peak_mib} MiB while rejecting 152 MiB header records; the limit is 64 MiB"
    );
}
