//! A real OpenSSH server (Debian's `openssh-server`, `/usr/sbin/sshd`) on a loopback port, one
//! per simulated host, for the fleet tests: its own host key, the test's client key as the only
//! authorized key, stopped (by its pid) on drop or by [`Sshd::stop`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sshd program.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A client key pair for the tests' `ssh`.
pub struct ClientKey {
    _dir: tempfile::TempDir,
    /// The private key file.
    pub private: PathBuf,
    /// The public key file.
    pub public: PathBuf,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ssh-keygen is missing (Debian package openssh-client): {e}"));
    assert!(out.status.success(), "ssh-keygen: {}", crate::text(&out));
}

impl ClientKey {
    /// A fresh ed25519 key pair without a passphrase.
    pub fn new() -> ClientKey {
        let dir = crate::tempdir("smoker-ssh-client-");
        let private = dir.path().join("id_ed25519");
        keygen(&private);
        ClientKey {
            public: dir.path().join("id_ed25519.pub"),
            private,
            _dir: dir,
        }
    }
}

impl Default for ClientKey {
    fn default() -> Self {
        ClientKey::new()
    }
}

/// One running sshd.
pub struct Sshd {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts sshd on a free loopback port, trusting `client`'s public key; fails the test
    /// when openssh-server is not installed (scripts/install-deps.sh installs it).
    pub fn start(client: &ClientKey) -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install openssh-server (scripts/install-deps.sh)"
        );
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = crate::tempdir("smoker-sshd-");
        let hostkey = dir.path().join("host_ed25519");
        keygen(&hostkey);
        std::fs::copy(&client.public, dir.path().join("authorized_keys"))
            .unwrap_or_else(|e| panic!("authorized_keys: {e}"));
        let port = crate::ports::free_port();
        let config = dir.path().join("sshd_config");
        crate::write_file(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nMaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n",
                hk = hostkey.display(),
                ak = dir.path().join("authorized_keys").display(),
                pid = dir.path().join("sshd.pid").display(),
            ),
        );
        let log = std::fs::File::create(dir.path().join("sshd.log")).expect("sshd log");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {SSHD}: {e}"));
        let s = Sshd {
            port,
            child: Some(child),
            dir,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "sshd did not listen on {port}: {}",
                std::fs::read_to_string(s.dir.path().join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Stops it (the host becomes unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
