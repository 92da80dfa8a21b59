//! A corpus of hostile and broken bundles, each crafted by hand with the tar and zstd crates.
//!
//! Every case must be rejected with one exact [`VerifyError::kind`]. The genuine bundle and an
//! unmodified reassembly of it are the positive controls that show the crafting itself is
//! faithful, so each rejection is caused by the one thing the case changes.

use smoker_format::bundle::read::{
    Discard, Limits, Threads, Trust, VerifiedBundle, VerifyError, read_bundle, read_bundle_on,
};
use smoker_format::manifest::{FileEntry, MANIFEST_PATH, Manifest};
use smoker_testkit::bundle::{self, Fixture, Raw, tar_bytes, zstd};
use std::process::Command;
use std::time::{Duration, Instant};
use tar::EntryType;

/// One hostile or broken bundle and the kind of error it must produce.
struct Case {
    name: String,
    bytes: Vec<u8>,
    expected: &'static str,
}

fn case(name: &str, bytes: Vec<u8>, expected: &'static str) -> Case {
    Case {
        name: name.to_string(),
        bytes,
        expected,
    }
}

fn verify(f: &Fixture, bytes: &[u8]) -> Result<VerifiedBundle, VerifyError> {
    read_bundle(
        std::io::Cursor::new(bytes),
        Trust::Keys(&f.keys),
        &mut Discard,
        Limits::default(),
    )
}

/// The verdict on `bytes`, which must be the same on the calling thread alone and with the
/// reader and decoder on worker threads.
fn kind_of(f: &Fixture, bytes: &[u8]) -> String {
    let verdict = |threads| match read_bundle_on(
        std::io::Cursor::new(bytes),
        Trust::Keys(&f.keys),
        &mut Discard,
        Limits::default(),
        threads,
    ) {
        Ok(_) => "ACCEPTED".to_string(),
        Err(e) => format!("{} ({e})", e.kind()),
    };
    let one = verdict(Threads::One);
    let pipelined = verdict(Threads::Pipelined);
    if one == pipelined {
        one
    } else {
        format!("DIFFERENT VERDICTS: one thread {one}; pipelined {pipelined}")
    }
}

