//! What this host lets a verified bundle do before anything of it is stored: the scope of the
//! key that signed it, its architecture, its environment, its version against the profile's
//! history, and what its services ask of the host against the host's policy.
//!
//! The decisions are pure functions of the signed manifest and the host's facts, so apply,
//! `--usb` and preflight judge a bundle the same way, and each decision is unit-tested.

use crate::error::{Error, Result};
use crate::hostconfig::HostConfig;
use crate::layout::Layout;
use crate::profile::{Generation, Profile, Status};
use smoker_format::manifest::{Arch, Manifest};
use smoker_format::signing::{KeyScope, TrustedKeys};
use std::path::PathBuf;

/// What the host knows and what the operator allowed.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// This machine's architecture (`None`: not one bundles are built for).
    pub arch: Option<Arch>,
    /// The host's environment and where that came from, if it has one.
    pub environment: Option<(String, String)>,
    /// Install a bundle of another environment (`--allow-env-change`).
    pub allow_env_change: bool,
    /// Install a version older than the newest good one (`--allow-downgrade`).
    pub allow_downgrade: bool,
    /// The profile's anti-rollback floor: the highest version ever committed here.
    pub floor: Option<semver::Version>,
    /// The host config file (named in refusals a line of it would lift).
    pub config_path: PathBuf,
    /// `[policy.<profile>]` of the host config: what the profile's services may ask of the
    /// host (`None`: nothing beyond an unprivileged stack).
    pub allowances: Option<crate::access::Allowances>,
    /// The key that signed the bundle and the scopes it is trusted with (set once the
    /// signature was verified).
    pub signer: Option<Signer>,
}

/// The key a verified signature was made with, and what this host trusts it to sign.
#[derive(Debug, Clone, Default)]
pub struct Signer {
    /// Key id.
    pub key_id: String,
    /// Every scope the key was loaded with, and from where.
    pub scopes: Vec<(KeyScope, PathBuf)>,
}

impl Signer {
    /// The signer `key_id` with its scopes in `keys`.
    pub fn of(keys: &TrustedKeys, key_id: &str) -> Signer {
        Signer {
            key_id: key_id.to_string(),
            scopes: keys
                .scopes(key_id)
                .into_iter()
                .map(|(s, p)| (s.clone(), p.to_path_buf()))
                .collect(),
        }
    }
}

impl HostFacts {
    /// The facts of this host for `profile`, with the operator's allowances.
    pub fn gather(
        layout: &Layout,
        host: &HostConfig,
        profile: &str,
        allow_env_change: bool,
        allow_downgrade: bool,
    ) -> HostFacts {
        HostFacts {
            arch: host_arch(),
            environment: host_environment(layout, host, profile),
            allow_env_change,
            allow_downgrade,
            floor: read_floor(layout, profile),
            config_path: host.path.clone(),
            allowances: host.policy.get(profile).cloned(),
            signer: None,
        }
    }
}

/// This machine's architecture. Builds with the `test-hooks` feature let
/// `SMOKER_ALLOW_FOREIGN_ARCH` pretend the host has no known architecture, so that a test can
/// install a bundle of the other architecture; release builds have no such switch.
pub fn host_arch() -> Option<Arch> {
    if cfg!(feature = "test-hooks") && std::env::var_os("SMOKER_ALLOW_FOREIGN_ARCH").is_some() {
        return None;
    }
    Arch::host()
}

/// The host's environment: declared in host.toml, else the one its current generation of
/// `profile` was built for. Returns it with a phrase saying where it came from.
pub fn host_environment(
    layout: &Layout,
    host: &HostConfig,
    profile: &str,
) -> Option<(String, String)> {
    if let Some(e) = &host.environment {
        let from = if host.environment_chosen {
            "chosen by --environment"
        } else {
            "declared in the host config"
        };
        return Some((e.clone(), from.into()));
    }
    let p = Profile::open(layout, profile).ok().flatten()?;
    let g = p.current().and_then(|n| p.generation(n))?;
    Some((
        g.environment.clone(),
        format!("the environment of its current generation {}", g.number),
    ))
}

/// A bundle built for another architecture is refused, naming the right one.
pub fn check_arch(m: &Manifest, host: Option<Arch>) -> Result<()> {
    match host {
        Some(h) if m.arch != h => Err(Error::Policy(format!(
            "bundle is for {}, this host is {h}; use the {h} bundle",
            m.arch
        ))),
        _ => Ok(()),
    }
}

