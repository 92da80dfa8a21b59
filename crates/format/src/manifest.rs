//! The bundle manifest: the one type that describes a release bundle.
//!
//! The release builder fills it, signs its canonical bytes and writes it as the first entry of
//! every bundle; the installer parses it only after the signature over those exact bytes has
//! been checked, and then holds every payload entry against it. Defining it once here is what
//! keeps the two sides in agreement.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of the bundle format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Path of the manifest inside a bundle (always the first entry).
pub const MANIFEST_PATH: &str = "manifest.json";
/// Path of the manifest's minisign signature inside a bundle (always the second entry).
pub const MANIFEST_SIG_PATH: &str = "manifest.json.minisig";
/// Upper bound on the size of a manifest; a larger one is rejected before it is parsed.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// Upper bound on the size of the manifest signature entry.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
/// Upper bound on the number of payload files a manifest may list.
pub const MAX_FILES: usize = 100_000;

/// A CPU architecture a bundle is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86_64 hosts (`linux/amd64`).
    Amd64,
    /// 32-bit ARM hosts such as the Raspberry Pi 3 (`linux/arm/v7`).
    Armv7,
}

impl Arch {
    /// Every supported architecture, in a fixed order.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Armv7];

    /// The short name used in file names and manifests (`amd64`, `armv7`).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Armv7 => "armv7",
        }
    }

    /// The OCI platform triple (`os`, `architecture`, `variant`).
    pub fn oci_platform(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            Arch::Amd64 => ("linux", "amd64", None),
            Arch::Armv7 => ("linux", "arm", Some("v7")),
        }
    }

    /// The architecture of the machine this code runs on, if it is a supported one.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::Amd64),
            "arm" => Some(Arch::Armv7),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" | "linux/amd64" => Ok(Arch::Amd64),
            "armv7" | "armhf" | "arm/v7" | "linux/arm/v7" => Ok(Arch::Armv7),
            other => Err(format!(
                "unknown architecture `{other}` (expected amd64 or armv7)"
            )),
        }
    }
}

/// The signed description of one bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bundle format version; see [`FORMAT_VERSION`].
    pub format: u32,
    /// Recipe name, which is also the host profile name.
    pub name: String,
    /// Release version (semver).
    pub version: String,
    /// Target architecture.
    pub arch: Arch,
    /// The one environment (dev, staging, prod, …) this bundle is configured for.
    pub environment: String,
    /// Where the bundle was built from.
    pub source: Source,
    /// Build time, seconds since the Unix epoch (from SOURCE_DATE_EPOCH or the commit time).
    pub created: u64,
    /// The oldest installer version that understands this bundle.
    pub min_installer_version: String,
    /// How to run the stack with compose.
    pub compose: ComposeSpec,
    /// Every service image, pinned by digest.
    pub images: Vec<Image>,
    /// Migration scripts, in the order they run.
    pub migrations: Vec<Migration>,
    /// How migration scripts are run, when there are any.
    pub migration_runner: Option<Runner>,
    /// Health gate definition.
    pub health: Health,
    /// Backup and restore hooks, when the recipe declares them.
    pub backup: Option<Backup>,
    /// Names of the host secrets the stack needs; values live only on the host.
    pub required_secrets: Vec<String>,
    /// Every payload file, in the order the bundle stores them (sorted by path).
    pub files: Vec<FileEntry>,
    /// What each service asks of the host beyond an unprivileged container, by service name;
    /// absent (and not serialized) when no service asks anything, so such manifests keep
    /// their bytes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub host_access: std::collections::BTreeMap<String, crate::host_access::HostAccess>,
    /// Features of the compose file that not every engine or compose front end runs (see
    /// [`crate::capability`]); absent (and not serialized) when there are none.
    #[serde(default, skip_serializing_if = "Needs::is_empty")]
    pub requires: Needs,
}

