//! Garbage collection: old generations, unreferenced store entries and their images.
//!
//! Keeps the newest `keep` good generations of each profile (so the newest good one always),
//! the current one and any pending one; failed generations go unless current. A store entry is
//! deleted only when no kept generation of any profile refers to it (and no apply of its
//! profile is in progress); an image only when no kept entry's manifest uses it.
//!
//! The decision is [`plan`], a pure function of what gc sees on the host; [`gc`] reads the
//! host, plans and carries the plan out.
//!
//! One host-wide lock, `locks/.gc.lock`, closes the window between an apply committing its
//! store entry and its generation linking it (in which the entry looks unreferenced): an apply
//! holds it shared ([`storing`]) from before the commit until the generation is recorded, and
//! gc holds it exclusively from reading the profiles until its removals are done. gc never
//! waits for it: when an apply is storing, gc forgets generations as planned but removes no
//! store entry and no image this time ([`GcReport::store_deferred`]).

use crate::error::{Result, io_at};
use crate::layout::Layout;
use crate::profile::{Profile, Status};
use crate::runtime::Runtime;
use crate::store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What gc removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// `profile:N` of each generation removed.
    pub generations: Vec<String>,
    /// Store entries removed.
    pub store_entries: Vec<String>,
    /// Images removed.
    pub images: Vec<String>,
    /// True when an apply was storing a bundle, so no store entry or image was removed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub store_deferred: bool,
    /// Content-addressed inputs and override files removed (see [`crate::inputs`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
}

/// The host-wide gc lock held shared by an apply while its entry is stored but not yet
/// linked by a generation; released on drop.
pub struct Storing {
    _file: std::fs::File,
}

fn gc_lock_file(layout: &Layout) -> Result<std::fs::File> {
    let path = layout.gc_lock_file();
    crate::fsutil::open_private(&path, crate::fsutil::Private::ReadWrite)
}

/// Takes the gc lock shared (waiting for a gc that runs now, which is short): store entries
/// committed while it is held are not removed by any gc until it is dropped.
pub fn storing(layout: &Layout) -> Result<Storing> {
    let file = gc_lock_file(layout)?;
    file.lock_shared().map_err(io_at(&layout.gc_lock_file()))?;
    Ok(Storing { _file: file })
}

/// One generation as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationView {
    /// Its number.
    pub number: u32,
    /// The store entry it links to.
    pub store: String,
    /// Its status.
    pub status: Status,
}

/// One profile as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileView {
    /// Profile name.
    pub name: String,
    /// The generation `current` points to, if any.
    pub current: Option<u32>,
    /// Its generations in the order of its state file (oldest first).
    pub generations: Vec<GenerationView>,
}

/// One store entry as gc sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    /// Directory name under `store/`.
    pub name: String,
    /// The profile its manifest names (`None` when the entry cannot be read).
    pub profile: Option<String>,
    /// The references compose runs its images under (empty when the entry cannot be read).
    pub images: Vec<String>,
    /// Staged for a later switch (`smoker-install stage`): kept like a linked entry.
    pub staged: bool,
}

/// A store entry gc deletes, with the images that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRemoval {
    /// Directory name under `store/`.
    pub entry: String,
    /// Images of this entry that no kept entry uses and no earlier removal already lists.
    pub images: Vec<String>,
}

/// What gc will remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// `(profile, number)` of each generation to forget: profiles in the given order, each
    /// newest first.
    pub generations: Vec<(String, u32)>,
    /// Store entries to delete, in the order of the store listing.
    pub store_entries: Vec<EntryRemoval>,
}

impl GcPlan {
    /// Every image the plan removes, in order.
    pub fn images(&self) -> Vec<&str> {
        self.store_entries
            .iter()
            .flat_map(|r| r.images.iter().map(String::as_str))
            .collect()
    }
}

