//! What this host lets a verified bundle do before anything of it is stored: its
//! architecture, its environment and its version against the profile's history.
//!
//! The decisions are pure functions of the signed manifest and the host's facts, so apply,
//! `--usb` and preflight judge a bundle the same way, and each decision is unit-tested.

use crate::error::{Error, Result};
use crate::hostconfig::HostConfig;
use crate::layout::Layout;
use crate::profile::{Generation, Profile, Status};
use smoker_format::manifest::{Arch, Manifest};

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
        return Some((e.clone(), "declared in the host config".into()));
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

/// A bundle of another environment than the host's is refused unless allowed.
pub fn check_environment(
    m: &Manifest,
    host_env: Option<&(String, String)>,
    allow_change: bool,
) -> Result<()> {
    match host_env {
        Some((env, from)) if *env != m.environment && !allow_change => Err(Error::Policy(format!(
            "bundle is for environment `{}`, but this host is `{env}` ({from}); use the `{env}` bundle, or pass --allow-env-change if the host really changes environment",
            m.environment
        ))),
        _ => Ok(()),
    }
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
    check_arch(m, facts.arch)?;
    check_environment(m, facts.environment.as_ref(), facts.allow_env_change)?;
    check_downgrade(m, generations, facts.floor.as_ref(), facts.allow_downgrade)
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
        let none = HostFacts {
            environment: None,
            ..facts()
        };
        check(&m, "cloud", &[], &none).expect("a host without environment takes the first");
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