/// Features of a compose file that not every engine or compose front end runs (the rules that
/// judge them against a host are in [`crate::capability`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// Services whose healthcheck sets `start_interval` (Docker Engine 25 or later).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_interval: Vec<String>,
    /// The file sets a top-level `name:` (compose v2 only; v1 rejects the file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub project_name: bool,
    /// Services with a `platform:`, and the platform.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub platforms: std::collections::BTreeMap<String, String>,
}

impl Needs {
    /// True when the stack needs nothing special (not serialized then, so manifests keep their
    /// bytes).
    pub fn is_empty(&self) -> bool {
        self.start_interval.is_empty() && !self.project_name && self.platforms.is_empty()
    }
}

/// Provenance of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Git commit of the recipe tree, when it is in a git repository.
    pub commit: Option<String>,
    /// True when the recipe tree had uncommitted changes.
    pub dirty: bool,
    /// Path of the recipe directory relative to the repository root.
    pub recipe_dir: String,
}

/// How the installer calls compose for this bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    /// Compose files in `-f` order, relative to the bundle root: the user's file carried byte
    /// for byte, then the generated override that pins images.
    pub files: Vec<String>,
    /// Directory relative paths in the compose file resolve against.
    pub project_directory: String,
    /// Non-secret configuration for the bundle's environment (KEY=VALUE lines).
    pub env_file: Option<String>,
}

/// One service image, pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Compose service name.
    pub service: String,
    /// The reference written in the compose file (tag form), for humans.
    pub original: String,
    /// Repository without tag or digest.
    pub repository: String,
    /// The platform manifest digest for this bundle's architecture.
    pub digest: String,
    /// Digest of the multi-platform index the tag pointed to, when there was one.
    pub index_digest: Option<String>,
    /// Digest of the image config, which is the image ID Docker reports.
    pub config_digest: Option<String>,
    /// Path of the image archive inside the bundle (offline bundles only).
    pub archive: Option<String>,
}

impl Image {
    /// `repository@digest`, the reference a host pulls.
    pub fn pinned_ref(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// One ordered migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// Stable identifier (the file name without extension, e.g. `0002-upper`).
    pub id: String,
    /// Path inside the bundle.
    pub path: String,
    /// sha256 of the script.
    pub sha256: String,
}

/// A command run in a one-off container of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runner {
    /// Compose service whose image runs the command.
    pub service: String,
    /// Command; `{script}` is replaced with the script path inside the container.
    pub command: Vec<String>,
}

/// Health gate definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// How long the gate may take before the stack counts as unhealthy, in seconds.
    pub window_secs: u64,
    /// Consecutive failures of one check that make the stack unhealthy.
    pub failures: u32,
    /// Consecutive rounds in which every check passes before the stack counts as healthy.
    pub successes: u32,
    /// Pause between rounds of checks, in milliseconds.
    pub interval_ms: u64,
    /// HTTP checks.
    pub http: Vec<HttpCheck>,
    /// How long a check's service may refuse connections after its container started before a
    /// refusal counts as a failure, in milliseconds; absent: the installer's default
    /// (`DEFAULT_CONNECT_GRACE_MS`). Absent fields are not serialized, so manifests that do not
    /// set it keep their bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_grace_ms: Option<u64>,
}

/// The grace period for refused connections when a manifest sets none (see
/// [`Health::connect_grace_ms`]).
pub const DEFAULT_CONNECT_GRACE_MS: u64 = 15_000;