/// A bundle of another environment than the host's is refused unless allowed. A host with no
/// environment at all (none declared, none chosen, no current generation of the profile) takes
/// no bundle: the first install needs the operator's explicit choice.
pub fn check_environment(
    m: &Manifest,
    host_env: Option<&(String, String)>,
    allow_change: bool,
    config_path: &std::path::Path,
) -> Result<()> {
    match host_env {
        Some((env, from)) if *env != m.environment && !allow_change => Err(Error::Policy(format!(
            "bundle is for environment `{}`, but this host is `{env}` ({from}); use the `{env}` bundle, or pass --allow-env-change if the host really changes environment",
            m.environment
        ))),
        Some(_) => Ok(()),
        None => Err(Error::Policy(no_environment(m, config_path))),
    }
}

/// Why a host without an environment refuses a first install, and the two ways to choose one.
pub fn no_environment(m: &Manifest, config_path: &std::path::Path) -> String {
    format!(
        "this host has no environment yet ({} declares none and profile `{}` has no current generation), so the bundle's environment `{}` is not accepted silently; declare it with `environment = \"{}\"` in {}, or choose it for this install with `--environment {}`",
        config_path.display(),
        m.name,
        m.environment,
        m.environment,
        config_path.display(),
        m.environment
    )
}

/// The key that signed `m` must be trusted for its environment and profile.
pub fn check_key_scope(m: &Manifest, signer: &Signer) -> Result<()> {
    if signer
        .scopes
        .iter()
        .any(|(s, _)| s.allows(&m.environment, &m.name))
    {
        return Ok(());
    }
    let scopes = signer
        .scopes
        .iter()
        .map(|(s, p)| format!("{s} ({})", p.display()))
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::Policy(format!(
        "bundle {} {} for environment `{}`, profile `{}`, is signed by key {}, which this host trusts only for {scopes}; use a bundle signed with a key trusted for `{}` (a key under <keys>/{}/), nothing was installed",
        m.name, m.version, m.environment, m.name, signer.key_id, m.environment, m.environment
    )))
}

/// What the bundle's services ask of the host must be allowed by `[policy.<profile>]`.
pub fn check_host_access(
    m: &Manifest,
    allowances: Option<&crate::access::Allowances>,
    config_path: &std::path::Path,
) -> Result<()> {
    let refused = crate::access::refusals(m, allowances);
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Policy(format!(
        "bundle {} {} asks the host for what its policy does not allow:\n  - {}\nthese lines go under `[policy.{}]` in {}; `smoker-install policy suggest BUNDLE` prints the whole table for review",
        m.name,
        m.version,
        refused.join("\n  - "),
        m.name,
        config_path.display()
    )))
}

/// A version older than the newest good generation, or than the profile's floor (the highest
/// version ever committed here, which gc, failed generations and a new profile directory do
/// not lower), is refused unless allowed: going back is what `rollback` is for.
pub fn check_downgrade(
    m: &Manifest,
    generations: &[Generation],
    floor: Option<&semver::Version>,
    allow: bool,
) -> Result<()> {
    let Ok(new) = semver::Version::parse(&m.version) else {
        return Ok(());
    };
    let newest_good = generations
        .iter()
        .filter(|g| g.status == Status::Good)
        .filter_map(|g| semver::Version::parse(&g.version).ok())
        .max();
    if let Some(good) = newest_good
        && new < good
        && !allow
    {
        return Err(Error::Policy(format!(
            "bundle version {new} is older than the newest good generation ({good}); use `smoker-install rollback` to return to a kept generation, or pass --allow-downgrade"
        )));
    }
    match floor {
        Some(floor) if new < *floor && !allow => Err(Error::Policy(format!(
            "bundle version {new} is below this profile's anti-rollback floor {floor} (the highest version ever committed here); an older signed bundle is not installed again unless you pass --allow-downgrade, which lowers the floor"
        ))),
        _ => Ok(()),
    }
}

/// The profile's anti-rollback floor, if one was recorded.
pub fn read_floor(layout: &Layout, profile: &str) -> Option<semver::Version> {
    let text = std::fs::read_to_string(layout.floor_file(profile)).ok()?;
    semver::Version::parse(text.trim()).ok()
}