/// Decides what gc removes.
///
/// Per profile, in the order given: the newest `keep` good generations (by number) stay, and
/// so do the newest good one, the current one and every pending one; failed and older good
/// generations go. A profile in `busy` (its lock held by another process) keeps every
/// generation. `keep` 0 counts as 1: the newest good generation always stays.
///
/// A store entry in `entries` goes when no kept generation of any profile links to it and its
/// manifest does not name a busy profile (an apply in progress stores its entry well before a
/// generation links it) and it is not staged; its images go with it unless a kept entry uses the same reference.
/// Each image is listed once, under the first entry removed that has it.
pub fn plan(
    profiles: &[ProfileView],
    entries: &[EntryView],
    keep: usize,
    busy: &BTreeSet<String>,
) -> GcPlan {
    let keep = keep.max(1);
    let mut out = GcPlan::default();
    let mut kept_entries = BTreeSet::new();
    for p in profiles {
        let find = |n: u32| p.generations.iter().find(|g| g.number == n);
        let last_good = p
            .generations
            .iter()
            .rev()
            .find(|g| g.status == Status::Good)
            .map(|g| g.number);
        let mut numbers: Vec<u32> = p.generations.iter().map(|g| g.number).collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        // The newest `keep` generations that can be returned to (good ones); failed ones are
        // kept only while current.
        let newest: BTreeSet<u32> = numbers
            .iter()
            .filter(|n| find(**n).is_some_and(|g| g.status == Status::Good))
            .take(keep)
            .copied()
            .collect();
        let is_busy = busy.contains(&p.name);
        for n in numbers {
            let pending = find(n).is_some_and(|g| g.status == Status::Pending);
            let kept = is_busy
                || newest.contains(&n)
                || Some(n) == p.current
                || Some(n) == last_good
                || pending;
            if kept {
                if let Some(g) = find(n) {
                    kept_entries.insert(g.store.clone());
                }
            } else {
                out.generations.push((p.name.clone(), n));
            }
        }
    }
    // A busy profile may be between storing its new entry and recording the generation that
    // links it (verify, preflight, images and backup run in between): its entries stay.
    kept_entries.extend(
        entries
            .iter()
            .filter(|e| e.staged || e.profile.as_ref().is_some_and(|p| busy.contains(p)))
            .map(|e| e.name.clone()),
    );
    let by_name: BTreeMap<&str, &EntryView> =
        entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let kept_images: BTreeSet<&str> = kept_entries
        .iter()
        .filter_map(|e| by_name.get(e.as_str()))
        .flat_map(|e| e.images.iter().map(String::as_str))
        .collect();
    let mut listed: BTreeSet<&str> = BTreeSet::new();
    for e in entries {
        if kept_entries.contains(&e.name) {
            continue;
        }
        let images = e
            .images
            .iter()
            .map(String::as_str)
            .filter(|i| !kept_images.contains(i) && listed.insert(i))
            .map(str::to_string)
            .collect();
        out.store_entries.push(EntryRemoval {
            entry: e.name.clone(),
            images,
        });
    }
    out
}

/// Removing images, the one thing gc asks of the container runtime.
pub trait ImageRemover {
    /// Removes the image `reference`; true when it was removed.
    fn remove_image(&self, reference: &str) -> bool;
}

impl ImageRemover for Runtime {
    fn remove_image(&self, reference: &str) -> bool {
        Runtime::remove_image(self, reference)
    }
}

