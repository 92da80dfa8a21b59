//! One throw-away project — `recipes/`, locks, a signing key, a host env file — that releases
//! bundles through the library (`smoker_build::release`) or through the `xtask` CLI, plus
//! builders for the compose files and recipes the tests use.

use crate::images::Pushed;
use crate::run::{run, text};
use smoker_build::lock::{Lock, LockedImage, PlatformPin};
use smoker_build::recipe::Recipe;
use smoker_build::release::{self, SourceInfo};
use smoker_format::manifest::Arch;
use smoker_format::signing::{self, SecretKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The build time (`SOURCE_DATE_EPOCH`) of every release a [`Project`] makes.
pub const EPOCH: u64 = 1_700_000_000;

/// The recipe (and so profile) name of the test service projects ([`Project::testsvc`]).
pub const SVC: &str = "svc";

/// The secret the test service recipes require, and its value in the host env file.
pub const TEST_SECRET: (&str, &str) = ("TEST_SECRET", "s3cret");

/// How a [`Project`] makes its key and its bundles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Driver {
    /// The library: `signing::generate`, `release::plan` and `release::write_release`.
    Library,
    /// The CLI: `xtask keygen` and `xtask release` of this binary.
    Cli(PathBuf),
}

/// One release of one recipe for one architecture and environment.
#[derive(Clone, Debug)]
pub struct Release<'a> {
    /// Recipe name.
    pub recipe: &'a str,
    /// Version (semver).
    pub version: &'a str,
    /// Architecture.
    pub arch: Arch,
    /// Environment.
    pub env: &'a str,
    /// Carry the images (`--offline`; CLI only).
    pub offline: bool,
    /// Output directory, relative to the project.
    pub out: String,
    /// Blob cache for offline releases, relative to the project.
    pub cache: &'a str,
}

impl<'a> Release<'a> {
    /// `recipe` `version` for amd64 and `prod`, online, into `out/<version>`, blob cache
    /// `cache`.
    pub fn new(recipe: &'a str, version: &'a str) -> Release<'a> {
        Release {
            recipe,
            version,
            arch: Arch::Amd64,
            env: "prod",
            offline: false,
            out: format!("out/{version}"),
            cache: "cache",
        }
    }

    /// For another architecture.
    pub fn arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// For another environment.
    pub fn env(mut self, env: &'a str) -> Self {
        self.env = env;
        self
    }

    /// With the images inside (`--offline`).
    pub fn offline(mut self) -> Self {
        self.offline = true;
        self
    }

    /// Into another output directory (relative to the project).
    pub fn out(mut self, out: &str) -> Self {
        self.out = out.to_string();
        self
    }

    /// With another blob cache (relative to the project).
    pub fn cache(mut self, cache: &'a str) -> Self {
        self.cache = cache;
        self
    }
}

/// What a release produced.
#[derive(Debug)]
pub struct Released {
    /// The bundle.
    pub bundle: PathBuf,
    /// The `xtask release` run (CLI driver only).
    pub output: Option<Output>,
}

impl Released {
    /// The `xtask release` run; panics for a library release.
    pub fn output(&self) -> &Output {
        self.output
            .as_ref()
            .expect("only a release through the CLI has command output")
    }
}

/// A throw-away project: `recipes/`, a signing key without password, a host env file.
pub struct Project {
    dir: tempfile::TempDir,
    /// Secret key (no password).
    pub key: PathBuf,
    /// Its public key (trusted by hosts that apply this project's bundles).
    pub public_key: PathBuf,
    /// Host env file for the installer (`# no secrets` unless a test writes it).
    pub env_file: PathBuf,
    driver: Driver,
}

impl Project {
    /// An empty project whose key and bundles `driver` makes.
    pub fn new(driver: Driver) -> Project {
        let dir = crate::tempdir("smoker-test-project-");
        std::fs::create_dir_all(dir.path().join("recipes")).expect("creating recipes/");
        let key = dir.path().join("release.key");
        let public_key = dir.path().join("release.pub");
        match &driver {
            Driver::Library => {
                signing::generate(&key, &public_key, None)
                    .unwrap_or_else(|e| panic!("generating a key pair: {e}"));
            }
            Driver::Cli(xtask) => {
                let out = run(Command::new(xtask)
                    .arg("keygen")
                    .arg("--no-password")
                    .arg("--secret-key")
                    .arg(&key)
                    .arg("--public-key")
                    .arg(&public_key)
                    .env_remove("SMOKER_KEY_PASSWORD")
                    .env_remove("SMOKER_SECRET_KEY"));
                assert!(out.status.success(), "xtask keygen: {}", text(&out));
            }
        }
        let p = Project {
            env_file: dir.path().join("host.env"),
            dir,
            key,
            public_key,
            driver,
        };
        p.write_env_file("# no secrets\n");
        p
    }

