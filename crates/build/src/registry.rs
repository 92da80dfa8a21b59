//! Talking to container registries: manifests and blobs by tag or digest, verified.
//!
//! Transport, the token dance and digest checks come from the `oci-client` crate; this module
//! adds what a release needs around it:
//! - credentials from the Docker config (`$DOCKER_CONFIG/config.json`, else
//!   `~/.docker/config.json`): `auths` entries, `credHelpers` and `credsStore` helpers; none
//!   means anonymous. A Bearer challenge is answered by asking the registry's token service
//!   (with those credentials, if any); a Basic challenge by sending them;
//! - plain HTTP only for registries on loopback (`127.0.0.0/8`, `::1`, `localhost`) and for
//!   mirrors declared `http://` in `registries.toml`; everything else is HTTPS (TLS through
//!   rustls with the *ring* provider);
//! - mirrors ([`crate::mirrors`]): every fetch tries the image registry's mirrors in order,
//!   then the registry itself; the source that answered is remembered per repository and
//!   asked first next time, and reported with each manifest;
//! - a blocking interface (one small tokio runtime inside) and error messages that say which
//!   image, which registry and what to do.

use anyhow::{Context as _, Result, anyhow, bail};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::Deserialize;
use smoker_format::manifest::Arch;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use crate::mirrors::{Mirrors, Source};

/// Docker image manifest list (multi-platform).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Every manifest type asked for when resolving a tag.
pub const ANY_MANIFEST: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];
/// Single-image manifest types.
pub const IMAGE_MANIFEST: [&str; 2] = [OCI_MANIFEST, DOCKER_MANIFEST];
/// Largest manifest or config accepted.
const MAX_SMALL_BLOB: usize = 4 * 1024 * 1024;

/// A content descriptor (OCI and Docker schema 2 share the shape).
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Platform (index entries).
    pub platform: Option<Platform>,
}

/// A platform as an index or an image config states it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `amd64`, `arm`, `arm64`.
    pub architecture: String,
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `v7`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match self.variant.as_deref() {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

/// How well a platform fits an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fit {
    /// Not this architecture (arm64 and arm/v6 are not arm/v7).
    No,
    /// `linux/arm` without a variant, which Docker reads as arm/v7.
    Implied,
    /// Exactly this architecture (`linux/amd64`, also `amd64/v1`; `linux/arm/v7`).
    Exact,
}

/// How well `p` fits `arch`.
pub fn fit(arch: Arch, p: &Platform) -> Fit {
    let (os, architecture, variant) = arch.oci_platform();
    let v = p.variant.as_deref().filter(|v| !v.is_empty());
    if p.os != os || p.architecture != architecture {
        return Fit::No;
    }
    match (arch, v) {
        (Arch::Amd64, None | Some("v1")) => Fit::Exact,
        (Arch::Armv7, Some(found)) if Some(found) == variant => Fit::Exact,
        (Arch::Armv7, None) => Fit::Implied,
        _ => Fit::No,
    }
}

/// The OCI name of an architecture (`linux/amd64`, `linux/arm/v7`).
pub fn platform_name(arch: Arch) -> String {
    let (os, a, v) = arch.oci_platform();
    match v {
        Some(v) => format!("{os}/{a}/{v}"),
        None => format!("{os}/{a}"),
    }
}

/// A parsed manifest: an index (list) or an image manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestDoc {
    /// Schema version (2).
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: u32,
    /// Media type, when the document states it.
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// Index entries.
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
    /// Image config.
    #[serde(default)]
    pub config: Option<Descriptor>,
    /// Image layers.
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
}

impl ManifestDoc {
    /// True for an index or manifest list.
    pub fn is_index(&self) -> bool {
        matches!(self.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
            || (self.media_type.is_none() && self.manifests.is_some())
    }
}

/// The parts of an image config a release looks at.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageConfig {
    /// Architecture.
    pub architecture: String,
    /// OS.
    pub os: String,
    /// Variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// Layer diff IDs.
    pub rootfs: RootFs,
}

impl ImageConfig {
    /// The config's platform.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
    }
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// Uncompressed layer digests, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// A manifest fetched and checked against its digest.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The digest of the manifest's bytes, as the registry reported it and as computed.
    pub digest: String,
    /// The parsed document.
    pub doc: ManifestDoc,
    /// The mirror that served it (its URL), `None` for the image's own registry.
    pub mirror: Option<String>,
}