/// Runs gc over every profile. `held` are the profiles whose locks the caller holds; another
/// profile whose lock is held by someone else is left untouched (all its generations and every
/// store entry of that profile count as kept). The report lists the images the runtime actually
/// removed (one still in use stays).
pub fn gc<R: ImageRemover + ?Sized>(
    layout: &Layout,
    runtime: &R,
    keep: usize,
    held: &[String],
) -> Result<GcReport> {
    // Held (released when dropped at the end) from before the profiles are read until the
    // removals are done; without it, store entries stay this time.
    let exclusive = {
        let file = gc_lock_file(layout)?;
        match file.try_lock() {
            Ok(()) => Some(file),
            Err(std::fs::TryLockError::WouldBlock) => None,
            Err(std::fs::TryLockError::Error(e)) => return Err(io_at(&layout.gc_lock_file())(e)),
        }
    };
    let mut profiles = BTreeMap::new();
    let mut views = Vec::new();
    for name in layout.profile_names() {
        let Some(profile) = Profile::open(layout, &name)? else {
            continue;
        };
        views.push(ProfileView {
            name: name.clone(),
            current: profile.current(),
            generations: profile
                .state
                .generations
                .iter()
                .map(|g| GenerationView {
                    number: g.number,
                    store: g.store.clone(),
                    status: g.status,
                })
                .collect(),
        });
        profiles.insert(name, profile);
    }
    let staged: BTreeSet<String> = crate::staged::staged_entries(layout).into_iter().collect();
    let entries: Vec<EntryView> = store::list(layout)
        .into_iter()
        .map(|name| match store::open(layout, &name) {
            Ok(entry) => EntryView {
                staged: staged.contains(&name),
                name,
                profile: Some(entry.manifest.name.clone()),
                images: entry
                    .manifest
                    .images
                    .iter()
                    .map(smoker_format::image_archive::run_reference)
                    .collect(),
            },
            Err(_) => EntryView {
                staged: staged.contains(&name),
                name,
                profile: None,
                images: Vec::new(),
            },
        })
        .collect();
    // Busy: locked by someone else. A profile being installed for the first time has no state
    // file yet, only its lock and its store entry, so the entries' profiles are asked too. A
    // profile without a lock file has never been locked (taking the lock creates the file).
    let names: BTreeSet<&str> = profiles
        .keys()
        .map(String::as_str)
        .chain(entries.iter().filter_map(|e| e.profile.as_deref()))
        .collect();
    let busy: BTreeSet<String> = names
        .into_iter()
        .filter(|name| {
            !held.iter().any(|h| h == name)
                && layout.lock_file(name).exists()
                && crate::hostlock::is_locked(layout, name)
        })
        .map(str::to_string)
        .collect();
    let plan = plan(&views, &entries, keep, &busy);

    let mut report = GcReport {
        store_deferred: exclusive.is_none(),
        ..GcReport::default()
    };
    for (name, n) in &plan.generations {
        if let Some(profile) = profiles.get_mut(name) {
            profile.forget(*n)?;
            report.generations.push(format!("{name}:{n}"));
        }
    }
    let removals = if exclusive.is_some() {
        plan.store_entries
    } else {
        Vec::new()
    };
    for removal in removals {
        store::remove(layout, &removal.entry)?;
        report.store_entries.push(removal.entry);
        for img in removal.images {
            if runtime.remove_image(&img) {
                report.images.push(img);
            }
        }
    }
    // Inputs: only under the exclusive lock and when no other profile is busy (an apply starting
    // a generation records its inputs while holding the lock shared).
    if exclusive.is_some() && busy.is_empty() {
        let keep: BTreeSet<String> = profiles
            .values()
            .flat_map(|p| p.state.generations.iter())
            .flat_map(|g| g.inputs.iter().cloned())
            .collect();
        report.inputs = crate::inputs::collect(layout, &keep)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Generation;
    use smoker_format::manifest::{
        Arch, ComposeSpec, FORMAT_VERSION, Health, Image, MANIFEST_PATH, Manifest, Source,
    };
    use std::cell::RefCell;

    fn g(number: u32, store: &str, status: Status) -> GenerationView {
        GenerationView {
            number,
            store: store.into(),
            status,
        }
    }

    fn p(name: &str, current: Option<u32>, generations: Vec<GenerationView>) -> ProfileView {
        ProfileView {
            name: name.into(),
            current,
            generations,
        }
    }

    fn e(name: &str, profile: &str, images: &[&str]) -> EntryView {
        EntryView {
            name: name.into(),
            profile: Some(profile.into()),
            images: images.iter().map(|i| i.to_string()).collect(),
            staged: false,
        }
    }

    fn gens(plan: &GcPlan) -> Vec<(&str, u32)> {
        plan.generations
            .iter()
            .map(|(p, n)| (p.as_str(), *n))
            .collect()
    }

    fn entries(plan: &GcPlan) -> Vec<&str> {
        plan.store_entries
            .iter()
            .map(|r| r.entry.as_str())
            .collect()
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    use Status::{Failed, Good, Pending};

    #[test]
    fn keep_one_keeps_a_failed_current_and_the_last_good_only() {
        let profiles = [p(
            "web",
            Some(4),
            vec![
                g(1, "e1", Good),
                g(2, "e2", Failed),
                g(3, "e3", Good),
                g(4, "e4", Failed),
            ],
        )];
        let store = [
            e("e1", "web", &["img:1"]),
            e("e2", "web", &["img:2"]),
            e("e3", "web", &["img:3"]),
            e("e4", "web", &["img:4"]),
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        // 4 stays because it is current (failed or not), 3 because it is the last good one.
        assert_eq!(gens(&plan), [("web", 2), ("web", 1)]);
        assert_eq!(entries(&plan), ["e1", "e2"]);
        assert_eq!(plan.images(), ["img:1", "img:2"]);
    }

    #[test]
    fn a_failed_generation_that_is_not_current_goes_even_when_newest() {
        let profiles = [p(
            "web",
            Some(2),
            vec![g(1, "e1", Good), g(2, "e2", Good), g(3, "e3", Failed)],
        )];
        let store = [
            e("e1", "web", &[]),
            e("e2", "web", &[]),
            e("e3", "web", &[]),
        ];
        let plan = super::plan(&profiles, &store, 5, &none());
        assert_eq!(gens(&plan), [("web", 3)]);
        assert_eq!(entries(&plan), ["e3"]);
    }

    #[test]
    fn pending_generations_stay_whether_current_or_not() {
        // 3 is pending and current (an interrupted apply), 4 pending and never switched to.
        let profiles = [p(
            "web",
            Some(3),
            vec![
                g(1, "e1", Good),
                g(2, "e2", Good),
                g(3, "e3", Pending),
                g(4, "e4", Pending),
            ],
        )];
        let store = [
            e("e1", "web", &[]),
            e("e2", "web", &[]),
            e("e3", "web", &[]),
            e("e4", "web", &[]),
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        assert_eq!(gens(&plan), [("web", 1)]);
        assert_eq!(entries(&plan), ["e1"]);
    }

    #[test]
    fn no_good_generation_keeps_only_current_and_pending() {
        let profiles = [p(
            "web",
            Some(2),
            vec![g(1, "e1", Failed), g(2, "e2", Failed), g(3, "e3", Pending)],
        )];
        let store = [
            e("e1", "web", &[]),
            e("e2", "web", &[]),
            e("e3", "web", &[]),
        ];
        let plan = super::plan(&profiles, &store, 3, &none());
        assert_eq!(gens(&plan), [("web", 1)]);
        assert_eq!(entries(&plan), ["e1"]);
    }

    #[test]
    fn keep_counts_good_generations_newest_first() {
        let profiles = [p(
            "web",
            Some(5),
            vec![
                g(1, "e1", Good),
                g(2, "e2", Good),
                g(3, "e3", Failed),
                g(4, "e4", Good),
                g(5, "e5", Good),
            ],
        )];
        let store: Vec<EntryView> = (1..=5).map(|i| e(&format!("e{i}"), "web", &[])).collect();
        let plan = super::plan(&profiles, &store, 2, &none());
        // Good ones 5 and 4 are the newest two; 3 (failed) does not take a place.
        assert_eq!(gens(&plan), [("web", 3), ("web", 2), ("web", 1)]);
        assert_eq!(entries(&plan), ["e1", "e2", "e3"]);
    }

    #[test]
    fn keep_larger_than_the_count_removes_only_failed_ones() {
        let profiles = [p(
            "web",
            Some(4),
            vec![
                g(1, "e1", Good),
                g(2, "e2", Failed),
                g(3, "e3", Good),
                g(4, "e4", Good),
            ],
        )];
        let store: Vec<EntryView> = (1..=4).map(|i| e(&format!("e{i}"), "web", &[])).collect();
        let plan = super::plan(&profiles, &store, 100, &none());
        assert_eq!(gens(&plan), [("web", 2)]);
        assert_eq!(entries(&plan), ["e2"]);
    }

    #[test]
    fn keep_zero_counts_as_one_so_the_last_good_generation_stays() {
        let profiles = [p(
            "web",
            Some(3),
            vec![g(1, "e1", Good), g(2, "e2", Good), g(3, "e3", Failed)],
        )];
        let store: Vec<EntryView> = (1..=3).map(|i| e(&format!("e{i}"), "web", &[])).collect();
        let zero = super::plan(&profiles, &store, 0, &none());
        assert_eq!(zero, super::plan(&profiles, &store, 1, &none()));
        assert_eq!(gens(&zero), [("web", 1)]);
        assert_eq!(entries(&zero), ["e1"]);
    }

    #[test]
    fn a_store_entry_shared_between_profiles_stays_while_one_keeps_it() {
        // `api` and `web` installed the same bundle contents into one entry (`shared`).
        let profiles = [
            p(
                "api",
                Some(2),
                vec![g(1, "shared", Good), g(2, "api2", Good)],
            ),
            p("web", Some(1), vec![g(1, "shared", Good)]),
        ];
        let store = [
            e("api2", "api", &["img:api2"]),
            e("shared", "api", &["img:shared"]),
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        assert_eq!(gens(&plan), [("api", 1)]);
        assert!(plan.store_entries.is_empty(), "{plan:?}");

        // Once neither profile keeps it, it goes with its image.
        let profiles = [
            p(
                "api",
                Some(2),
                vec![g(1, "shared", Good), g(2, "api2", Good)],
            ),
            p(
                "web",
                Some(2),
                vec![g(1, "shared", Good), g(2, "web2", Good)],
            ),
        ];
        let store = [
            e("api2", "api", &[]),
            e("shared", "api", &["img:shared"]),
            e("web2", "web", &[]),
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        assert_eq!(gens(&plan), [("api", 1), ("web", 1)]);
        assert_eq!(entries(&plan), ["shared"]);
        assert_eq!(plan.images(), ["img:shared"]);
    }

    #[test]
    fn an_image_shared_by_a_kept_and_a_removed_generation_stays() {
        let profiles = [p("web", Some(2), vec![g(1, "e1", Good), g(2, "e2", Good)])];
        let store = [
            e("e1", "web", &["db@sha256:aa", "app@sha256:11"]),
            e("e2", "web", &["db@sha256:aa", "app@sha256:22"]),
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        assert_eq!(
            plan.store_entries,
            [EntryRemoval {
                entry: "e1".into(),
                images: vec!["app@sha256:11".into()],
            }]
        );
    }

    #[test]
    fn an_image_of_two_removed_entries_is_listed_once_under_the_first() {
        let profiles = [p(
            "web",
            Some(3),
            vec![g(1, "e1", Good), g(2, "e2", Good), g(3, "e3", Good)],
        )];
        let store = [
            e("e1", "web", &["cache@sha256:cc", "app@sha256:11"]),
            e(
                "e2",
                "web",
                &["cache@sha256:cc", "app@sha256:22", "app@sha256:22"],
            ),
            e("e3", "web", &["app@sha256:33"]),
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        assert_eq!(
            plan.store_entries,
            [
                EntryRemoval {
                    entry: "e1".into(),
                    images: vec!["cache@sha256:cc".into(), "app@sha256:11".into()],
                },
                EntryRemoval {
                    entry: "e2".into(),
                    images: vec!["app@sha256:22".into()],
                },
            ]
        );
    }

    #[test]
    fn a_busy_profile_keeps_everything_and_protects_its_entries_and_images() {
        let profiles = [
            p("api", Some(2), vec![g(1, "api1", Good), g(2, "api2", Good)]),
            p(
                "web",
                Some(3),
                vec![g(1, "web1", Good), g(2, "web2", Failed), g(3, "web3", Good)],
            ),
        ];
        let store = [
            e("api1", "api", &["shared@sha256:55", "api@sha256:01"]),
            e("api2", "api", &["api@sha256:02"]),
            e("web1", "web", &["shared@sha256:55"]),
            e("web2", "web", &[]),
            e("web3", "web", &[]),
        ];
        let busy: BTreeSet<String> = ["web".to_string()].into();
        let plan = super::plan(&profiles, &store, 1, &busy);
        assert_eq!(gens(&plan), [("api", 1)]);
        // web1 (kept: web is busy) still uses the shared image.
        assert_eq!(
            plan.store_entries,
            [EntryRemoval {
                entry: "api1".into(),
                images: vec!["api@sha256:01".into()],
            }]
        );
        // Not busy, the same host loses web's old and failed generations too.
        let idle = super::plan(&profiles, &store, 1, &none());
        assert_eq!(gens(&idle), [("api", 1), ("web", 2), ("web", 1)]);
        assert_eq!(entries(&idle), ["api1", "web1", "web2"]);
        assert_eq!(idle.images(), ["shared@sha256:55", "api@sha256:01"]);
    }

    #[test]
    fn orphan_and_unreadable_entries_go_and_dangling_links_remove_nothing() {
        // `gone` is linked by the kept generation but missing from the store: nothing to do.
        let profiles = [p("web", Some(1), vec![g(1, "gone", Good)])];
        let store = [
            e("orphan", "web", &["app@sha256:99"]),
            EntryView {
                name: "broken".into(),
                profile: None,
                images: Vec::new(),
                staged: false,
            },
        ];
        let plan = super::plan(&profiles, &store, 1, &none());
        assert!(plan.generations.is_empty());
        assert_eq!(entries(&plan), ["orphan", "broken"]);
        assert_eq!(plan.images(), ["app@sha256:99"]);
    }

    #[test]
    fn entries_of_a_busy_profile_stay_before_any_generation_links_them() {
        // `api` is in the middle of an apply: its new entry is stored (and its images are
        // being loaded) but no generation links it yet. `new` is a first install: no state
        // file yet, only its lock and its entry.
        let profiles = [p("api", Some(1), vec![g(1, "api1", Good)])];
        let store = [
            e("api1", "api", &["api@sha256:01"]),
            e("api2", "api", &["api@sha256:02", "old@sha256:00"]),
            e("new1", "new", &["new@sha256:01"]),
            e("web0", "web", &["old@sha256:00", "web@sha256:00"]),
        ];
        let busy: BTreeSet<String> = ["api".to_string(), "new".to_string()].into();
        let plan = super::plan(&profiles, &store, 1, &busy);
        assert!(plan.generations.is_empty());
        assert_eq!(
            plan.store_entries,
            [EntryRemoval {
                entry: "web0".into(),
                images: vec!["web@sha256:00".into()],
            }]
        );
    }

    #[test]
    fn nothing_to_do_on_an_empty_host() {
        assert_eq!(super::plan(&[], &[], 5, &none()), GcPlan::default());
    }

    // gc() itself, on a host root in a temporary directory, with a recording image remover.

    struct Remover {
        refuse: Vec<String>,
        calls: RefCell<Vec<String>>,
    }

    impl ImageRemover for Remover {
        fn remove_image(&self, reference: &str) -> bool {
            self.calls.borrow_mut().push(reference.to_string());
            !self.refuse.iter().any(|r| r == reference)
        }
    }

    fn manifest(name: &str, images: &[&str]) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            name: name.into(),
            version: "1.0.0".into(),
            arch: Arch::Amd64,
            environment: "dev".into(),
            source: Source {
                commit: None,
                dirty: false,
                recipe_dir: "recipes/x".into(),
            },
            created: 0,
            min_installer_version: "0.1.0".into(),
            compose: ComposeSpec {
                files: Vec::new(),
                project_directory: "stack".into(),
                env_file: None,
            },
            images: images
                .iter()
                .map(|repo_digest| {
                    let (repository, digest) = repo_digest.split_once('@').expect("repo@digest");
                    Image {
                        service: repository.into(),
                        original: format!("{repository}:latest"),
                        repository: repository.into(),
                        digest: digest.into(),
                        index_digest: None,
                        config_digest: Some(format!("sha256:{}", "e".repeat(64))),
                        archive: None,
                    }
                })
                .collect(),
            migrations: Vec::new(),
            migration_runner: None,
            health: Health {
                window_secs: 1,
                failures: 1,
                successes: 1,
                interval_ms: 1,
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

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn add_entry(layout: &Layout, entry: &str, profile: &str, images: &[&str]) {
        let dir = layout.store().join(entry);
        std::fs::create_dir_all(&dir).expect("entry dir");
        std::fs::write(
            dir.join(MANIFEST_PATH),
            manifest(profile, images).to_canonical_json(),
        )
        .expect("manifest");
    }

    fn add_generation(layout: &Layout, profile: &str, n: u32, entry: &str, status: Status) {
        let mut p = Profile::open_or_create(layout, profile, &format!("smoker-{profile}"))
            .expect("profile");
        p.add_pending(Generation {
            number: n,
            store: entry.into(),
            version: "1.0.0".into(),
            arch: "amd64".into(),
            environment: "dev".into(),
            bundle_sha256: String::new(),
            manifest_sha256: String::new(),
            status: Status::Pending,
            installed_at: crate::profile::now(),
            decided_at: None,
            reason: None,
            inputs: Vec::new(),
        })
        .expect("add");
        p.decide(n, status, None).expect("decide");
    }

    fn numbers(layout: &Layout, profile: &str) -> Vec<u32> {
        Profile::open(layout, profile)
            .expect("open")
            .expect("exists")
            .state
            .generations
            .iter()
            .map(|g| g.number)
            .collect()
    }

    #[test]
    fn gc_leaves_the_entry_of_a_first_install_in_progress_alone() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        let img = format!("fresh@{}", digest('5'));
        add_entry(&layout, "e1-fresh", "fresh", &[&img]);
        add_entry(&layout, "e0-gone", "gone", &[]);
        add_generation(&layout, "web", 1, "e1-web", Good);
        let _apply = crate::hostlock::acquire(&layout, "fresh", false).expect("lock fresh");
        let remover = Remover {
            refuse: Vec::new(),
            calls: RefCell::new(Vec::new()),
        };
        let report = gc(&layout, &remover, 1, &["web".to_string()]).expect("gc");
        assert_eq!(report.store_entries, ["e0-gone"]);
        assert!(remover.calls.borrow().is_empty());
        assert!(layout.store().join("e1-fresh").is_dir());
        // No lock file is created for profiles that never took one.
        assert!(!layout.lock_file("gone").exists());
    }

    #[test]
    fn gc_carries_out_the_plan_on_disk_and_reports_what_the_runtime_removed() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        let old = format!("app@{}", digest('1'));
        let busy_img = format!("app@{}", digest('2'));
        let new = format!("app@{}", digest('3'));
        let in_use = format!("side@{}", digest('4'));
        add_entry(&layout, "e1-web", "web", &[&old, &in_use]);
        add_entry(&layout, "e2-web", "web", &[&new]);
        add_entry(&layout, "e1-api", "api", &[&busy_img]);
        add_entry(&layout, "e2-api", "api", &[]);
        add_generation(&layout, "web", 1, "e1-web", Good);
        add_generation(&layout, "web", 2, "e2-web", Good);
        Profile::open(&layout, "web")
            .expect("open")
            .expect("web")
            .switch(2)
            .expect("switch");
        add_generation(&layout, "api", 1, "e1-api", Good);
        add_generation(&layout, "api", 2, "e2-api", Good);
        // `api` is busy: another holder (a second open file description) has its lock.
        let _other = crate::hostlock::acquire(&layout, "api", false).expect("lock api");

        let remover = Remover {
            refuse: vec![in_use.clone()],
            calls: RefCell::new(Vec::new()),
        };
        let report = gc(&layout, &remover, 1, &["web".to_string()]).expect("gc");

        assert_eq!(report.generations, ["web:1"]);
        assert_eq!(report.store_entries, ["e1-web"]);
        assert_eq!(*remover.calls.borrow(), [old.clone(), in_use.clone()]);
        assert_eq!(
            report.images,
            [old],
            "an image the runtime kept is not reported"
        );
        assert_eq!(numbers(&layout, "web"), [2]);
        assert_eq!(numbers(&layout, "api"), [1, 2]);
        assert!(!layout.profile("web").join("1-link").exists());
        assert!(layout.profile("web").join("2-link").exists());
        assert!(!layout.store().join("e1-web").exists());
        for kept in ["e2-web", "e1-api", "e2-api"] {
            assert!(layout.store().join(kept).is_dir(), "{kept} must stay");
        }
        assert_eq!(
            Profile::open(&layout, "web")
                .expect("open")
                .expect("web")
                .current(),
            Some(2)
        );
    }

    /// An apply (one thread) commits its entry and records its generation only after a gc run
    /// by another profile's apply (another thread) has finished: in between, the entry is
    /// linked by no generation and its profile's lock does not protect it (here: not held, as
    /// when gc read the profiles before the apply recorded its generation). The gc lock keeps
    /// it; once the apply released it, gc removes only what is truly unreferenced.
    #[test]
    fn an_entry_stored_but_not_yet_linked_survives_a_concurrent_gc() {
        use std::sync::mpsc::channel;
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        add_entry(&layout, "e1-api", "api", &[]);
        add_generation(&layout, "api", 1, "e1-api", Good);
        add_entry(&layout, "e0-orphan", "gone", &[]);
        let (stored_tx, stored_rx) = channel::<()>();
        let (gc_done_tx, gc_done_rx) = channel::<()>();
        let apply = {
            let layout = layout.clone();
            std::thread::spawn(move || {
                let storing = storing(&layout).expect("gc lock shared");
                add_entry(&layout, "e1-web", "web", &[]);
                stored_tx.send(()).expect("signal");
                gc_done_rx.recv().expect("wait for gc");
                add_generation(&layout, "web", 1, "e1-web", Good);
                drop(storing);
            })
        };
        stored_rx.recv().expect("stored");
        let remover = Remover {
            refuse: Vec::new(),
            calls: RefCell::new(Vec::new()),
        };
        let report = gc(&layout, &remover, 1, &["api".to_string()]).expect("gc");
        gc_done_tx.send(()).expect("signal");
        apply.join().expect("apply thread");
        assert!(report.store_deferred, "{report:?}");
        assert!(report.store_entries.is_empty(), "{report:?}");
        assert!(
            layout.store().join("e1-web").is_dir(),
            "the new entry was removed"
        );

        let report = gc(&layout, &remover, 1, &["api".to_string()]).expect("gc");
        assert!(!report.store_deferred);
        assert_eq!(report.store_entries, ["e0-orphan"]);
        assert!(layout.store().join("e1-web").is_dir());
        assert!(layout.store().join("e1-api").is_dir());
    }
}
