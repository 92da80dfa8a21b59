//! Minisign keys and signatures.
//!
//! Keys use the minisign formats (so the reference `minisign` CLI and this crate read each
//! other's keys and signatures). Signing is done here with Ed25519 directly rather than through
//! the `minisign` crate, because that crate mixes random noise into every signature and a
//! reproducible bundle embeds its manifest signature: Ed25519 without noise is deterministic,
//! so the same manifest and key always give the same signature bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use blake2::{Blake2b512, Digest};
use ed25519_dalek::{Signer as _, SigningKey};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

/// Environment variable holding the secret key's password (for CI).
pub const PASSWORD_ENV: &str = "SMOKER_KEY_PASSWORD";

/// Errors of key handling and signature checks.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file is not in minisign format.
    #[error("{path}: not a minisign key: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key needs a password and none can be asked for.
    #[error(
        "{path} is password-protected: set {PASSWORD_ENV} or run on a terminal to be asked for it"
    )]
    PasswordNeeded {
        /// The key file.
        path: PathBuf,
    },
    /// Refusing to overwrite an existing key.
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
    /// No trusted key was found.
    #[error("no trusted public key found in {0}")]
    NoKeys(PathBuf),
    /// A signature file cannot be parsed.
    #[error("signature is malformed: {0}")]
    MalformedSignature(String),
    /// The signature was made by a key that is not trusted here.
    #[error("signed by key {key_id}, which is not among the trusted keys ({trusted})")]
    UntrustedKey {
        /// Key id of the signature.
        key_id: String,
        /// Key ids trusted here.
        trusted: String,
    },
    /// The signature does not match the data.
    #[error("signature by key {key_id} does not match the signed data")]
    BadSignature {
        /// Key id of the signature.
        key_id: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |source| SigningError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Formats a minisign key id (8 little-endian bytes) the way the CLI prints it.
pub fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(keynum) {
        *d = *s;
    }
    format!("{:016X}", u64::from_le_bytes(b))
}

/// A secret key ready to sign.
pub struct SecretKey {
    keynum: [u8; 8],
    signing: SigningKey,
}

impl SecretKey {
    /// Loads a minisign secret key file (password-protected or not). The password comes from
    /// `password`, else [`PASSWORD_ENV`], else a prompt when standard input is a terminal.
    pub fn load(path: &Path, password: Option<String>) -> Result<SecretKey, SigningError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let bad = |reason: &str| SigningError::BadKey {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let encoded = text.lines().nth(1).ok_or_else(|| bad("missing key line"))?;
        let raw = B64
            .decode(encoded.trim())
            .map_err(|_| bad("key line is not base64"))?;
        if raw.len() != 158 || &raw[0..2] != b"Ed" {
            return Err(bad("unexpected length or algorithm"));
        }
        let encrypted = raw[2..4] != [0, 0];
        let sk_box = minisign::SecretKeyBox::from_string(&text).map_err(|e| bad(&e.to_string()))?;
        // Layout of the decrypted key: alg(2) kdf(2) chk(2) salt(32) ops(8) mem(8) keynum(8)
        // secret(64: seed + public) checksum(32).
        let bytes = if encrypted {
            let password = match password.or_else(|| std::env::var(PASSWORD_ENV).ok()) {
                Some(p) => Some(p),
                None if std::io::stdin().is_terminal() => None,
                None => {
                    return Err(SigningError::PasswordNeeded {
                        path: path.to_path_buf(),
                    });
                }
            };
            minisign::SecretKey::from_box(sk_box, password)
                .map_err(|e| bad(&format!("{e} (wrong password?)")))?
                .to_bytes()
        } else {
            // The reference CLI (`minisign -G -W`) leaves the checksum of an unencrypted key
            // zeroed, which the minisign crate rejects as corrupted; check such keys here.
            check_unencrypted(&raw).map_err(bad)?;
            raw
        };
        let (Some(keynum), Some(seed)) = (bytes.get(54..62), bytes.get(62..94)) else {
            return Err(bad("key is truncated"));
        };
        let mut k = [0u8; 8];
        k.copy_from_slice(keynum);
        let mut s = [0u8; 32];
        s.copy_from_slice(seed);
        Ok(SecretKey {
            keynum: k,
            signing: SigningKey::from_bytes(&s),
        })
    }