/// A blocking registry client for the release tasks.
pub struct Registries {
    rt: tokio::runtime::Runtime,
    clients: Mutex<BTreeMap<String, std::sync::Arc<Client>>>,
    authed: Mutex<BTreeSet<(String, String)>>,
    mirrors: Mirrors,
    plain_http: BTreeSet<String>,
    /// Per canonical `registry/repository`: the index (into its sources) that answered last.
    answered: Mutex<BTreeMap<String, usize>>,
}

/// Where a registry's credentials came from (for messages; never the secret).
fn credential_note(registry: &str) -> (RegistryAuth, String) {
    let keys: Vec<String> = if matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![registry.to_string(), format!("https://{registry}")]
    };
    let mut problem = None;
    for key in &keys {
        match docker_credential::get_credential(key) {
            Ok(docker_credential::DockerCredential::UsernamePassword(u, p)) => {
                return (
                    RegistryAuth::Basic(u.clone(), p),
                    format!("credentials of `{u}` from the Docker config"),
                );
            }
            Ok(docker_credential::DockerCredential::IdentityToken(_)) => {
                problem = Some(format!(
                    "the Docker config holds an identity token for {key}, which is not supported; log in with a username and password or access token (`docker login {registry}`)"
                ));
            }
            Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured)
            | Err(docker_credential::CredentialRetrievalError::ConfigNotFound)
            | Err(docker_credential::CredentialRetrievalError::ConfigReadError) => {}
            Err(docker_credential::CredentialRetrievalError::HelperFailure {
                helper,
                stdout,
                stderr,
            }) => {
                let said = format!("{} {}", stdout.trim(), stderr.trim());
                if !said.to_ascii_lowercase().contains("not found") {
                    problem = Some(format!(
                        "credential helper {helper} failed for {key}: {}",
                        said.trim()
                    ));
                }
            }
            Err(e) => problem = Some(format!("reading credentials for {key}: {e}")),
        }
    }
    let note = match problem {
        Some(p) => format!("anonymous ({p})"),
        None => "anonymous (no credentials in the Docker config)".to_string(),
    };
    (RegistryAuth::Anonymous, note)
}

pub use crate::mirrors::is_loopback;

/// Parses an image reference (Docker's normalisation: `mongo:7` is `docker.io/library/mongo:7`).
pub fn parse_reference(reference: &str) -> Result<Reference> {
    reference
        .parse::<Reference>()
        .map_err(|e| anyhow!("`{reference}` is not a valid image reference: {e}"))
}

impl Registries {
    /// A client without mirrors. TLS uses rustls with the ring provider.
    pub fn new() -> Result<Registries> {
        Registries::with_mirrors(Mirrors::none())
    }

    /// A client that fetches through `mirrors` (see [`crate::mirrors`]).
    pub fn with_mirrors(mirrors: Mirrors) -> Result<Registries> {
        // Several clients may race to install it; any one winning is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime for registry requests")?;
        Ok(Registries {
            rt,
            clients: Mutex::new(BTreeMap::new()),
            authed: Mutex::new(BTreeSet::new()),
            plain_http: mirrors.plain_http_hosts(),
            mirrors,
            answered: Mutex::new(BTreeMap::new()),
        })
    }