/// One HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// Name shown in reports.
    pub name: String,
    /// URL to GET.
    pub url: String,
    /// Expected status code.
    pub status: u16,
    /// Substring the body must contain, when set.
    pub body_contains: Option<String>,
    /// Request timeout in milliseconds.
    pub timeout_ms: u64,
    /// Slowest acceptable answer in milliseconds, when set.
    pub max_latency_ms: Option<u64>,
    /// The compose service that answers this check, when set: the check starts as soon as that
    /// service's new container runs, and its failures name the service. Not serialized when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// Backup and restore hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// Service whose container runs the hooks.
    pub service: String,
    /// Command that writes a dump to stdout.
    pub command: Vec<String>,
    /// Command that reads a dump from stdin.
    pub restore: Vec<String>,
    /// File extension of dumps (e.g. `archive.gz`).
    pub extension: String,
    /// Restore the matching backup by itself when rolling back across migrations (otherwise
    /// such a rollback needs `--restore-data`).
    #[serde(default)]
    pub restore_on_rollback: bool,
    /// Command that reads a dump from stdin and exits 0 only if it is a usable dump (run in
    /// the same service's container when a host verifies its backups). Empty: none declared
    /// (and left out of the manifest, so manifests without one are unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify: Vec<String>,
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the bundle (forward slashes, no `.` or `..` parts).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
    /// Unix mode: 0o644 or 0o755.
    pub mode: u32,
}

/// Why a manifest is not acceptable even though its signature is good.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes are not the JSON this crate expects.
    #[error("manifest is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A newer or unknown format.
    #[error(
        "bundle format {found} is not supported (this installer reads format {FORMAT_VERSION}); upgrade smoker-install"
    )]
    Format {
        /// Format number found.
        found: u32,
    },
    /// A field breaks a rule of the format.
    #[error("manifest is not valid: {0}")]
    Invalid(String),
}

