//! Garbage collection: old generations, unreferenced store entries and their images.
//!
//! Keeps the newest `keep` good generations of each profile (so the newest good one always),
//! the current one and any pending one; failed generations go unless current. A store entry is
//! deleted only when no kept generation of any profile refers to it; an image only when no kept
//! generation's manifest uses it.

use crate::error::Result;
use crate::layout::Layout;
use crate::profile::{Profile, Status};
use crate::runtime::Runtime;
use crate::store;
use serde::Serialize;
use std::collections::BTreeSet;

/// What gc removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// `profile:N` of each generation removed.
    pub generations: Vec<String>,
    /// Store entries removed.
    pub store_entries: Vec<String>,
    /// Images removed.
    pub images: Vec<String>,
}

/// Runs gc over every profile. `held` are the profiles whose locks the caller holds; another
/// profile whose lock is held by someone else is left untouched (all its generations count as
/// kept).
pub fn gc(layout: &Layout, runtime: &Runtime, keep: usize, held: &[String]) -> Result<GcReport> {
    let keep = keep.max(1);
    let mut report = GcReport::default();
    let mut kept_entries = BTreeSet::new();
    for name in layout.profile_names() {
        let Some(mut profile) = Profile::open(layout, &name)? else {
            continue;
        };
        let current = profile.current();
        let last_good = profile.last_good(None).map(|g| g.number);
        let mut numbers: Vec<u32> = profile.state.generations.iter().map(|g| g.number).collect();
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        // The newest `keep` generations that can be returned to (good ones); failed ones are
        // kept only while current.
        let newest: BTreeSet<u32> = numbers
            .iter()
            .filter(|n| {
                profile
                    .generation(**n)
                    .is_some_and(|g| g.status == Status::Good)
            })
            .take(keep)
            .copied()
            .collect();
        let busy = !held.contains(&name) && crate::hostlock::is_locked(layout, &name);
        for n in numbers {
            let pending = profile
                .generation(n)
                .is_some_and(|g| g.status == Status::Pending);
            let kept = busy
                || newest.contains(&n)
                || Some(n) == current
                || Some(n) == last_good
                || pending;
            if kept {
                if let Some(g) = profile.generation(n) {
                    kept_entries.insert(g.store.clone());
                }
            } else {
                profile.forget(n)?;
                report.generations.push(format!("{name}:{n}"));
            }
        }
    }
    let mut kept_images = BTreeSet::new();
    for e in &kept_entries {
        if let Ok(entry) = store::open(layout, e) {
            kept_images.extend(
                entry
                    .manifest
                    .images
                    .iter()
                    .map(smoker_format::image_archive::run_reference),
            );
        }
    }
    for e in store::list(layout) {
        if kept_entries.contains(&e) {
            continue;
        }
        let images: Vec<String> = store::open(layout, &e)
            .map(|entry| {
                entry
                    .manifest
                    .images
                    .iter()
                    .map(smoker_format::image_archive::run_reference)
                    .collect()
            })
            .unwrap_or_default();
        store::remove(layout, &e)?;
        report.store_entries.push(e);
        for img in images {
            if !kept_images.contains(&img) && runtime.remove_image(&img) {
                report.images.push(img);
            }
        }
    }
    Ok(report)
}