    /// A key from its raw parts: the 8-byte key number and the 32-byte Ed25519 seed. For keys
    /// held outside a minisign key file, and for fixed test keys.
    pub fn from_seed(keynum: [u8; 8], seed: [u8; 32]) -> SecretKey {
        SecretKey {
            keynum,
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The key id, as the minisign CLI prints it.
    pub fn key_id(&self) -> String {
        key_id(&self.keynum)
    }

    /// The matching public key in minisign's public key file format.
    pub fn public_key_file(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.keynum);
        raw.extend_from_slice(self.signing.verifying_key().as_bytes());
        format!(
            "untrusted comment: minisign public key {}\n{}\n",
            self.key_id(),
            B64.encode(raw)
        )
    }

    /// Signs a stream (minisign "prehashed" BLAKE2b-512 mode), deterministically, and returns
    /// the complete `.minisig` file text.
    pub fn sign<R: Read>(
        &self,
        mut data: R,
        trusted_comment: &str,
    ) -> Result<String, std::io::Error> {
        let mut h = Blake2b512::new();
        std::io::copy(&mut data, &mut h)?;
        let digest = h.finalize();
        let sig = self.signing.sign(&digest);
        let mut sig_box = Vec::with_capacity(74);
        sig_box.extend_from_slice(b"ED");
        sig_box.extend_from_slice(&self.keynum);
        sig_box.extend_from_slice(&sig.to_bytes());
        let trusted_comment = trusted_comment.replace(['\n', '\r'], " ");
        let mut global = sig.to_bytes().to_vec();
        global.extend_from_slice(trusted_comment.as_bytes());
        let global_sig = self.signing.sign(&global);
        Ok(format!(
            "untrusted comment: signature from smoker-release key {}\n{}\ntrusted comment: {}\n{}\n",
            self.key_id(),
            B64.encode(sig_box),
            trusted_comment,
            B64.encode(global_sig.to_bytes())
        ))
    }
}

/// Checks an unencrypted secret key (decoded bytes, layout as in [`SecretKey::load`]): its
/// checksum must be right or, as the reference CLI writes it, all zero; and its public half
/// must be the one its seed gives.
fn check_unencrypted(raw: &[u8]) -> Result<(), &'static str> {
    use blake2::digest::consts::U32;
    let (Some(alg), Some(keynum_sk), Some(seed), Some(public), Some(chk)) = (
        raw.get(0..2),
        raw.get(54..126),
        raw.get(62..94),
        raw.get(94..126),
        raw.get(126..158),
    ) else {
        return Err("key is truncated");
    };
    if chk.iter().any(|b| *b != 0) {
        let mut h = blake2::Blake2b::<U32>::new();
        h.update(alg);
        h.update(keynum_sk);
        if h.finalize().as_slice() != chk {
            return Err("corrupted key (checksum mismatch)");
        }
    }
    let mut s = [0u8; 32];
    s.copy_from_slice(seed);
    if SigningKey::from_bytes(&s).verifying_key().as_bytes() != public {
        return Err("corrupted key (the public half does not match the secret half)");
    }
    Ok(())
}

/// Generates a key pair in minisign format and writes both files (the secret one mode 600).
/// With `password` `None` the secret key is stored unencrypted.
pub fn generate(
    secret_path: &Path,
    public_path: &Path,
    password: Option<String>,
) -> Result<String, SigningError> {
    for p in [secret_path, public_path] {
        if p.exists() {
            return Err(SigningError::Exists(p.to_path_buf()));
        }
    }
    let gen_err = |e: minisign::PError| SigningError::BadKey {
        path: secret_path.to_path_buf(),
        reason: e.to_string(),
    };
    let kp = match password {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p)),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(gen_err)?;
    let sk_text = kp.sk.to_box(None).map_err(gen_err)?.into_string();
    let pk_text = kp.pk.to_box().map_err(gen_err)?.into_string();
    for p in [secret_path, public_path] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
    }
    write_new(secret_path, sk_text.as_bytes(), 0o600)?;
    write_new(public_path, pk_text.as_bytes(), 0o644)?;
    Ok(key_id(kp.pk.keynum()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(io_err(path))
}

/// One trusted public key.
pub struct TrustedKey {
    /// Key id.
    pub id: String,
    /// Where it was loaded from.
    pub origin: PathBuf,
    /// What it may sign for.
    pub scope: KeyScope,
    key: minisign::PublicKey,
}

/// What a trusted key may sign for. A key given alone (`--key`) or lying directly in the keys
/// directory signs anything; a key in `<keys>/<environment>/` signs only bundles of that
/// environment, and only the profiles listed in `<keys>/<environment>/profiles` when that file
/// exists (one name a line, `#` comments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    /// The only environment it signs for (`None`: any).
    pub environment: Option<String>,
    /// The only profiles it signs for (`None`: any).
    pub profiles: Option<Vec<String>>,
}