impl Manifest {
    /// A manifest with no files, images, migrations, checks or hooks: what a bundle of an empty
    /// recipe would say. A starting point for code (and tests) that fill in the rest.
    pub fn skeleton(name: &str, version: &str, arch: Arch, environment: &str) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            name: name.to_string(),
            version: version.to_string(),
            arch,
            environment: environment.to_string(),
            source: Source {
                commit: None,
                dirty: false,
                recipe_dir: String::new(),
            },
            created: 0,
            min_installer_version: "0.1.0".to_string(),
            compose: ComposeSpec {
                files: Vec::new(),
                project_directory: "stack".to_string(),
                env_file: None,
            },
            images: Vec::new(),
            migrations: Vec::new(),
            migration_runner: None,
            health: Health {
                window_secs: 60,
                failures: 3,
                successes: 2,
                interval_ms: 1000,
                http: Vec::new(),
                connect_grace_ms: None,
            },
            backup: None,
            required_secrets: Vec::new(),
            files: Vec::new(),
            host_access: Default::default(),
            requires: Default::default(),
        }
    }

    /// The canonical bytes: compact JSON with keys sorted, as signed.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // The key order is made explicitly (crate::canonical), not left to serde_json's map type.
        match crate::canonical::to_vec(self) {
            Ok(mut out) => {
                out.push(b'\n');
                out
            }
            Err(_) => Vec::new(),
        }
    }

    /// Parses and checks manifest bytes (call only after the signature over them is checked).
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let probe: serde_json::Value = serde_json::from_slice(bytes)?;
        if let Some(found) = probe.get("format").and_then(|f| f.as_u64())
            && found != u64::from(FORMAT_VERSION)
        {
            return Err(ManifestError::Format {
                found: found.min(u64::from(u32::MAX)) as u32,
            });
        }
        let m: Manifest = serde_json::from_value(probe)?;
        m.validate()?;
        Ok(m)
    }

    /// Checks the rules the type system does not express.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        if self.format != FORMAT_VERSION {
            return Err(ManifestError::Format { found: self.format });
        }
        if !is_name(&self.name) {
            return bad(format!("name `{}` is not a valid profile name", self.name));
        }
        if semver::Version::parse(&self.version).is_err() {
            return bad(format!("version `{}` is not semver", self.version));
        }
        if !is_name(&self.environment) {
            return bad(format!("environment `{}` is not valid", self.environment));
        }
        if self.files.len() > MAX_FILES {
            return bad(format!(
                "{} files listed; at most {MAX_FILES}",
                self.files.len()
            ));
        }
        let mut prev: Option<&str> = None;
        for f in &self.files {
            check_relative_path(&f.path).map_err(ManifestError::Invalid)?;
            if f.path == MANIFEST_PATH || f.path == MANIFEST_SIG_PATH {
                return bad(format!("payload may not be named `{}`", f.path));
            }
            if let Some(p) = prev
                && p >= f.path.as_str()
            {
                return bad(format!("files are not sorted or repeat at `{}`", f.path));
            }
            if f.mode != 0o644 && f.mode != 0o755 {
                return bad(format!(
                    "mode {:o} of `{}` is not 644 or 755",
                    f.mode, f.path
                ));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("sha256 of `{}` is malformed", f.path));
            }
            prev = Some(&f.path);
        }
        for needed in self
            .compose
            .files
            .iter()
            .chain(self.compose.env_file.iter())
            .chain(self.migrations.iter().map(|m| &m.path))
            .chain(self.images.iter().filter_map(|i| i.archive.as_ref()))
        {
            if self.file(needed).is_none() {
                return bad(format!("`{needed}` is referenced but not listed in files"));
            }
        }
        for c in &self.health.http {
            if let Some(svc) = &c.service
                && !self.images.iter().any(|i| &i.service == svc)
            {
                return bad(format!(
                    "health check `{}` names service `{svc}`, which the bundle does not pin",
                    c.name
                ));
            }
        }
        self.validate_places()?;
        self.validate_names()
    }

    /// Every path the installer joins to a store entry stays inside it and where it belongs,
    /// and no file is listed where another one needs a directory.
    fn validate_places(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        let paths: std::collections::BTreeSet<&str> =
            self.files.iter().map(|f| f.path.as_str()).collect();
        for f in &self.files {
            if !PAYLOAD_DIRS.iter().any(|d| under(&f.path, d)) {
                return bad(format!(
                    "`{}` is outside the payload directories ({})",
                    f.path,
                    PAYLOAD_DIRS.join(", ")
                ));
            }
            let mut at = 0;
            while let Some(i) = f.path[at..].find('/') {
                let dir = &f.path[..at + i];
                if paths.contains(dir) {
                    return bad(format!(
                        "`{dir}` is listed as a file and as the directory of `{}`",
                        f.path
                    ));
                }
                at += i + 1;
            }
        }
        check_relative_path(&self.compose.project_directory)
            .map_err(|e| ManifestError::Invalid(format!("compose project directory: {e}")))?;
        if !PAYLOAD_DIRS
            .iter()
            .any(|d| under(&self.compose.project_directory, d))
        {
            return bad(format!(
                "compose project directory `{}` is outside the payload directories",
                self.compose.project_directory
            ));
        }
        for c in &self.compose.files {
            if !(under(c, "stack") || under(c, "generated")) {
                return bad(format!(
                    "compose file `{c}` is outside stack/ and generated/"
                ));
            }
        }
        if let Some(e) = &self.compose.env_file
            && !under(e, "config")
        {
            return bad(format!("env file `{e}` is outside config/"));
        }
        for m in &self.migrations {
            if !under(&m.path, "migrations") {
                return bad(format!("migration `{}` is outside migrations/", m.path));
            }
        }
        for a in self.images.iter().filter_map(|i| i.archive.as_ref()) {
            if !under(a, "images") {
                return bad(format!("image archive `{a}` is outside images/"));
            }
        }
        Ok(())
    }

    /// Names and digests that reach command lines or file names are of a safe shape: no
    /// option-looking `-` prefix, no path separators, digests as `sha256:` + 64 hex digits.
    fn validate_names(&self) -> Result<(), ManifestError> {
        let bad = |s: String| Err(ManifestError::Invalid(s));
        let mut services: Vec<(&str, &str)> = self
            .images
            .iter()
            .map(|i| (i.service.as_str(), "image"))
            .collect();
        if let Some(r) = &self.migration_runner {
            services.push((&r.service, "migration runner"));
        }
        if let Some(b) = &self.backup {
            services.push((&b.service, "backup"));
        }
        for (svc, what) in services {
            if !is_service_name(svc) {
                return bad(format!(
                    "{what} service `{svc}` is not a compose service name (letters, digits, `.`, `_`, `-`; not starting with `-`)"
                ));
            }
        }
        for i in &self.images {
            for (field, d) in [
                ("digest", Some(&i.digest)),
                ("index_digest", i.index_digest.as_ref()),
                ("config_digest", i.config_digest.as_ref()),
            ] {
                if field == "config_digest" && d.is_none() {
                    return bad(format!(
                        "image of service `{}` has no config_digest: the image ID every container is checked against",
                        i.service
                    ));
                }
                if let Some(d) = d
                    && !crate::digest::is_digest(d)
                {
                    return bad(format!(
                        "{field} `{d}` of service `{}` is not sha256: and 64 lowercase hex digits",
                        i.service
                    ));
                }
            }
            if i.repository.is_empty()
                || i.repository.starts_with('-')
                || i.repository.bytes().any(|b| !b.is_ascii_graphic())
            {
                return bad(format!(
                    "image repository `{}` of service `{}` is not a valid reference",
                    i.repository, i.service
                ));
            }
        }
        for m in &self.migrations {
            if !is_name(&m.id) {
                return bad(format!("migration id `{}` is not a valid name", m.id));
            }
            if m.sha256.len() != 64
                || !m
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return bad(format!("sha256 of migration `{}` is malformed", m.id));
            }
        }
        if let Some(b) = &self.backup
            && (b.extension.is_empty()
                || b.extension.len() > 16
                || !b
                    .extension
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'.')
                || b.extension.starts_with('.'))
        {
            return bad(format!(
                "backup extension `{}` must be 1 to 16 letters, digits or dots, not starting with a dot",
                b.extension
            ));
        }
        for v in &self.required_secrets {
            let ok = !v.is_empty()
                && v.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                && !v.as_bytes()[0].is_ascii_digit();
            if !ok {
                return bad(format!("required variable `{v}` is not a variable name"));
            }
        }
        for (svc, access) in &self.host_access {
            if !is_service_name(svc) {
                return bad(format!(
                    "host access of service `{svc}`: not a compose service name"
                ));
            }
            if access.is_empty() {
                return bad(format!(
                    "host access of service `{svc}` is empty (an unprivileged service has no entry)"
                ));
            }
            access.validate(svc).map_err(ManifestError::Invalid)?;
        }
        Ok(())
    }

    /// The file entry for a path, if listed.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .and_then(|i| self.files.get(i))
    }

    /// Sum of all payload sizes.
    pub fn payload_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// `<name>-<version>-<arch>`, the stem of the bundle's file name.
    pub fn stem(&self) -> String {
        format!("{}-{}-{}", self.name, self.version, self.arch)
    }
}