    /// Runs `f` against each source of `r` in order (the one that answered last for this
    /// repository first) until one succeeds; returns its result and the mirror that gave it.
    /// When every source fails, the error names each source and what it said.
    fn through_sources<T>(
        &self,
        r: &Reference,
        f: impl Fn(&Reference) -> Result<T>,
    ) -> Result<(T, Option<String>)> {
        let sources: Vec<Source> = self.mirrors.sources(r);
        if sources.len() == 1 && sources[0].mirror.is_none() {
            return f(r).map(|t| (t, None));
        }
        let key = format!("{}/{}", r.registry(), r.repository());
        let first = self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0);
        let order = std::iter::once(first).chain((0..sources.len()).filter(|i| *i != first));
        let mut failures = Vec::new();
        for i in order {
            let Some(source) = sources.get(i) else {
                continue;
            };
            match f(&source.reference) {
                Ok(t) => {
                    self.answered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, i);
                    return Ok((t, source.mirror.clone()));
                }
                Err(e) => failures.push(format!("{}: {e:#}", source.label())),
            }
        }
        bail!(
            "no source could serve {} (tried in the order of {}):\n  {}",
            r.whole(),
            self.mirrors
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the mirrors configuration".into()),
            failures.join("\n  ")
        )
    }

    fn client(&self, registry: &str) -> std::sync::Arc<Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry(registry.to_string())
            .or_insert_with(|| {
                let protocol = if is_loopback(registry) || self.plain_http.contains(registry) {
                    ClientProtocol::HttpsExcept(vec![registry.to_string()])
                } else {
                    ClientProtocol::Https
                };
                std::sync::Arc::new(Client::new(ClientConfig {
                    protocol,
                    platform_resolver: None,
                    connect_timeout: Some(std::time::Duration::from_secs(15)),
                    read_timeout: Some(std::time::Duration::from_secs(120)),
                    ..ClientConfig::default()
                }))
            })
            .clone()
    }

    /// Authenticates for pulls from `r`'s repository (once per repository).
    fn auth(&self, r: &Reference) -> Result<std::sync::Arc<Client>> {
        let registry = r.resolve_registry().to_string();
        let client = self.client(&registry);
        let key = (registry.clone(), r.repository().to_string());
        if self
            .authed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
        {
            return Ok(client);
        }
        let (auth, note) = credential_note(r.registry());
        self.rt
            .block_on(client.auth(r, &auth, RegistryOperation::Pull))
            .map_err(|e| explain(e, r, &note))?;
        self.authed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        Ok(client)
    }

    /// Fetches the manifest `r` names (by tag or digest), accepting `accept` media types,
    /// through `r`'s mirrors when it has some. The bytes are checked against the digest the
    /// source reports and the one `r` names.
    pub fn manifest(&self, r: &Reference, accept: &[&str]) -> Result<Fetched> {
        let ((digest, doc), mirror) = self.through_sources(r, |s| self.manifest_from(s, accept))?;
        Ok(Fetched {
            digest,
            doc,
            mirror,
        })
    }

    fn manifest_from(&self, r: &Reference, accept: &[&str]) -> Result<(String, ManifestDoc)> {
        let client = self.auth(r)?;
        let (auth, note) = credential_note(r.registry());
        let (bytes, digest) = self
            .rt
            .block_on(client.pull_manifest_raw(r, &auth, accept))
            .map_err(|e| explain(e, r, &note))?;
        if bytes.len() > MAX_SMALL_BLOB {
            bail!(
                "manifest of {} is {} bytes; refusing more than 4 MiB",
                r.whole(),
                bytes.len()
            );
        }
        let computed = format!("sha256:{}", smoker_format::digest::sha256_hex(&bytes));
        if computed != digest {
            bail!(
                "manifest of {} hashes to {computed}, but the registry says {digest}",
                r.whole()
            );
        }
        let doc: ManifestDoc = serde_json::from_slice(&bytes)
            .with_context(|| format!("manifest of {} is not valid JSON", r.whole()))?;
        if doc.schema_version != 2 {
            bail!(
                "manifest of {} has schema version {}; only schema 2 (Docker v2 and OCI) is supported — push the image again with a current Docker or buildx",
                r.whole(),
                doc.schema_version
            );
        }
        if let Some(want) = r.digest()
            && want != digest
        {
            bail!("asked {} for {want}, it served {digest}", r.registry());
        }
        Ok((digest, doc))
    }

    /// Fetches a small blob (an image config) into memory, checked against its digest,
    /// through `r`'s mirrors when it has some.
    pub fn small_blob(&self, r: &Reference, desc: &Descriptor) -> Result<Vec<u8>> {
        Ok(self
            .through_sources(r, |s| self.small_blob_from(s, desc))?
            .0)
    }

    fn small_blob_from(&self, r: &Reference, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size as usize > MAX_SMALL_BLOB {
            bail!(
                "blob {} of {} is {} bytes; refusing more than 4 MiB in memory",
                desc.digest,
                r.whole(),
                desc.size
            );
        }
        let client = self.auth(r)?;
        let mut out: Vec<u8> = Vec::new();
        let d = oci_descriptor(desc);
        self.rt
            .block_on(client.pull_blob(r, &d, &mut out))
            .map_err(|e| explain(e, r, "").context(format!("fetching blob {}", desc.digest)))?;
        if out.len() as u64 != desc.size {
            bail!(
                "blob {} of {} is {} bytes, the manifest says {}",
                desc.digest,
                r.whole(),
                out.len(),
                desc.size
            );
        }
        Ok(out)
    }

    /// Fetches a blob into the file `dest` (written under a temporary name, checked against
    /// its digest and size, then renamed into place), through `r`'s mirrors when it has some.
    pub fn blob_to_file(&self, r: &Reference, desc: &Descriptor, dest: &Path) -> Result<()> {
        self.through_sources(r, |s| self.blob_to_file_from(s, desc, dest))?;
        Ok(())
    }

    fn blob_to_file_from(&self, r: &Reference, desc: &Descriptor, dest: &Path) -> Result<()> {
        let client = self.auth(r)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        let d = oci_descriptor(desc);
        let std_file = tmp
            .reopen()
            .with_context(|| format!("opening {}", tmp.path().display()))?;
        let short = desc.digest.get(..19).unwrap_or(&desc.digest);
        let progress = crate::fetch_progress::Watch::start(
            tmp.path(),
            desc.size,
            &format!("fetching {short}"),
        );
        let fetched = self.rt.block_on(async {
            let mut f = tokio::fs::File::from_std(std_file);
            client.pull_blob(r, &d, &mut f).await?;
            tokio::io::AsyncWriteExt::flush(&mut f).await?;
            f.sync_all().await?;
            Ok::<(), OciDistributionError>(())
        });
        drop(progress);
        fetched.map_err(|e| explain(e, r, "").context(format!("fetching blob {}", desc.digest)))?;
        let len = std::fs::metadata(tmp.path())
            .map(|m| m.len())
            .with_context(|| format!("reading {}", tmp.path().display()))?;
        if len != desc.size {
            bail!(
                "blob {} of {} is {len} bytes, the manifest says {}",
                desc.digest,
                r.whole(),
                desc.size
            );
        }
        tmp.persist(dest)
            .map_err(|e| anyhow!("storing {}: {}", dest.display(), e.error))?;
        Ok(())
    }
}

fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: i64::try_from(d.size).unwrap_or(i64::MAX),
        ..OciDescriptor::default()
    }
}

/// Turns a client error into a message naming the image, the registry and what to do.
fn explain(e: OciDistributionError, r: &Reference, auth_note: &str) -> anyhow::Error {
    let registry = r.registry();
    let image = r.whole();
    let how = if auth_note.is_empty() {
        String::new()
    } else {
        format!(" (credentials: {auth_note})")
    };
    match &e {
        OciDistributionError::AuthenticationFailure(reason) => anyhow!(
            "registry {registry} refused to authenticate for {image}{how}: {}; check `docker login {registry}` or the credential helper",
            reason.trim()
        ),
        OciDistributionError::UnauthorizedError { .. } => anyhow!(
            "registry {registry} denied access to {image}{how}; log in with `docker login {registry}` (or configure a credential helper) and check the repository name"
        ),
        OciDistributionError::ImageManifestNotFoundError(_) => anyhow!(
            "{image} does not exist in registry {registry}: no such repository, tag or digest"
        ),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|x| format!("{:?}", x.code).contains("Unknown")) =>
        {
            anyhow!("{image} does not exist in registry {registry}: {e}")
        }
        OciDistributionError::RequestError(re) => {
            let mut cause = re.to_string();
            let mut src = std::error::Error::source(re);
            while let Some(s) = src {
                cause = format!("{cause}: {s}");
                src = s.source();
            }
            anyhow!(
                "cannot reach registry {registry} for {image}: {cause}{}",
                if is_loopback(registry) {
                    ""
                } else {
                    " (plain HTTP is only used for registries on loopback; others must serve HTTPS)"
                }
            )
        }
        _ => anyhow!("registry {registry}, {image}: {e}{how}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(os: &str, a: &str, v: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: a.into(),
            variant: v.map(str::to_string),
        }
    }

    #[test]
    fn the_variant_matters() {
        assert_eq!(fit(Arch::Armv7, &p("linux", "arm", Some("v7"))), Fit::Exact);
        assert_eq!(fit(Arch::Armv7, &p("linux", "arm", None)), Fit::Implied);
        assert_eq!(fit(Arch::Armv7, &p("linux", "arm", Some("v6"))), Fit::No);
        assert_eq!(fit(Arch::Armv7, &p("linux", "arm64", Some("v8"))), Fit::No);
        assert_eq!(fit(Arch::Armv7, &p("windows", "arm", Some("v7"))), Fit::No);
        assert_eq!(fit(Arch::Amd64, &p("linux", "amd64", None)), Fit::Exact);
        assert_eq!(
            fit(Arch::Amd64, &p("linux", "amd64", Some("v1"))),
            Fit::Exact
        );
        assert_eq!(fit(Arch::Amd64, &p("linux", "amd64", Some("v3"))), Fit::No);
        assert_eq!(fit(Arch::Amd64, &p("unknown", "unknown", None)), Fit::No);
        assert_eq!(platform_name(Arch::Armv7), "linux/arm/v7");
    }

    #[test]
    fn only_loopback_registries_are_plain_http() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.1.2.3"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("ghcr.io"));
        assert!(!is_loopback("docker.io"));
    }
}
