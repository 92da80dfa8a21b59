//! The cleanup guard: what a test created in Docker and on disk, removed on drop.

use crate::docker::{compose_labelled, docker_many, docker_output};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Repository of the shared test-service base image ([`crate::images::base_image`]).
pub const BASE_REPOSITORY: &str = "smoker-testkit/testsvc";

/// The base image's ID once this process has built or found it.
static SHARED_BASE_ID: OnceLock<String> = OnceLock::new();

/// Records the shared base image's ID, so that no cleanup removes it.
pub fn protect_shared_base(id: &str) {
    let _ = SHARED_BASE_ID.set(id.to_string());
}

/// True when `reference` (a reference or an ID) names the shared base image, which no test
/// may remove.
pub fn is_shared_base(reference: &str) -> bool {
    reference.starts_with(&format!("{BASE_REPOSITORY}:"))
        || reference.starts_with(&format!("docker.io/{BASE_REPOSITORY}:"))
        || SHARED_BASE_ID.get().is_some_and(|id| id == reference)
}

/// Removes, on drop, what a test registered: containers (`docker rm -f -v`), Compose projects
/// (every container, network and volume labelled `com.docker.compose.project=NAME`), volumes,
/// networks, images, then directories. Best effort: errors are ignored. Create one at the start
/// of a test so it also cleans up after a panic.
///
/// Images are removed without force and never the shared base image
/// ([`crate::images::base_image`]): a reference (tag or `repo@digest`) with `docker rmi
/// REFERENCE`, which only untags an image that has other references or dependent images; an
/// image ID by removing each of its references, then the ID. So a removal can never delete a
/// layer or a parent image another test is building on; register only images that belong to
/// this test (per-test tags, and IDs of images made unique to the test).
#[derive(Debug, Default)]
pub struct Cleanup {
    containers: Vec<String>,
    compose_projects: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Cleanup {
    /// An empty guard.
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// Registers a container (name or ID); returns it.
    pub fn container(&mut self, name: &str) -> String {
        self.containers.push(name.to_string());
        name.to_string()
    }

    /// Registers a Compose project name; returns it.
    pub fn compose_project(&mut self, name: &str) -> String {
        self.compose_projects.push(name.to_string());
        name.to_string()
    }

    /// Registers a named volume; returns it.
    pub fn volume(&mut self, name: &str) -> String {
        self.volumes.push(name.to_string());
        name.to_string()
    }

    /// Registers a network; returns it.
    pub fn network(&mut self, name: &str) -> String {
        self.networks.push(name.to_string());
        name.to_string()
    }

    /// Registers an image of this test: a reference (`name:tag`, `repo@digest`) or an image ID
    /// (`sha256:…`) of an image unique to the test; returns it.
    pub fn image(&mut self, reference: &str) -> String {
        self.images.push(reference.to_string());
        reference.to_string()
    }

    /// Registers a directory to delete last (made writable first: store entries are
    /// read-only).
    pub fn dir(&mut self, path: &Path) -> PathBuf {
        self.dirs.push(path.to_path_buf());
        path.to_path_buf()
    }
}

/// True for an image ID (`sha256:<hex>`), false for a reference.
fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes every reference of image `id` (tags and repo digests), then the ID, without force.
/// Errors (absent, in use, has dependent images) are ignored.
pub(crate) fn remove_image_refs_and_id(id: &str) {
    let out = docker_output(&[
        "image",
        "inspect",
        "--format",
        "{{range .RepoTags}}{{.}} {{end}}{{range .RepoDigests}}{{.}} {{end}}",
        id,
    ]);
    if !out.status.success() {
        return;
    }
    for reference in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if !is_shared_base(reference) {
            let _ = docker_output(&["image", "rm", reference]);
        }
    }
    let _ = docker_output(&["image", "rm", id]);
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut containers = std::mem::take(&mut self.containers);
        let mut networks = std::mem::take(&mut self.networks);
        let mut volumes = std::mem::take(&mut self.volumes);
        let projects = std::mem::take(&mut self.compose_projects);
        for project in &projects {
            containers.extend(compose_labelled("container", project));
        }
        docker_many(&["rm", "-f", "-v"], &containers);
        for project in &projects {
            networks.extend(compose_labelled("network", project));
            volumes.extend(compose_labelled("volume", project));
        }
        docker_many(&["network", "rm"], &networks);
        docker_many(&["volume", "rm", "-f"], &volumes);
        // Newest first: an image derived from another one goes before its parent.
        let images: Vec<String> = std::mem::take(&mut self.images)
            .into_iter()
            .rev()
            .filter(|r| !is_shared_base(r))
            .collect();
        for reference in images.iter().filter(|r| !is_image_id(r)) {
            let _ = docker_output(&["image", "rm", reference]);
        }
        for id in images.iter().filter(|r| is_image_id(r)) {
            remove_image_refs_and_id(id);
        }
        for dir in std::mem::take(&mut self.dirs).into_iter().rev() {
            crate::make_writable(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