impl KeyScope {
    /// True when a bundle of `profile` for `environment` is within this scope.
    pub fn allows(&self, environment: &str, profile: &str) -> bool {
        self.environment.as_deref().is_none_or(|e| e == environment)
            && self
                .profiles
                .as_ref()
                .is_none_or(|p| p.iter().any(|x| x == profile))
    }
}

impl std::fmt::Display for KeyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.environment, &self.profiles) {
            (None, None) => f.write_str("any environment and profile"),
            (Some(e), None) => write!(f, "environment `{e}`, any profile"),
            (e, Some(p)) => write!(
                f,
                "environment `{}`, profiles {}",
                e.as_deref().unwrap_or("any"),
                if p.is_empty() {
                    "(none)".to_string()
                } else {
                    p.iter()
                        .map(|x| format!("`{x}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        }
    }
}

/// The set of public keys a host trusts (several allow key rotation).
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<TrustedKey>,
}

impl TrustedKeys {
    /// Loads one public key file.
    pub fn from_file(path: &Path) -> Result<TrustedKeys, SigningError> {
        let mut t = TrustedKeys::default();
        t.add_file(path)?;
        Ok(t)
    }

    /// Loads every `*.pub` file of a directory, each signing anything, and every `*.pub` of
    /// its subdirectories `<environment>/`, each scoped to that environment (and to the
    /// profiles of `<environment>/profiles` when that file exists). At least one key is
    /// required.
    pub fn from_dir(dir: &Path) -> Result<TrustedKeys, SigningError> {
        let mut t = TrustedKeys::default();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in &entries {
            if p.extension().is_some_and(|e| e == "pub") && p.is_file() {
                t.add_file(p)?;
            }
        }
        for sub in entries.iter().filter(|p| p.is_dir()) {
            let Some(env) = sub.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !crate::manifest::is_name(env) {
                continue;
            }
            let profiles_file = sub.join("profiles");
            let profiles = match std::fs::read_to_string(&profiles_file) {
                Ok(text) => Some(parse_profiles(&text, &profiles_file)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_err(&profiles_file)(e)),
            };
            let mut keys: Vec<PathBuf> = std::fs::read_dir(sub)
                .map_err(io_err(sub))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pub"))
                .collect();
            keys.sort();
            for k in keys {
                t.add_scoped(
                    &k,
                    KeyScope {
                        environment: Some(env.to_string()),
                        profiles: profiles.clone(),
                    },
                )?;
            }
        }
        if t.keys.is_empty() {
            return Err(SigningError::NoKeys(dir.to_path_buf()));
        }
        Ok(t)
    }

    /// The scopes the key `id` was loaded with (one per copy of it; empty when unknown). A
    /// bundle is within the key's reach when any of them allows it.
    pub fn scopes(&self, id: &str) -> Vec<(&KeyScope, &Path)> {
        self.keys
            .iter()
            .filter(|k| k.id == id)
            .map(|k| (&k.scope, k.origin.as_path()))
            .collect()
    }

    /// Adds a public key file (minisign format: comment line, then the base64 key) that signs
    /// anything.
    pub fn add_file(&mut self, path: &Path) -> Result<(), SigningError> {
        self.add_scoped(path, KeyScope::default())
    }

    /// Adds a public key file that signs only within `scope`.
    pub fn add_scoped(&mut self, path: &Path, scope: KeyScope) -> Result<(), SigningError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or("");
        let key = minisign::PublicKey::from_base64(line).map_err(|e| SigningError::BadKey {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        self.keys.push(TrustedKey {
            id: key_id(key.keynum()),
            origin: path.to_path_buf(),
            scope,
            key,
        });
        Ok(())
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Checks a minisign signature over `data` and returns the key id and trusted comment.
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<Verified, SigningError> {
        let sig_box = minisign::SignatureBox::from_string(signature)
            .map_err(|e| SigningError::MalformedSignature(e.to_string()))?;
        let id = key_id(sig_box.keynum());
        let Some(trusted) = self.keys.iter().find(|k| k.id == id) else {
            return Err(SigningError::UntrustedKey {
                key_id: id,
                trusted: self
                    .keys
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        minisign::verify(
            &trusted.key,
            &sig_box,
            std::io::Cursor::new(data),
            true,
            false,
            true,
        )
        .map_err(|_| SigningError::BadSignature { key_id: id.clone() })?;
        let trusted_comment = sig_box
            .trusted_comment()
            .map_err(|e| SigningError::MalformedSignature(e.to_string()))?;
        Ok(Verified {
            key_id: id,
            trusted_comment,
        })
    }
}

/// The profile names of a `profiles` scope file: one a line, blank lines and `#` comments
/// ignored; a line that is not a profile name is an error (a typo must not widen nothing or
/// silently narrow).
fn parse_profiles(text: &str, path: &Path) -> Result<Vec<String>, SigningError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if !crate::manifest::is_name(line) {
            return Err(SigningError::BadKey {
                path: path.to_path_buf(),
                reason: format!("`{line}` is not a profile name"),
            });
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// The key id a signature names (without verifying anything).
pub fn signature_key_id(signature: &str) -> Result<String, SigningError> {
    let sig_box = minisign::SignatureBox::from_string(signature)
        .map_err(|e| SigningError::MalformedSignature(e.to_string()))?;
    Ok(key_id(sig_box.keynum()))
}

/// A signature that checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Id of the key that made it.
    pub key_id: String,
    /// The signed trusted comment.
    pub trusted_comment: String,
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    fn write_key(path: &Path, seed: u8) -> String {
        let k = SecretKey::from_seed([seed; 8], [seed; 32]);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, k.public_key_file()).expect("write");
        k.key_id()
    }

    #[test]
    fn keys_in_an_environment_directory_are_scoped_to_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let any = write_key(&dir.path().join("release.pub"), 1);
        let dev = write_key(&dir.path().join("dev/ci.pub"), 2);
        let prod = write_key(&dir.path().join("prod/release.pub"), 3);
        std::fs::write(
            dir.path().join("prod/profiles"),
            "# only these\ncloud\n\ndevice # pi\n",
        )
        .expect("profiles");
        let t = TrustedKeys::from_dir(dir.path()).expect("load");
        assert_eq!(t.keys().len(), 3);
        let scope = |id: &str| t.scopes(id)[0].0.clone();
        assert!(scope(&any).allows("prod", "cloud"));
        assert!(scope(&dev).allows("dev", "cloud"));
        assert!(!scope(&dev).allows("prod", "cloud"));
        assert!(scope(&prod).allows("prod", "device"));
        assert!(!scope(&prod).allows("prod", "other"));
        assert!(!scope(&prod).allows("dev", "cloud"));
        assert_eq!(scope(&dev).to_string(), "environment `dev`, any profile");
        assert_eq!(
            scope(&prod).to_string(),
            "environment `prod`, profiles `cloud`, `device`"
        );
        assert!(t.scopes("0000000000000000").is_empty());
        std::fs::write(dir.path().join("prod/profiles"), "not a name!\n").expect("profiles");
        assert!(TrustedKeys::from_dir(dir.path()).is_err());
    }

    #[test]
    fn a_directory_with_keys_only_in_subdirectories_is_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_key(&dir.path().join("prod/release.pub"), 4);
        assert_eq!(
            TrustedKeys::from_dir(dir.path())
                .expect("load")
                .keys()
                .len(),
            1
        );
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            TrustedKeys::from_dir(empty.path()),
            Err(SigningError::NoKeys(_))
        ));
    }
}