/// Every case must be rejected with its expected kind; all misses are reported at once.
fn assert_each_rejected_with_its_kind(f: &Fixture, cases: &[Case]) {
    let mut wrong = Vec::new();
    for c in cases {
        let got = kind_of(f, &c.bytes);
        if !got.starts_with(&format!("{} (", c.expected)) {
            wrong.push(format!("  {}: expected {}, got {got}", c.name, c.expected));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases were not rejected as expected:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// The fixture's entries with `edit` applied, as a compressed bundle.
fn altered(f: &Fixture, edit: impl FnOnce(&mut Vec<Raw>)) -> Vec<u8> {
    let mut e = f.entries();
    edit(&mut e);
    zstd(&tar_bytes(&e))
}

/// A bundle whose manifest is `m`, signed by the fixture key, with the fixture's payload.
fn resigned(f: &Fixture, m: &Manifest) -> Vec<u8> {
    zstd(&tar_bytes(&f.entries_for(m, &f.sign(m))))
}

fn insert_after_signature(f: &Fixture, raw: Raw) -> Vec<u8> {
    altered(f, |e| e.insert(2, raw))
}

fn structural_cases(f: &Fixture) -> Vec<Case> {
    let mut v = Vec::new();
    let i_app = f.index_of("stack/config/app.toml");
    let i_env = f.index_of("config/prod.env");
    let i_mig = f.index_of("migrations/0001-init.sh");
    let i_compose = f.index_of("stack/compose.yaml");

    // Entry types other than regular files.
    v.push(case(
        "symlink entry (absolute target)",
        insert_after_signature(
            f,
            Raw::special("stack/passwd", EntryType::Symlink, "/etc/shadow"),
        ),
        "forbidden-type",
    ));
    v.push(case(
        "listed file replaced by a symlink",
        altered(f, |e| {
            e[i_app] = Raw::special("stack/config/app.toml", EntryType::Symlink, "../../../etc");
        }),
        "forbidden-type",
    ));
    v.push(case(
        "symlink named manifest.json as the first entry",
        altered(f, |e| {
            e[0] = Raw::special(MANIFEST_PATH, EntryType::Symlink, "/etc/passwd");
        }),
        "forbidden-type",
    ));
    v.push(case(
        "hard link entry",
        insert_after_signature(
            f,
            Raw::special("stack/hard", EntryType::Link, "stack/compose.yaml"),
        ),
        "forbidden-type",
    ));
    v.push(case(
        "character device entry",
        insert_after_signature(f, Raw::special("dev/console", EntryType::Char, "")),
        "forbidden-type",
    ));
    v.push(case(
        "block device entry",
        insert_after_signature(f, Raw::special("dev/sda", EntryType::Block, "")),
        "forbidden-type",
    ));
    v.push(case(
        "FIFO entry",
        insert_after_signature(f, Raw::special("stack/fifo", EntryType::Fifo, "")),
        "forbidden-type",
    ));
    v.push(case(
        "directory entry",
        insert_after_signature(f, Raw::special("stack/", EntryType::Directory, "")),
        "forbidden-type",
    ));
    v.push(case(
        "GNU sparse entry",
        insert_after_signature(f, Raw::special("stack/sparse", EntryType::GNUSparse, "")),
        "forbidden-type",
    ));
    v.push(case(
        "global pax header entry",
        insert_after_signature(f, {
            let mut g = bundle::pax(&[("comment", "x")]);
            g.kind = EntryType::XGlobalHeader;
            g
        }),
        "forbidden-type",
    ));

    // Paths.
    v.push(case(
        "absolute path",
        insert_after_signature(
            f,
            Raw::file(
                "/etc/cron.d/evil",
                0o644,
                b"* * * * * root sh\n".to_vec(),
                0,
            ),
        ),
        "absolute-path",
    ));
    v.push(case(
        "`..` path",
        insert_after_signature(
            f,
            Raw::file("stack/../../etc/evil", 0o644, b"x".to_vec(), 0),
        ),
        "unsafe-path",
    ));
    let long_escape = format!("stack/{}{}etc/evil", "a/".repeat(60), "../".repeat(70));
    v.push(case(
        "`..` path in a GNU long-name entry",
        insert_after_signature(f, Raw::file(&long_escape, 0o644, b"x".to_vec(), 0)),
        "unsafe-path",
    ));
    v.push(case(
        "`..` path in a PAX path record",
        altered(f, |e| {
            e.insert(2, bundle::pax(&[("path", "../../etc/evil")]));
            e.insert(3, Raw::file("harmless.txt", 0o644, b"x".to_vec(), 0));
        }),
        "unsafe-path",
    ));

    // Entries against the manifest.
    v.push(case(
        "extra entry at the end, not in the manifest",
        altered(f, |e| {
            e.push(Raw::file(
                "stack/extra.sh",
                0o755,
                b"#!/bin/sh\n".to_vec(),
                0,
            ))
        }),
        "unexpected-entry",
    ));
    v.push(case(
        "extra entry between listed files",
        altered(f, |e| {
            e.insert(
                i_env + 1,
                Raw::file("config/zz-unlisted.env", 0o644, b"A=1\n".to_vec(), 0),
            );
        }),
        "unexpected-entry",
    ));
    v.push(case(
        "missing entry (last listed file absent)",
        altered(f, |e| {
            e.remove(i_app);
        }),
        "missing-entry",
    ));
    v.push(case(
        "duplicate entry",
        altered(f, |e| {
            let dup = e[i_env].clone();
            e.insert(i_env + 1, dup);
        }),
        "duplicate-entry",
    ));
    v.push(case(
        "duplicate entry with other content at the end",
        altered(f, |e| {
            e.push(Raw::file(
                "config/prod.env",
                0o644,
                b"MODE=evil\n".to_vec(),
                0,
            ))
        }),
        "duplicate-entry",
    ));
    v.push(case(
        "second manifest.json after the payload",
        altered(f, |e| {
            let m = e[0].clone();
            e.push(m);
        }),
        "duplicate-entry",
    ));
    v.push(case(
        "out-of-order entries",
        altered(f, |e| e.swap(i_mig, i_compose)),
        "out-of-order",
    ));
    v.push(case(
        "size mismatch (one byte more than the manifest says)",
        altered(f, |e| {
            let mut d = e[i_app].data.clone();
            d.push(b'\n');
            e[i_app] = e[i_app].clone().with_data(d);
        }),
        "size-mismatch",
    ));
    v.push(case(
        "PAX size record disagreeing with the manifest",
        altered(f, |e| {
            let mut d = e[i_app].data.clone();
            let header_size = e[i_app].size;
            d.extend_from_slice(&[b'#'; 600]);
            let size = d.len().to_string();
            e[i_app].data = d;
            e[i_app].size = header_size;
            e.insert(i_app, bundle::pax(&[("size", &size)]));
        }),
        "size-mismatch",
    ));
    v.push(case(
        "mode mismatch (755 listed, 644 stored)",
        altered(f, |e| e[i_mig].mode = 0o644),
        "mode-mismatch",
    ));
    v.push(case(
        "mode mismatch (setuid bit added)",
        altered(f, |e| e[i_mig].mode = 0o4755),
        "mode-mismatch",
    ));
    v.push(case(
        "one flipped bit in a payload file",
        altered(f, |e| bundle::flip(&mut e[i_compose].data, 10, 0)),
        "hash-mismatch",
    ));
    v.push(case(
        "one flipped bit in the manifest",
        altered(f, |e| bundle::flip(&mut e[0].data, 40, 1)),
        "bad-signature",
    ));
    v.push(case(
        "trusted comment of the signature altered",
        altered(f, |e| {
            let s = String::from_utf8(e[1].data.clone()).expect("utf-8 signature");
            let s = s.replace("version:1.0.0", "version:9.0.0");
            e[1] = e[1].clone().with_data(s.into_bytes());
        }),
        "bad-signature",
    ));

    // Header entries.
    v.push(case(
        "manifest not first (signature first)",
        altered(f, |e| e.swap(0, 1)),
        "manifest-missing",
    ));
    v.push(case(
        "manifest not first (a payload file first)",
        altered(f, |e| {
            let p = e.remove(i_env);
            e.insert(0, p);
        }),
        "manifest-missing",
    ));
    v.push(case(
        "signature missing",
        altered(f, |e| {
            e.remove(1);
        }),
        "signature-missing",
    ));
    v.push(case(
        "oversized manifest (5 MiB)",
        altered(f, |e| {
            let mut d = e[0].data.clone();
            d.resize(5 * 1024 * 1024, b' ');
            e[0] = e[0].clone().with_data(d);
        }),
        "manifest-too-large",
    ));
    v.push(case(
        "signature is not minisign",
        altered(f, |e| {
            e[1] = e[1].clone().with_data(b"hello\nworld\n".to_vec())
        }),
        "malformed-signature",
    ));
    v.push(case(
        "oversized signature (8 KiB)",
        altered(f, |e| {
            let mut d = e[1].data.clone();
            d.resize(8192, b'\n');
            e[1] = e[1].clone().with_data(d);
        }),
        "malformed-signature",
    ));
    v.push(case(
        "empty tar archive",
        zstd(&tar_bytes(&[])),
        "manifest-missing",
    ));
    v
}

fn signature_cases(f: &Fixture) -> Vec<Case> {
    let mut v = Vec::new();
    let other_dir = tempfile::tempdir().expect("tempdir");
    let (other, _) = bundle::new_key(other_dir.path(), "other");
    v.push(case(
        "signed by an untrusted key",
        zstd(&tar_bytes(&f.entries_for(
            &f.manifest,
            &bundle::sign_manifest(&other, &f.manifest),
        ))),
        "untrusted-key",
    ));
    let mut another = f.manifest.clone();
    another.version = "1.0.1".into();
    v.push(case(
        "valid signature over another manifest",
        zstd(&tar_bytes(&f.entries_for(&f.manifest, &f.sign(&another)))),
        "bad-signature",
    ));
    let mut fewer = f.manifest.clone();
    fewer.files.retain(|e| e.path != "stack/config/app.toml");
    v.push(case(
        "signed manifest lists fewer files than present",
        resigned(f, &fewer),
        "unexpected-entry",
    ));
    let mut more = f.manifest.clone();
    more.files.push(FileEntry {
        path: "stack/config/zz-more.toml".into(),
        size: 3,
        sha256: "00".repeat(32),
        mode: 0o644,
    });
    v.push(case(
        "signed manifest lists more files than present",
        resigned(f, &more),
        "missing-entry",
    ));
    let mut escaping = f.manifest.clone();
    escaping.files.insert(
        0,
        FileEntry {
            path: "../escape".into(),
            size: 1,
            sha256: "00".repeat(32),
            mode: 0o644,
        },
    );
    v.push(case(
        "signed manifest listing a `..` path",
        resigned(f, &escaping),
        "invalid-manifest",
    ));
    let mut future = f.manifest.clone();
    future.format = 2;
    v.push(case(
        "signed manifest of an unknown format",
        resigned(f, &future),
        "invalid-manifest",
    ));
    v
}

fn stream_cases(f: &Fixture) -> Vec<Case> {
    let mut v = Vec::new();
    let genuine = f.bundle();

    let mut b = genuine.clone();
    bundle::flip(&mut b, 0, 0);
    v.push(case("one flipped bit in the zstd magic", b, "compression"));
    let mut b = genuine.clone();
    let last = b.len() - 1;
    bundle::flip(&mut b, last, 3);
    v.push(case(
        "one flipped bit in the zstd frame checksum",
        b,
        "compression",
    ));
    // The blob is incompressible, so zstd stores it verbatim: flip a bit inside it.
    let blob = &f.files[f.index_of(bundle::BLOB_PATH) - 2].1;
    let mid = bundle::BLOB_LEN / 2;
    let at = bundle::find(&genuine, &blob[mid..mid + 64]).expect("blob stored verbatim");
    let mut b = genuine.clone();
    bundle::flip(&mut b, at + 7, 5);
    v.push(case(
        "one flipped bit in a stored block of the compressed stream",
        b,
        "hash-mismatch",
    ));
    let tar = tar_bytes(&f.entries());
    v.push(case(
        "plain tar, not zstd-compressed",
        tar.clone(),
        "compression",
    ));

    // Trailing data.
    let mut b = genuine.clone();
    b.extend_from_slice(b"garbage after the frame\n");
    v.push(case(
        "trailing garbage after the zstd frame",
        b,
        "trailing-data",
    ));
    let mut b = genuine.clone();
    b.extend(zstd(&[0u8; 4096]));
    v.push(case(
        "a second zstd frame (of zeros) after the bundle",
        b,
        "trailing-data",
    ));
    let mut t = tar.clone();
    t.extend_from_slice(b"not zeros after the end-of-archive marker");
    v.push(case(
        "data after the end-of-archive marker",
        zstd(&t),
        "trailing-data",
    ));

    // Truncations of the genuine bundle.
    for (what, len) in [
        ("inside the zstd magic", 3),
        ("inside the zstd frame header", 5),
        ("at half the file", genuine.len() / 2),
        ("before the frame checksum", genuine.len() - 4),
        ("one byte short", genuine.len() - 1),
    ] {
        v.push(case(
            &format!("truncated {what} (genuine bundle, {len} bytes)"),
            genuine[..len].to_vec(),
            "truncated",
        ));
    }
    v.push(case("empty file", Vec::new(), "truncated"));

    // Truncations at known places of the tar stream: a bundle compressed in 256-byte blocks.
    let (blocks, marks) = bundle::zstd_in_blocks(&tar, 256);
    assert!(
        verify(f, &blocks).is_ok(),
        "the block-compressed bundle must verify"
    );
    let manifest_len = f.manifest.to_canonical_json().len();
    assert!(
        manifest_len > 1024,
        "fixture manifest is {manifest_len} bytes"
    );
    let sig_data = 512 + manifest_len.div_ceil(512) * 512 + 512;
    let i_blob = f.index_of(bundle::BLOB_PATH);
    let blob_data = tar_bytes(&f.entries()[..i_blob]).len() - 1024 + 512;
    let cut = |decompressed: usize| {
        marks
            .iter()
            .find(|(d, _)| *d == decompressed)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no block boundary at {decompressed}"))
    };
    for (what, at) in [
        ("in the manifest's tar header", 256),
        ("in the manifest", 1024),
        ("in the signature's tar header", sig_data - 256),
        ("in the signature", sig_data + 256),
        ("in a payload file's tar header", blob_data - 256),
        ("in the middle of a payload file", blob_data + 512 * 300),
        ("in the end-of-archive marker", tar.len() - 512),
        ("after the last block, before the frame end", tar.len()),
    ] {
        let c = cut(at);
        v.push(case(
            &format!("truncated {what} (tar offset {at}, {c} bytes)"),
            blocks[..c].to_vec(),
            "truncated",
        ));
    }
    v
}

fn all_cases(f: &Fixture) -> Vec<Case> {
    let mut v = structural_cases(f);
    v.extend(signature_cases(f));
    v.extend(stream_cases(f));
    v
}

#[test]
fn genuine_and_faithfully_reassembled_bundles_verify() {
    let f = Fixture::new();
    let v = verify(&f, &f.bundle()).expect("the genuine bundle must verify");
    assert_eq!(v.manifest, f.manifest);
    assert_eq!(v.manifest.files.len(), 6);
    // The crafting tools, with no change, give a bundle that verifies too (so every rejection
    // below comes from the one thing a case alters).
    let crafted = zstd(&tar_bytes(&f.entries()));
    let v2 = verify(&f, &crafted).expect("an unaltered reassembly must verify");
    assert_eq!(v2.manifest_sha256, v.manifest_sha256);
    let frame = bundle::zstd_frame_with_zero_tail(&tar_bytes(&f.entries()), 0);
    verify(&f, &frame).expect("a hand-written zstd frame of the same tar must verify");
}

/// Reading on worker threads and on the calling thread alone give the same result: the
/// bundle's sha256 and sizes as `sha256` of the file and `zstd -d` see them, and the same
/// staged bytes.
#[test]
fn pipelined_and_single_thread_reads_agree() {
    use smoker_format::bundle::read::DirSink;
    let f = Fixture::new();
    let bytes = f.bundle();
    let mut results = Vec::new();
    for threads in [Threads::One, Threads::Pipelined] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let v = read_bundle_on(
            std::io::Cursor::new(&bytes),
            Trust::Keys(&f.keys),
            &mut DirSink::new(dir.path()),
            Limits::default(),
            threads,
        )
        .expect("the genuine bundle verifies");
        assert_eq!(
            v.bundle_sha256,
            smoker_format::digest::sha256_hex(&bytes),
            "{threads:?}"
        );
        assert_eq!(v.compressed_bytes, bytes.len() as u64, "{threads:?}");
        let plain = ::zstd::decode_all(&bytes[..]).expect("zstd decodes the bundle");
        assert_eq!(v.decompressed_bytes, plain.len() as u64, "{threads:?}");
        let staged: Vec<(String, Vec<u8>)> = v
            .manifest
            .files
            .iter()
            .map(|e| {
                let data = std::fs::read(dir.path().join(&e.path)).expect("staged file");
                assert_eq!(smoker_format::digest::sha256_hex(&data), e.sha256);
                (e.path.clone(), data)
            })
            .collect();
        results.push((v.manifest_sha256, staged));
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn every_hostile_bundle_is_rejected_with_its_exact_kind() {
    let f = Fixture::new();
    let cases = all_cases(&f);
    assert!(cases.len() >= 20, "only {} cases", cases.len());
    assert_each_rejected_with_its_kind(&f, &cases);
    eprintln!(
        "{} hostile bundles rejected with their exact kind",
        cases.len()
    );
}

#[test]
fn manifest_listing_more_files_than_the_limit_is_refused() {
    let f = Fixture::new();
    let limits = Limits {
        max_files: 3,
        ..Limits::default()
    };
    let err = read_bundle(
        std::io::Cursor::new(f.bundle()),
        Trust::Keys(&f.keys),
        &mut Discard,
        limits,
    )
    .expect_err("six files with a limit of three");
    assert_eq!(err.kind(), "too-many-entries", "{err}");
}

/// Decompression bombs: each must stop early, without producing gigabytes.
#[test]
fn decompression_bombs_stop_early() {
    const HUGE: u64 = 16 * 1024 * 1024 * 1024;
    let f = Fixture::new();
    let entries = f.entries();
    let mut cases = Vec::new();

    // 16 GiB of zeros after the end-of-archive marker (inside the same zstd frame).
    cases.push((
        "16 GiB of zeros after the archive end",
        bundle::zstd_frame_with_zero_tail(&tar_bytes(&entries), HUGE),
        "too-large",
    ));
    // A GNU long-name entry of 16 GiB (the tar reader keeps a long name in memory).
    let bomb_header = |after: usize| {
        let mut t = tar_bytes(&entries[..after]);
        t.truncate(t.len() - 1024);
        let long = Raw {
            path: b"././@LongLink".to_vec(),
            kind: EntryType::GNULongName,
            mode: 0o644,
            size: HUGE,
            data: Vec::new(),
            link: Vec::new(),
            mtime: 0,
            uid: 0,
            gid: 0,
        };
        t.extend(bundle::header_bytes(&long));
        t
    };
    cases.push((
        "16 GiB GNU long name after the signature",
        bundle::zstd_frame_with_zero_tail(&bomb_header(2), HUGE),
        "header-too-large",
    ));
    cases.push((
        "16 GiB GNU long name before the manifest",
        bundle::zstd_frame_with_zero_tail(&bomb_header(0), HUGE),
        "header-too-large",
    ));
    // A PAX header of 16 GiB (also read into memory by the tar reader).
    let mut t = tar_bytes(&entries[..3]);
    t.truncate(t.len() - 1024);
    let mut x = bundle::pax(&[]);
    x.size = HUGE;
    t.extend(bundle::header_bytes(&x));
    cases.push((
        "16 GiB PAX header",
        bundle::zstd_frame_with_zero_tail(&t, HUGE),
        "header-too-large",
    ));
    // A listed small file whose header claims 16 GiB of zeros.
    let mut t = tar_bytes(&entries[..2]);
    t.truncate(t.len() - 1024);
    let mut big = entries[2].clone();
    big.size = HUGE;
    big.data.clear();
    t.extend(bundle::header_bytes(&big));
    cases.push((
        "listed small file declared 16 GiB in its header",
        bundle::zstd_frame_with_zero_tail(&t, HUGE),
        "size-mismatch",
    ));

    let mut wrong = Vec::new();
    for (name, bytes, expected) in &cases {
        assert!(
            bytes.len() < 4 * 1024 * 1024,
            "{name}: bomb is {} bytes",
            bytes.len()
        );
        let start = Instant::now();
        let result = verify(&f, bytes);
        let took = start.elapsed();
        match result {
            Ok(_) => wrong.push(format!("  {name}: ACCEPTED")),
            Err(e) if e.kind() != *expected => wrong.push(format!(
                "  {name}: expected {expected}, got {} ({e})",
                e.kind()
            )),
            Err(_) => {}
        }
        // Reading 16 GiB would take far longer than this even from memory.
        assert!(
            took < Duration::from_secs(20),
            "{name}: took {took:?}; the reader did not stop early"
        );
    }
    assert!(
        wrong.is_empty(),
        "bombs not stopped as expected:\n{}",
        wrong.join("\n")
    );
}

/// The CLI reports the same kinds, exits non-zero, and writes nothing anywhere.
#[test]
fn cli_verify_rejects_with_the_kind_and_writes_nothing() {
    let f = Fixture::new();
    let cases = all_cases(&f);
    let pick = [
        "symlink entry (absolute target)",
        "`..` path",
        "one flipped bit in a payload file",
        "signed by an untrusted key",
        "trailing garbage after the zstd frame",
        "out-of-order entries",
    ];
    let work = tempfile::tempdir().expect("tempdir");
    let input = work.path().join("in");
    let cwd = work.path().join("cwd");
    std::fs::create_dir_all(&input).expect("mkdir");
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let mut checked = 0;
    let mut run_cli = |name: &str, bytes: &[u8]| {
        let bundle = input.join("corpus-1.0.0-amd64.tar.zst");
        std::fs::write(&bundle, bytes).expect("writing the bundle");
        let out = smoker_testkit::run::run(
            Command::new(smoker_testkit::bins::smoker_install())
                .args(["verify", "--json", "--key"])
                .arg(&f.pub_path)
                .arg(&bundle)
                .current_dir(&cwd),
        );
        let listing = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .expect("readdir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert!(
            listing(&cwd).is_empty(),
            "{name}: verify wrote into its working directory"
        );
        assert_eq!(
            listing(&input),
            vec!["corpus-1.0.0-amd64.tar.zst".to_string()],
            "{name}: verify wrote next to the bundle"
        );
        checked += 1;
        out
    };

    let out = run_cli("genuine", &f.bundle());
    let (stdout, stderr) = (smoker_testkit::stdout(&out), smoker_testkit::stderr(&out));
    assert!(
        out.status.success(),
        "genuine bundle refused: {stdout}{stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON verdict");
    assert_eq!(v["ok"], true, "{stdout}");

    for name in pick {
        let c = cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no case named {name}"));
        let out = run_cli(name, &c.bytes);
        let (stdout, stderr) = (smoker_testkit::stdout(&out), smoker_testkit::stderr(&out));
        assert!(
            !out.status.success(),
            "{name}: smoker-install verify exited 0\n{stdout}{stderr}"
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{name}: stdout is not one JSON verdict ({e}): {stdout}"));
        assert_eq!(v["ok"], false, "{name}: {stdout}");
        assert_eq!(v["data"]["reason"], c.expected, "{name}: {stdout}");
    }
    assert_eq!(checked, pick.len() + 1);
}

/// The fixture's tar stream with entry `at` written with type flag NUL (an old-style regular
/// file) instead of `0`, its header checksum recomputed.
fn old_style_regular(f: &Fixture, at: usize) -> Vec<u8> {
    let e = f.entries();
    let mut t = tar_bytes(&e[..at]);
    t.truncate(t.len() - 1024);
    let mut h = bundle::header_bytes(&e[at]);
    let start = h.len() - 512;
    h[start + 156] = 0;
    h[start + 148..start + 156].copy_from_slice(b"        ");
    let sum: u32 = h[start..].iter().map(|b| u32::from(*b)).sum();
    h[start + 148..start + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    t.extend(h);
    t.extend(bundle::padded(&e[at].data));
    t.extend(tar_bytes(&e[at + 1..]));
    t
}

/// A zstd frame of `bytes` whose header declares a window of 2^`log` bytes.
fn zstd_with_window_log(bytes: &[u8], log: u32) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.window_log(log).expect("window log");
    enc.include_contentsize(false).expect("no content size");
    enc.include_checksum(true).expect("checksum flag");
    enc.write_all(bytes).expect("compressing");
    enc.finish().expect("finishing the frame")
}

/// The hostile cases of the security review: names, entry types, PAX keys, frame tricks and a
/// manifest that makes a file a directory. Each must be rejected with its kind.
#[test]
fn review_cases_are_rejected_with_their_kind() {
    let f = Fixture::new();
    let tar = tar_bytes(&f.entries());
    let first_payload = 2;
    let rename = |path: &[u8]| {
        altered(&f, |e| {
            e[first_payload].path = path.to_vec();
        })
    };
    let retype = |kind: EntryType| {
        altered(&f, |e| {
            e[first_payload].kind = kind;
        })
    };
    let mut cases = vec![
        case(
            "non-UTF-8 name",
            rename(b"config/pr\xffd.env"),
            "unsafe-path",
        ),
        case(
            "control characters in a name",
            rename(b"config/\x1b[2Jprod.env"),
            "unsafe-path",
        ),
        case(
            "old-style regular file (type NUL)",
            zstd(&old_style_regular(&f, first_payload)),
            "forbidden-type",
        ),
        case(
            "contiguous file (type 7)",
            retype(EntryType::Continuous),
            "forbidden-type",
        ),
        case(
            "GNU volume label (type V)",
            retype(EntryType::new(b'V')),
            "forbidden-type",
        ),
        case(
            "GNU multi-volume continuation (type M)",
            retype(EntryType::new(b'M')),
            "forbidden-type",
        ),
        case(
            "PAX sparse keys before a payload file",
            insert_after_signature(
                &f,
                bundle::pax(&[
                    ("GNU.sparse.major", "1"),
                    ("GNU.sparse.minor", "0"),
                    ("GNU.sparse.name", "config/prod.env"),
                    ("GNU.sparse.realsize", "1048576"),
                ]),
            ),
            "forbidden-type",
        ),
        case(
            "zstd window log 25",
            zstd_with_window_log(&tar, 25),
            "compression",
        ),
        case(
            "zstd window log 27",
            zstd_with_window_log(&tar, 27),
            "compression",
        ),
    ];
    // A skippable frame in front of the genuine frame.
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 8, 0, 0, 0];
    skippable.extend_from_slice(b"skipme!!");
    skippable.extend(f.bundle());
    cases.push(case("skippable frame in front", skippable, "compression"));
    // A frame header that names a dictionary (Frame_Header_Descriptor bit 0-1: Dictionary_ID
    // flag), which the reader has not got.
    let mut dict = f.bundle();
    let descriptor = dict[4];
    if descriptor & 0x03 == 0 && descriptor & 0x20 == 0 {
        // Window descriptor byte follows the descriptor; the dictionary id comes after it.
        dict[4] = descriptor | 0x01;
        dict.insert(6, 0x2a);
    }
    cases.push(case("frame naming a dictionary", dict, "compression"));
    // A manifest (validly signed) listing a file and a file below it as if it were a directory.
    let mut m = f.manifest.clone();
    let a = FileEntry {
        path: "stack/a".into(),
        size: 1,
        sha256: "0".repeat(64),
        mode: 0o644,
    };
    let ab = FileEntry {
        path: "stack/a/b".into(),
        ..a.clone()
    };
    m.files.push(a);
    m.files.push(ab);
    m.files.sort_by(|x, y| x.path.cmp(&y.path));
    cases.push(case(
        "stack/a and stack/a/b",
        resigned(&f, &m),
        "invalid-manifest",
    ));

    assert_each_rejected_with_its_kind(&f, &cases);
    // A hostile name reaches messages escaped.
    let msg = match verify(&f, &cases[1].bytes) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(!msg.contains('\u{1b}'), "raw escape in: {msg:?}");
    assert!(msg.contains("\\u{1b}"), "{msg:?}");
}