/// After `version` was committed: raises the floor to it, or — when the operator allowed a
/// downgrade — sets the floor to it (lowering it) and says so in the audit log. Returns the
/// floor as it is now.
pub fn record_commit(
    layout: &Layout,
    profile: &str,
    version: &str,
    downgrade_allowed: bool,
) -> Result<Option<semver::Version>> {
    let Ok(new) = semver::Version::parse(version) else {
        return Ok(read_floor(layout, profile));
    };
    let old = read_floor(layout, profile);
    let next = match &old {
        Some(f) if *f >= new && !downgrade_allowed => return Ok(old),
        Some(f) if *f == new => return Ok(old),
        _ => new.clone(),
    };
    crate::fsutil::write_atomic(
        &layout.floor_file(profile),
        format!("{next}\n").as_bytes(),
        0o644,
    )?;
    if let Some(f) = old.filter(|f| *f > next) {
        crate::audit::append(
            layout,
            "floor-lowered",
            serde_json::json!({"profile": profile, "from": f.to_string(), "to": next.to_string(), "reason": "--allow-downgrade"}),
        )?;
    }
    Ok(Some(next))
}

/// Every policy decision for installing `m` as `profile` on this host, in the order an
/// operator would fix them. `locked` is the profile the caller holds the lock of: a bundle that
/// names another profile (the file changed between the first look and the verified read) is
/// refused.
pub fn check(
    m: &Manifest,
    locked: &str,
    generations: &[Generation],
    facts: &HostFacts,
) -> Result<()> {
    if m.name != locked {
        return Err(Error::Policy(format!(
            "the verified bundle is for profile `{}`, but `{locked}` was locked for it: the bundle file changed while it was being read; nothing was installed, apply it again",
            m.name
        )));
    }
    if let Some(signer) = &facts.signer {
        check_key_scope(m, signer)?;
    }
    check_arch(m, facts.arch)?;
    check_environment(
        m,
        facts.environment.as_ref(),
        facts.allow_env_change,
        &facts.config_path,
    )?;
    check_downgrade(m, generations, facts.floor.as_ref(), facts.allow_downgrade)?;
    check_host_access(m, facts.allowances.as_ref(), &facts.config_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, version: &str, arch: Arch, env: &str) -> Manifest {
        Manifest::skeleton(name, version, arch, env)
    }

    fn generation(number: u32, version: &str, status: Status) -> Generation {
        crate::profile::test_generation(number, version, status)
    }

    fn facts() -> HostFacts {
        HostFacts {
            arch: Some(Arch::Amd64),
            environment: Some(("prod".into(), "declared in the host config".into())),
            ..HostFacts::default()
        }
    }

    fn policy_message(r: Result<()>) -> String {
        match r {
            Err(Error::Policy(m)) => m,
            other => panic!("expected a policy refusal, got {other:?}"),
        }
    }

    #[test]
    fn foreign_architecture_is_refused_naming_the_right_bundle() {
        let m = manifest("cloud", "1.0.0", Arch::Armv7, "prod");
        let msg = policy_message(check(&m, "cloud", &[], &facts()));
        assert!(
            msg.contains("bundle is for armv7, this host is amd64"),
            "{msg}"
        );
        assert!(msg.contains("use the amd64 bundle"), "{msg}");
        // An unknown host architecture judges nothing.
        let f = HostFacts {
            arch: None,
            ..facts()
        };
        check(&m, "cloud", &[], &f).expect("no known host arch: no refusal");
    }

    #[test]
    fn another_environment_is_refused_unless_allowed() {
        let m = manifest("cloud", "1.0.0", Arch::Amd64, "dev");
        let msg = policy_message(check(&m, "cloud", &[], &facts()));
        assert!(msg.contains("environment `dev`"), "{msg}");
        assert!(
            msg.contains("this host is `prod` (declared in the host config)"),
            "{msg}"
        );
        let f = HostFacts {
            allow_env_change: true,
            ..facts()
        };
        check(&m, "cloud", &[], &f).expect("allowed by --allow-env-change");
    }

    #[test]
    fn a_host_without_environment_takes_no_bundle_silently() {
        let m = manifest("cloud", "1.0.0", Arch::Amd64, "dev");
        let none = HostFacts {
            environment: None,
            config_path: PathBuf::from("/etc/smoker/host.toml"),
            ..facts()
        };
        let msg = policy_message(check(&m, "cloud", &[], &none));
        assert!(msg.contains("this host has no environment yet"), "{msg}");
        assert!(
            msg.contains("`environment = \"dev\"` in /etc/smoker/host.toml"),
            "{msg}"
        );
        assert!(msg.contains("`--environment dev`"), "{msg}");
        // The operator's choice on the command line is an environment like a declared one.
        let mut host = HostConfig::default()
            .choose_environment(Some("dev"))
            .expect("choose");
        let dir = tempfile::tempdir().expect("tempdir");
        let chosen = host_environment(&Layout::new(dir.path()), &host, "cloud");
        assert_eq!(
            chosen,
            Some(("dev".to_string(), "chosen by --environment".to_string()))
        );
        let f = HostFacts {
            environment: chosen,
            ..none
        };
        check(&m, "cloud", &[], &f).expect("chosen explicitly");
        // A declared environment is not overridden from the command line.
        host.environment = Some("prod".into());
        host.environment_chosen = false;
        match host.choose_environment(Some("dev")) {
            Err(Error::Policy(msg)) => assert!(
                msg.contains("--environment dev contradicts `environment = \"prod\"`"),
                "{msg}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn signer(scopes: &[KeyScope]) -> Signer {
        Signer {
            key_id: "0123456789ABCDEF".into(),
            scopes: scopes
                .iter()
                .map(|s| (s.clone(), PathBuf::from("/etc/smoker/keys/dev/ci.pub")))
                .collect(),
        }
    }

    #[test]
    fn a_scoped_key_signs_only_its_environment_and_profiles() {
        let m = manifest("cloud", "1.0.0", Arch::Amd64, "prod");
        let dev = KeyScope {
            environment: Some("dev".into()),
            profiles: None,
        };
        let f = HostFacts {
            signer: Some(signer(std::slice::from_ref(&dev))),
            ..facts()
        };
        let msg = policy_message(check(&m, "cloud", &[], &f));
        assert!(msg.contains("signed by key 0123456789ABCDEF"), "{msg}");
        assert!(
            msg.contains(
                "trusts only for environment `dev`, any profile (/etc/smoker/keys/dev/ci.pub)"
            ),
            "{msg}"
        );
        assert!(msg.contains("environment `prod`, profile `cloud`"), "{msg}");
        // The key's own environment, an unscoped copy of it, or a profile list naming it pass.
        check(
            &manifest("cloud", "1.0.0", Arch::Amd64, "dev"),
            "cloud",
            &[],
            &HostFacts {
                environment: Some(("dev".into(), "declared".into())),
                ..f.clone()
            },
        )
        .expect("dev bundle, dev key");
        let both = HostFacts {
            signer: Some(signer(&[dev, KeyScope::default()])),
            ..facts()
        };
        check(&m, "cloud", &[], &both).expect("also trusted for anything");
        let only_device = KeyScope {
            environment: Some("prod".into()),
            profiles: Some(vec!["device".into()]),
        };
        let f = HostFacts {
            signer: Some(signer(&[only_device])),
            ..facts()
        };
        let msg = policy_message(check(&m, "cloud", &[], &f));
        assert!(msg.contains("profiles `device`"), "{msg}");
    }

    #[test]
    fn host_access_beyond_the_policy_is_refused_before_anything_is_stored() {
        let mut m = manifest("cloud", "1.0.0", Arch::Amd64, "prod");
        m.host_access.insert(
            "ui".into(),
            smoker_format::host_access::HostAccess {
                privileged: true,
                ..Default::default()
            },
        );
        let f = HostFacts {
            config_path: PathBuf::from("/etc/smoker/host.toml"),
            ..facts()
        };
        let msg = policy_message(check(&m, "cloud", &[], &f));
        assert!(
            msg.contains("service `ui` asks for privileged mode"),
            "{msg}"
        );
        assert!(msg.contains("`privileged = true`"), "{msg}");
        assert!(
            msg.contains("`[policy.cloud]` in /etc/smoker/host.toml"),
            "{msg}"
        );
        let allowed = HostFacts {
            allowances: Some(crate::access::Allowances {
                privileged: true,
                ..Default::default()
            }),
            ..f
        };
        check(&m, "cloud", &[], &allowed).expect("allowed by the policy");
    }

    #[test]
    fn downgrade_below_the_newest_good_generation_is_refused() {
        let gens = [
            generation(1, "1.0.0", Status::Good),
            generation(2, "1.2.0", Status::Good),
            generation(3, "2.0.0", Status::Failed),
        ];
        let m = manifest("cloud", "1.1.0", Arch::Amd64, "prod");
        let msg = policy_message(check(&m, "cloud", &gens, &facts()));
        assert!(
            msg.contains("1.1.0 is older than the newest good generation (1.2.0)"),
            "{msg}"
        );
        assert!(msg.contains("smoker-install rollback"), "{msg}");
        // A failed newer generation does not raise the bar; the same version is no downgrade.
        check(
            &manifest("cloud", "1.2.0", Arch::Amd64, "prod"),
            "cloud",
            &gens,
            &facts(),
        )
        .expect("same version as the newest good one");
        let f = HostFacts {
            allow_downgrade: true,
            ..facts()
        };
        check(&m, "cloud", &gens, &f).expect("allowed by --allow-downgrade");
        // Pre-releases order before their release.
        let pre = manifest("cloud", "1.2.0-rc.1", Arch::Amd64, "prod");
        policy_message(check(&pre, "cloud", &gens, &facts()));
    }

    #[test]
    fn the_floor_refuses_older_versions_even_without_any_generation() {
        let m = manifest("cloud", "1.4.0", Arch::Amd64, "prod");
        let f = HostFacts {
            floor: Some(semver::Version::new(1, 5, 0)),
            ..facts()
        };
        // A new profile directory (no generations) does not lower the floor.
        let msg = policy_message(check(&m, "cloud", &[], &f));
        assert!(
            msg.contains("below this profile's anti-rollback floor 1.5.0"),
            "{msg}"
        );
        let allowed = HostFacts {
            allow_downgrade: true,
            ..f.clone()
        };
        check(&m, "cloud", &[], &allowed).expect("--allow-downgrade passes the floor");
        check(
            &manifest("cloud", "1.5.0", Arch::Amd64, "prod"),
            "cloud",
            &[],
            &f,
        )
        .expect("the floor itself is allowed");
    }

    #[test]
    fn the_floor_rises_with_commits_survives_the_profile_and_is_lowered_only_when_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        assert_eq!(read_floor(&layout, "cloud"), None);
        let v = |s: &str| semver::Version::parse(s).expect("semver");
        assert_eq!(
            record_commit(&layout, "cloud", "1.2.0", false).expect("commit"),
            Some(v("1.2.0"))
        );
        assert_eq!(
            record_commit(&layout, "cloud", "1.5.0", false).expect("commit"),
            Some(v("1.5.0"))
        );
        // A rollback-like commit of an older version without the allowance keeps the floor.
        assert_eq!(
            record_commit(&layout, "cloud", "1.2.0", false).expect("commit"),
            Some(v("1.5.0"))
        );
        // Removing the profile's directory does not touch it.
        std::fs::create_dir_all(layout.profile("cloud")).expect("mkdir");
        std::fs::remove_dir_all(layout.profile("cloud")).expect("rm");
        assert_eq!(read_floor(&layout, "cloud"), Some(v("1.5.0")));
        // --allow-downgrade lowers it, and the audit log says so.
        assert_eq!(
            record_commit(&layout, "cloud", "1.1.0", true).expect("commit"),
            Some(v("1.1.0"))
        );
        let log = std::fs::read_to_string(layout.audit_log()).expect("audit log");
        assert!(log.contains("floor-lowered"), "{log}");
        assert!(log.contains("\"from\":\"1.5.0\""), "{log}");
        assert!(log.contains("\"to\":\"1.1.0\""), "{log}");
    }

    #[test]
    fn a_bundle_for_another_profile_than_the_locked_one_is_refused() {
        let m = manifest("device", "1.0.0", Arch::Amd64, "prod");
        let msg = policy_message(check(&m, "cloud", &[], &facts()));
        assert!(msg.contains("profile `device`"), "{msg}");
        assert!(msg.contains("`cloud` was locked"), "{msg}");
    }
}
