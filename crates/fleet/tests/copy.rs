//! The resumable copy over real OpenSSH: a `.part` left by a cut copy is continued from its
//! offset (only the rest crosses the wire), a complete copy is not sent again, and a `.part`
//! whose bytes differ is caught by the sha256 check on the host and removed.

use smoker_fleet::inventory::Host;
use smoker_fleet::ssh::Ssh;
use smoker_testkit::sshd::{ClientKey, Sshd};

fn host(sshd: &Sshd, client: &ClientKey, remote_dir: &str) -> Host {
    Host {
        name: "copy-test".into(),
        ssh: "root@127.0.0.1".into(),
        groups: Vec::new(),
        profile: "svc".into(),
        arch: "amd64".into(),
        environment: "prod".into(),
        port: sshd.port,
        identity: Some(client.private.display().to_string()),
        ssh_options: vec![
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
        ],
        installer: vec!["smoker-install".into()],
        apply_args: Vec::new(),
        remote_dir: remote_dir.into(),
    }
}

#[test]
fn a_cut_copy_resumes_from_its_offset_and_a_damaged_part_is_refused() {
    let client = ClientKey::new();
    let sshd = Sshd::start(&client);
    let work = smoker_testkit::tempdir("smoker-copy-");
    let local = work.path().join("b.tar.zst");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).expect("write");
    let (sha, size) = smoker_format::digest::sha256_file(&local).expect("sha");
    let remote = work.path().join("remote");
    let h = host(&sshd, &client, &remote.display().to_string());
    let control = smoker_testkit::tempdir("smk-ctl-");
    let ssh = Ssh::new(&h, 5, control.path());

    // A copy cut after 1 MB left this behind.
    std::fs::create_dir_all(&remote).expect("mkdir");
    std::fs::write(remote.join("b.tar.zst.part"), &data[..1_000_000]).expect("part");
    let c = ssh
        .copy_resumable(
            &local,
            size,
            &sha,
            &remote.display().to_string(),
            "b.tar.zst",
        )
        .expect("resumed copy");
    assert_eq!((c.resumed_from, c.sent), (1_000_000, size - 1_000_000));
    assert_eq!(
        std::fs::read(remote.join("b.tar.zst")).expect("copied"),
        data
    );
    assert!(!remote.join("b.tar.zst.part").exists());
    eprintln!(
        "MEASURE ssh copy resume: {} of {size} bytes sent again after a cut at 1000000",
        c.sent
    );

    // Again: nothing is sent.
    let c = ssh
        .copy_resumable(
            &local,
            size,
            &sha,
            &remote.display().to_string(),
            "b.tar.zst",
        )
        .expect("second copy");
    assert!(c.already_there && c.sent == 0, "{c:?}");

    // A damaged part: the check on the host refuses it and removes it.
    std::fs::remove_file(remote.join("b.tar.zst")).expect("rm");
    let mut bad = data[..1_000_000].to_vec();
    bad[10] ^= 0xff;
    std::fs::write(remote.join("b.tar.zst.part"), &bad).expect("bad part");
    let e = ssh
        .copy_resumable(
            &local,
            size,
            &sha,
            &remote.display().to_string(),
            "b.tar.zst",
        )
        .expect_err("damaged part");
    assert!(e.contains("does not match"), "{e}");
    assert!(!remote.join("b.tar.zst.part").exists() && !remote.join("b.tar.zst").exists());
    // The next copy starts from zero and succeeds.
    let c = ssh
        .copy_resumable(
            &local,
            size,
            &sha,
            &remote.display().to_string(),
            "b.tar.zst",
        )
        .expect("fresh copy");
    assert_eq!((c.resumed_from, c.sent), (0, size));
    ssh.close();
}