/// True for names usable as profile, recipe or environment names.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// Variables that steer docker, compose or the processes they start rather than the stack:
/// which engine is talked to (`DOCKER_HOST`, `DOCKER_CONTEXT`, …), which files and project
/// compose uses (`COMPOSE_*`), and what gets loaded into them (`LD_*`, `PYTHON*` — compose v1
/// is a Python program —, `PATH`). Neither a bundle's config nor a host env file may set them.
pub fn steers_tools(name: &str) -> bool {
    ["DOCKER_", "COMPOSE_", "LD_", "PYTHON", "BUILDKIT_"]
        .iter()
        .any(|p| name.starts_with(p))
        || matches!(
            name,
            "PATH" | "HOME" | "TMPDIR" | "SSL_CERT_FILE" | "SSL_CERT_DIR"
        )
}

/// The top-level directories a bundle's payload may use.
pub const PAYLOAD_DIRS: &[&str] = &["config", "generated", "images", "migrations", "stack"];

/// True when `path` is `dir` itself or inside it.
fn under(path: &str, dir: &str) -> bool {
    path == dir || path.strip_prefix(dir).is_some_and(|r| r.starts_with('/'))
}

/// A compose service name: letters, digits, `.`, `_`, `-`, starting with a letter or digit.
pub fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// Checks a bundle-relative path: no absolute path, no empty, `.` or `..` component.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 1024 {
        return Err(format!("path `{path}` is empty or too long"));
    }
    if path.starts_with('/') {
        return Err(format!("path `{path}` is absolute"));
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(format!("path `{path}` has an empty, `.` or `..` component"));
        }
        if part.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\') {
            return Err(format!(
                "path `{path}` has a control character or backslash"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod validation_tests {
    use super::*;

    fn file(path: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 1,
            sha256: "a".repeat(64),
            mode: 0o644,
        }
    }

    /// A valid manifest with a compose file, an env file, a migration and an image.
    fn good() -> Manifest {
        let mut m = Manifest::skeleton("cloud", "1.0.0", Arch::Amd64, "prod");
        m.files = vec![
            file("config/prod.env"),
            file("generated/pin.compose.yaml"),
            file("migrations/0001-init.sh"),
            file("stack/compose.yaml"),
        ];
        m.compose.files = vec![
            "stack/compose.yaml".into(),
            "generated/pin.compose.yaml".into(),
        ];
        m.compose.env_file = Some("config/prod.env".into());
        m.migrations = vec![Migration {
            id: "0001-init".into(),
            path: "migrations/0001-init.sh".into(),
            sha256: "b".repeat(64),
        }];
        m.migration_runner = Some(Runner {
            service: "db".into(),
            command: vec!["sh".into()],
        });
        m.images = vec![Image {
            service: "db".into(),
            original: "mongo:7".into(),
            repository: "docker.io/library/mongo".into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            index_digest: None,
            config_digest: Some(format!("sha256:{}", "d".repeat(64))),
            archive: None,
        }];
        m.backup = Some(Backup {
            service: "db".into(),
            command: vec!["dump".into()],
            restore: vec!["restore".into()],
            extension: "archive.gz".into(),
            restore_on_rollback: false,
            verify: Vec::new(),
        });
        m.required_secrets = vec!["DB_PASSWORD".into()];
        m
    }

    fn refused(m: &Manifest, needle: &str) {
        match m.validate() {
            Err(ManifestError::Invalid(msg)) => {
                assert!(msg.contains(needle), "`{msg}` does not say `{needle}`")
            }
            other => panic!("expected a refusal naming `{needle}`, got {other:?}"),
        }
    }

    #[test]
    fn the_good_manifest_is_valid() {
        good().validate().expect("valid");
    }

    #[test]
    fn project_directory_must_stay_inside_and_hold_files() {
        for bad in ["/srv/app", "../outside", "stack/../..", ""] {
            let mut m = good();
            m.compose.project_directory = bad.into();
            refused(&m, "compose project directory");
        }
        let mut m = good();
        m.compose.project_directory = "elsewhere".into();
        refused(&m, "is outside the payload directories");
    }

    #[test]
    fn backup_extension_cannot_carry_a_path() {
        for bad in [
            "../../etc/cron.d/x",
            "a/b",
            "",
            ".hidden",
            "x y",
            "waytoolongextension",
        ] {
            let mut m = good();
            if let Some(b) = m.backup.as_mut() {
                b.extension = bad.into();
            }
            refused(&m, "backup extension");
        }
    }

    #[test]
    fn service_names_cannot_look_like_options() {
        let mut m = good();
        m.images[0].service = "--privileged".into();
        refused(&m, "image service `--privileged`");
        let mut m = good();
        if let Some(r) = m.migration_runner.as_mut() {
            r.service = "-v".into();
        }
        refused(&m, "migration runner service `-v`");
        let mut m = good();
        if let Some(b) = m.backup.as_mut() {
            b.service = "db;rm".into();
        }
        refused(&m, "backup service `db;rm`");
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        let mut m = good();
        m.images[0].digest = "sha256:zz".into();
        refused(&m, "digest `sha256:zz`");
        let mut m = good();
        m.images[0].config_digest = Some(format!("sha256:{}", "C".repeat(64)));
        refused(&m, "config_digest");
        let mut m = good();
        m.images[0].index_digest = Some("md5:00".into());
        refused(&m, "index_digest");
        let mut m = good();
        m.images[0].config_digest = None;
        refused(&m, "has no config_digest");
        let mut m = good();
        m.migrations[0].sha256 = "x".repeat(64);
        refused(&m, "sha256 of migration `0001-init`");
        let mut m = good();
        m.images[0].repository = "-oops".into();
        refused(&m, "image repository `-oops`");
    }

    #[test]
    fn files_stay_in_the_payload_directories() {
        let mut m = good();
        m.files.push(file("toplevel.txt"));
        refused(&m, "`toplevel.txt` is outside the payload directories");
        let mut m = good();
        m.compose.files.push("config/prod.env".into());
        refused(&m, "compose file `config/prod.env` is outside");
        let mut m = good();
        m.compose.env_file = Some("stack/compose.yaml".into());
        refused(&m, "env file `stack/compose.yaml` is outside config/");
        let mut m = good();
        m.migrations[0].path = "stack/compose.yaml".into();
        refused(&m, "migration `stack/compose.yaml` is outside migrations/");
        let mut m = good();
        m.images[0].archive = Some("stack/compose.yaml".into());
        refused(&m, "image archive `stack/compose.yaml` is outside images/");
    }

    #[test]
    fn a_file_cannot_also_be_a_directory() {
        let mut m = good();
        m.files.push(file("stack/a"));
        m.files.push(file("stack/a-b"));
        m.files.push(file("stack/a/b"));
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        refused(
            &m,
            "`stack/a` is listed as a file and as the directory of `stack/a/b`",
        );
    }

    #[test]
    fn secret_names_are_variable_names() {
        for bad in ["1ABC", "A-B", "", "A B", "A=B"] {
            let mut m = good();
            m.required_secrets = vec![bad.into()];
            refused(&m, "required variable");
        }
    }
}

#[cfg(test)]
mod host_access_tests {
    use super::*;
    use crate::host_access::HostAccess;

    #[test]
    fn no_host_access_keeps_the_bytes_and_some_is_signed_and_checked() {
        let m = Manifest::skeleton("cloud", "1.0.0", Arch::Amd64, "prod");
        let bytes = m.to_canonical_json();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("host_access"),
            "an unprivileged manifest has no host_access key"
        );
        assert_eq!(Manifest::from_json(&bytes).expect("parse"), m);
        let mut p = m.clone();
        p.host_access.insert(
            "ui".into(),
            HostAccess {
                privileged: true,
                bind_mounts: vec!["/var/run/docker.sock".into()],
                ..HostAccess::default()
            },
        );
        let text = String::from_utf8(p.to_canonical_json()).expect("utf8");
        assert!(
            text.contains(
                r#""host_access":{"ui":{"bind_mounts":["/var/run/docker.sock"],"privileged":true}}"#
            ),
            "{text}"
        );
        assert_eq!(Manifest::from_json(text.as_bytes()).expect("parse"), p);
        let mut bad = p.clone();
        bad.host_access.insert(
            "-x".into(),
            HostAccess {
                pid_host: true,
                ..HostAccess::default()
            },
        );
        assert!(bad.validate().is_err());
        let mut empty = p.clone();
        empty.host_access.insert("db".into(), HostAccess::default());
        assert!(empty.validate().unwrap_err().to_string().contains("empty"));
        let mut rel = p;
        rel.host_access.insert(
            "db".into(),
            HostAccess {
                bind_mounts: vec!["../etc".into()],
                ..HostAccess::default()
            },
        );
        assert!(
            rel.validate()
                .unwrap_err()
                .to_string()
                .contains("not absolute")
        );
    }
}