    /// An empty project driven by the library.
    pub fn library() -> Project {
        Project::new(Driver::Library)
    }

    /// An empty project driven by the `xtask` CLI of the running build
    /// ([`crate::bins::xtask`]).
    pub fn cli() -> Project {
        Project::new(Driver::Cli(crate::bins::xtask()))
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `recipes/`.
    pub fn recipes(&self) -> PathBuf {
        self.dir.path().join("recipes")
    }

    /// `recipes/<name>/`.
    pub fn recipe_dir(&self, name: &str) -> PathBuf {
        self.recipes().join(name)
    }

    /// Writes `recipes/<name>/compose.yaml` and `recipe.toml`.
    pub fn write_recipe(&self, name: &str, compose: &str, recipe: &str) {
        let d = self.recipe_dir(name);
        crate::write_file(&d.join("compose.yaml"), compose);
        crate::write_file(&d.join("recipe.toml"), recipe);
    }

    /// Writes `recipes/<name>.lock` pinning `image` (its reference, manifest digest and image
    /// ID) for `arch`.
    pub fn pin(&self, name: &str, image: &Pushed, arch: Arch) {
        let lock = single_image_lock(&image.reference, arch, &image.digest, &image.id);
        crate::write_file(&Lock::path(&self.recipes(), name), lock.to_toml());
    }

    /// Rewrites the host env file (mode 0600).
    pub fn write_env_file(&self, contents: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        crate::write_file(&self.env_file, contents);
        std::fs::set_permissions(&self.env_file, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", self.env_file.display()));
    }

    /// The `xtask` binary this project runs: the CLI driver's, else the running build's.
    pub fn xtask_binary(&self) -> PathBuf {
        match &self.driver {
            Driver::Cli(xtask) => xtask.clone(),
            Driver::Library => crate::bins::xtask(),
        }
    }

    /// Runs `xtask ARGS` with `SOURCE_DATE_EPOCH` = [`EPOCH`], no key password or key path
    /// from the caller's environment, and `envs`. Returns its output (not checked).
    pub fn xtask(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        Command::new(self.xtask_binary())
            .args(args)
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
            .env_remove("SMOKER_KEY_PASSWORD")
            .env_remove("SMOKER_SECRET_KEY")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run xtask: {e}"))
    }

    /// `xtask lock --project-dir DIR EXTRA…`.
    pub fn lock(&self, extra: &[&str]) -> Output {
        let dir = self.path().display().to_string();
        let mut args = vec!["lock", "--project-dir", &dir];
        args.extend(extra);
        self.xtask(&args, &[])
    }

    /// Where a release writes the bundle of `name` `version` for `arch` and `env`.
    pub fn bundle(&self, out: &str, env: &str, name: &str, version: &str, arch: &str) -> PathBuf {
        self.path()
            .join(out)
            .join(env)
            .join(format!("{name}-{version}-{arch}.tar.zst"))
    }

    /// Releases through the project's driver; panics when the release fails or the bundle is
    /// not where it should be.
    pub fn release(&self, r: &Release<'_>) -> Released {
        let released = match &self.driver {
            Driver::Library => Released {
                bundle: self.release_with_library(r),
                output: None,
            },
            Driver::Cli(_) => self.release_with_cli(r),
        };
        let expected = self.bundle(&r.out, r.env, r.recipe, r.version, &r.arch.to_string());
        assert_eq!(released.bundle, expected, "where the bundle was written");
        assert!(
            released.bundle.is_file(),
            "no bundle at {}",
            released.bundle.display()
        );
        released
    }

    fn release_with_library(&self, r: &Release<'_>) -> PathBuf {
        assert!(
            !r.offline,
            "offline releases fetch images: use the CLI driver"
        );
        let recipe = Recipe::load(&self.recipes(), r.recipe)
            .unwrap_or_else(|e| panic!("loading recipe {}: {e}", r.recipe));
        let lock_path = Lock::path(&self.recipes(), r.recipe);
        let lock = Lock::load(&lock_path, r.recipe)
            .unwrap_or_else(|e| panic!("loading {}: {e}", lock_path.display()));
        let source = SourceInfo {
            commit: None,
            dirty: true,
            recipe_dir: format!("recipes/{}", r.recipe),
            epoch: EPOCH,
        };
        let version = semver::Version::parse(r.version)
            .unwrap_or_else(|e| panic!("version {}: {e}", r.version));
        let plan = release::plan(&recipe, &lock, &lock_path, r.arch, r.env, &version, &source)
            .unwrap_or_else(|e| panic!("planning {} {}: {e}", r.recipe, r.version));
        let key = SecretKey::load(&self.key, None)
            .unwrap_or_else(|e| panic!("loading {}: {e}", self.key.display()));
        // `write_release` writes into the directory it is given; the CLI gives it
        // `<out>/<environment>`, and so does this driver.
        release::write_release(&plan, &key, &self.path().join(&r.out).join(r.env))
            .unwrap_or_else(|e| panic!("writing {} {}: {e}", r.recipe, r.version))
            .path
    }

    fn release_with_cli(&self, r: &Release<'_>) -> Released {
        let dir = self.path().display().to_string();
        let key = self.key.display().to_string();
        let out_dir = self.path().join(&r.out).display().to_string();
        let cache_dir = self.path().join(r.cache).display().to_string();
        let arch = r.arch.to_string();
        let mut args = vec![
            "release",
            "--project-dir",
            &dir,
            "--recipe",
            r.recipe,
            "--arch",
            &arch,
            "--env",
            r.env,
            "--secret-key",
            &key,
            "--version",
            r.version,
            "--out",
            &out_dir,
            "--blob-cache",
            &cache_dir,
        ];
        if r.offline {
            args.push("--offline");
        }
        let o = self.xtask(&args, &[]);
        assert!(
            o.status.success(),
            "xtask release {} {}: {}",
            r.recipe,
            r.version,
            text(&o)
        );
        Released {
            bundle: self.bundle(&r.out, r.env, r.recipe, r.version, &arch),
            output: Some(o),
        }
    }

    /// A project for the test service as recipe [`SVC`] (driven by the library): `image`
    /// pinned for amd64, the compose file of [`WebService::testsvc_knobs`], a host env file
    /// with [`TEST_SECRET`], and the recipe of [`gated_recipe`] on `port`.
    pub fn testsvc(image: &Pushed, port: u16, window_secs: u64) -> Project {
        let p = Project::library();
        p.pin(SVC, image, Arch::Amd64);
        p.write_env_file(&format!("{}={}\n", TEST_SECRET.0, TEST_SECRET.1));
        crate::write_file(
            &p.recipe_dir(SVC).join("compose.yaml"),
            WebService::testsvc_knobs(&image.reference).yaml(),
        );
        p.write_svc_recipe(&gated_recipe(port, window_secs, &[]));
        p
    }

    /// [`Project::testsvc`] whose service keeps its records in a named volume `data`, for the
    /// backup, restore and migration tests ([`Project::release_stateful`]).
    pub fn stateful_testsvc(image: &Pushed, port: u16) -> Project {
        let p = Project::testsvc(image, port, 20);
        let compose = WebService::new(&image.reference)
            .env("SECRET", "${TEST_SECRET:?set TEST_SECRET}")
            .volume("data:/data")
            .named_volume("data")
            .yaml();
        crate::write_file(&p.recipe_dir(SVC).join("compose.yaml"), compose);
        p
    }

    fn write_svc_recipe(&self, recipe: &RecipeToml) {
        crate::write_file(&self.recipe_dir(SVC).join("recipe.toml"), recipe.to_toml());
    }

    /// Releases [`SVC`] `version` (amd64, prod, into `out/<version>`) with the recipe of
    /// [`gated_recipe`]`(port, window_secs, vars)`.
    pub fn release_svc(
        &self,
        version: &str,
        port: u16,
        window_secs: u64,
        vars: &[(&str, &str)],
    ) -> PathBuf {
        self.write_svc_recipe(&gated_recipe(port, window_secs, vars));
        self.release(&Release::new(SVC, version)).bundle
    }

    /// Releases [`SVC`] `version` of a [`Project::stateful_testsvc`] with exactly `migrations`
    /// (file name, script) in `migrations/`, the test service's `dump`/`restore` as backup
    /// hooks and `migrate` as the migration runner; `/version` answers `v<major>`.
    pub fn release_stateful(
        &self,
        version: &str,
        port: u16,
        migrations: &[(&str, &str)],
    ) -> PathBuf {
        let mdir = self.recipe_dir(SVC).join("migrations");
        let _ = std::fs::remove_dir_all(&mdir);
        std::fs::create_dir_all(&mdir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", mdir.display()));
        for (name, script) in migrations {
            crate::write_file(&mdir.join(name), script);
        }
        let major = version.split('.').next().unwrap_or(version);
        let recipe = gated_recipe(port, 20, &[("VERSION_TEXT", &format!("v{major}"))])
            .section(STATEFUL_SECTIONS);
        self.write_svc_recipe(&recipe);
        self.release(&Release::new(SVC, version)).bundle
    }
}

/// The backup hooks (the test service's `dump` and `restore`) and the migration runner
/// (`migrate`) of the stateful test service recipe.
pub const STATEFUL_SECTIONS: &str = r#"[backup]
service = "web"
command = ["/testsvc", "dump"]
restore = ["/testsvc", "restore"]
verify = ["/testsvc", "check"]
extension = "txt"

[migrations]
dir = "migrations"
service = "web"
command = ["migrate", "{script}"]
"#;

/// A lock of one image `reference`, pinned for `arch` to the manifest `digest` and the image
/// ID `config_digest`.
pub fn single_image_lock(reference: &str, arch: Arch, digest: &str, config_digest: &str) -> Lock {
    Lock {
        version: 1,
        images: vec![LockedImage {
            mirror: None,
            reference: reference.to_string(),
            index_digest: None,
            platforms: BTreeMap::from([(
                arch,
                PlatformPin {
                    digest: digest.to_string(),
                    config_digest: Some(config_digest.to_string()),
                },
            )]),
        }],
    }
}

/// The recipe of the test service projects: a health gate of `window_secs` (3 failures,
/// 300 ms interval, 2 successes) with an HTTP check of `http://127.0.0.1:${PORT}/health`
/// (body `ok`, 1 s timeout), the secret [`TEST_SECRET`] required, environment `prod` with
/// `PORT` = `port` plus `vars`.
pub fn gated_recipe(port: u16, window_secs: u64, vars: &[(&str, &str)]) -> RecipeToml {
    let mut config = vec![("PORT", port.to_string())];
    config.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
    RecipeToml::new(window_secs)
        .http_check("http://127.0.0.1:${PORT}/health", 1000)
        .secret(TEST_SECRET.0)
        .env("prod", &config)
}

/// A recipe whose gate is the containers' own Docker health checks (no HTTP checks, so it also
/// passes when the installer runs in a network namespace of its own): window 40 s, `env` with
/// `PORT` and `VERSION_TEXT`.
pub fn docker_health_recipe(port: u16, version_text: &str, env: &str) -> String {
    RecipeToml::new(40)
        .env(
            env,
            &[
                ("PORT", port.to_string()),
                ("VERSION_TEXT", version_text.to_string()),
            ],
        )
        .to_toml()
}

/// The compose file of one service `web` running the test service image on
/// `127.0.0.1:${PORT}`, with `TESTSVC_VERSION: ${VERSION_TEXT}` and a 1 s stop grace period.
#[derive(Clone, Debug)]
pub struct WebService {
    image: String,
    environment: Vec<(String, String)>,
    volumes: Vec<String>,
    named_volumes: Vec<String>,
}

impl WebService {
    /// The service running `image`.
    pub fn new(image: &str) -> WebService {
        WebService {
            image: image.to_string(),
            environment: vec![("TESTSVC_VERSION".into(), "${VERSION_TEXT}".into())],
            volumes: Vec::new(),
            named_volumes: Vec::new(),
        }
    }

    /// The service with the test service's knobs taken from the environment's config
    /// (`UNHEALTHY`, `START_DELAY_MS`, `CRASH_AFTER_MS`) and `SECRET` from [`TEST_SECRET`].
    pub fn testsvc_knobs(image: &str) -> WebService {
        WebService::new(image)
            .env("TESTSVC_UNHEALTHY", "${UNHEALTHY:-0}")
            .env("TESTSVC_START_DELAY_MS", "${START_DELAY_MS:-}")
            .env("TESTSVC_CRASH_AFTER_MS", "${CRASH_AFTER_MS:-}")
            .env("SECRET", "${TEST_SECRET:?set TEST_SECRET}")
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.environment.push((name.into(), value.into()));
        self
    }

    /// Adds a volume (`source:target[:mode]`).
    pub fn volume(mut self, spec: &str) -> Self {
        self.volumes.push(spec.into());
        self
    }

    /// Declares a named volume at the top level.
    pub fn named_volume(mut self, name: &str) -> Self {
        self.named_volumes.push(name.into());
        self
    }

    /// The compose file.
    pub fn yaml(&self) -> String {
        let mut y = format!("services:\n  web:\n    image: {}\n", self.image);
        y.push_str("    environment:\n");
        for (k, v) in &self.environment {
            y.push_str(&format!("      {k}: {v}\n"));
        }
        if !self.volumes.is_empty() {
            y.push_str("    volumes:\n");
            for v in &self.volumes {
                y.push_str(&format!("      - {v}\n"));
            }
        }
        y.push_str("    ports:\n      - \"127.0.0.1:${PORT}:8080\"\n    stop_grace_period: 1s\n");
        if !self.named_volumes.is_empty() {
            y.push_str("volumes:\n");
            for v in &self.named_volumes {
                y.push_str(&format!("  {v}:\n"));
            }
        }
        y
    }
}

/// A `recipe.toml`: description, health gate, at most one HTTP check, required secrets, raw
/// extra sections, and environments with their config, in that order.
#[derive(Clone, Debug)]
pub struct RecipeToml {
    description: Option<String>,
    window_secs: u64,
    failures: u32,
    interval_ms: u64,
    successes: u32,
    http: Option<(String, u64)>,
    secrets: Vec<String>,
    sections: Vec<String>,
    envs: Vec<(String, Vec<(String, String)>)>,
}

impl RecipeToml {
    /// A gate of `window_secs` with 3 failures, a 300 ms interval and 2 successes.
    pub fn new(window_secs: u64) -> RecipeToml {
        RecipeToml {
            description: None,
            window_secs,
            failures: 3,
            interval_ms: 300,
            successes: 2,
            http: None,
            secrets: Vec::new(),
            sections: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Sets the description.
    pub fn description(mut self, text: &str) -> Self {
        self.description = Some(text.into());
        self
    }

    /// Sets the failures the gate tolerates.
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    /// Sets the gate's polling interval.
    pub fn interval_ms(mut self, ms: u64) -> Self {
        self.interval_ms = ms;
        self
    }

    /// Sets the consecutive passing rounds the gate needs.
    pub fn successes(mut self, n: u32) -> Self {
        self.successes = n;
        self
    }

    /// Adds the HTTP check `web` of `url`, body `ok`, with a timeout.
    pub fn http_check(mut self, url: &str, timeout_ms: u64) -> Self {
        self.http = Some((url.into(), timeout_ms));
        self
    }

    /// Requires a secret.
    pub fn secret(mut self, name: &str) -> Self {
        self.secrets.push(name.into());
        self
    }

    /// Adds raw TOML sections (written after the secrets, before the environments).
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.into());
        self
    }

    /// Adds environment `name` with its config.
    pub fn env<V: AsRef<str>>(mut self, name: &str, config: &[(&str, V)]) -> Self {
        self.envs.push((
            name.into(),
            config
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_ref().to_string()))
                .collect(),
        ));
        self
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        if let Some(d) = &self.description {
            t.push_str(&format!("description = {}\n\n", toml_string(d)));
        }
        t.push_str(&format!(
            "[health]\nwindow_secs = {}\nfailures = {}\ninterval_ms = {}\nsuccesses = {}\n",
            self.window_secs, self.failures, self.interval_ms, self.successes
        ));
        if let Some((url, timeout_ms)) = &self.http {
            t.push_str(&format!(
                "\n[[health.http]]\nname = \"web\"\nurl = {}\nbody_contains = \"ok\"\ntimeout_ms = {timeout_ms}\n",
                toml_string(url)
            ));
        }
        if !self.secrets.is_empty() {
            let names: Vec<String> = self.secrets.iter().map(|s| toml_string(s)).collect();
            t.push_str(&format!("\n[secrets]\nrequired = [{}]\n", names.join(", ")));
        }
        for s in &self.sections {
            t.push('\n');
            t.push_str(s);
        }
        for (env, config) in &self.envs {
            t.push_str(&format!("\n[env.{env}.config]\n"));
            for (k, v) in config {
                t.push_str(&format!("{k} = {}\n", toml_string(v)));
            }
        }
        t
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_and_compose_files_parse_as_written() {
        let t = gated_recipe(8080, 20, &[("VERSION_TEXT", "v1")])
            .section(STATEFUL_SECTIONS)
            .env("dev", &[("PORT", "1")])
            .to_toml();
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path().join("recipes/x");
        crate::write_file(&r.join("recipe.toml"), &t);
        crate::write_file(
            &r.join("compose.yaml"),
            WebService::testsvc_knobs("reg.example/x:1")
                .volume("data:/data")
                .named_volume("data")
                .yaml(),
        );
        let recipe = Recipe::load(&dir.path().join("recipes"), "x").expect(&t);
        assert_eq!(recipe.environments().len(), 2, "{t}");
    }
}
