//! A bundle file changed between the first look (which names the profile to lock) and the
//! verified read. The installer reads one open file: a file renamed over the path is not seen
//! at all, and a file rewritten in place is caught because policy is decided on the manifest
//! the verified read produced, which must name the locked profile. Nothing reaches the store.
//!
//! These run the steps of `apply` in its order (`peek_manifest_from` → lock → `store::stage`
//! → `policy::check` → `Staged::commit`) on one open file, without Docker.

use smoker::layout::Layout;
use smoker::policy::HostFacts;
use smoker_testkit::bundle::{Fixture, tar_bytes, zstd};
use std::io::{Seek as _, SeekFrom};

/// The fixture's bundle, and the same payload under a manifest naming profile `other`, both
/// signed by the fixture key.
fn two_bundles(f: &Fixture) -> (Vec<u8>, Vec<u8>) {
    let mut m = f.manifest.clone();
    m.name = "other".into();
    let other = zstd(&tar_bytes(&f.entries_for(&m, &f.sign(&m))));
    (f.bundle(), other)
}

/// The first bundle written to a path, opened and looked at (as apply does before locking).
struct Opened {
    f: Fixture,
    second: Vec<u8>,
    dir: tempfile::TempDir,
    layout: Layout,
    path: std::path::PathBuf,
    file: std::fs::File,
    peek: smoker_format::manifest::Manifest,
}

fn opened() -> Opened {
    let f = Fixture::new();
    let (first, second) = two_bundles(&f);
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::new(dir.path().join("root"));
    let path = dir.path().join("bundle.tar.zst");
    std::fs::write(&path, &first).expect("write");
    let file = std::fs::File::open(&path).expect("open");
    let peek = smoker_format::bundle::read::peek_manifest_from(&file, &f.keys).expect("peek");
    Opened {
        f,
        second,
        dir,
        layout,
        path,
        file,
        peek,
    }
}

fn store_is_empty(layout: &Layout) -> bool {
    std::fs::read_dir(layout.store()).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_bundle_rewritten_in_place_after_the_first_look_is_refused_and_nothing_is_stored() {
    let Opened {
        f,
        second,
        dir: _dir,
        layout,
        path,
        mut file,
        peek,
    } = opened();
    let locked = peek.name.clone();
    // Between the look and the verified read, someone rewrites the same file.
    std::fs::write(&path, &second).expect("rewrite in place");
    file.seek(SeekFrom::Start(0)).expect("rewind");
    let staged = smoker::store::stage(&layout, file, &f.keys).expect("the new content verifies");
    assert_eq!(staged.manifest().name, "other");
    let err = smoker::policy::check(staged.manifest(), &locked, &[], &HostFacts::default())
        .expect_err("the verified manifest names another profile");
    assert!(
        err.to_string()
            .contains("the bundle file changed while it was being read"),
        "{err}"
    );
    drop(staged);
    assert!(store_is_empty(&layout), "nothing may reach the store");
}

#[test]
fn a_bundle_renamed_over_the_path_after_the_first_look_is_not_read_at_all() {
    let Opened {
        f,
        second,
        dir,
        layout,
        path,
        mut file,
        peek,
    } = opened();
    let swapped = dir.path().join("swapped.tar.zst");
    std::fs::write(&swapped, &second).expect("write");
    std::fs::rename(&swapped, &path).expect("rename over the path");
    file.seek(SeekFrom::Start(0)).expect("rewind");
    let staged = smoker::store::stage(&layout, file, &f.keys).expect("the original verifies");
    // What was verified and will be stored is what was looked at, not what the path names now.
    assert_eq!(staged.manifest().name, peek.name);
    let facts = HostFacts {
        environment: Some(("prod".into(), "declared in the host config".into())),
        ..HostFacts::default()
    };
    smoker::policy::check(staged.manifest(), &peek.name, &[], &facts)
        .expect("the same profile, a host of its environment");
}
