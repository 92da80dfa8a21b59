//! The usual start of an installer test on the real engine.

use crate::docker::require_docker;
use crate::images::{Pushed, pinned_testsvc};
use crate::ports::free_port;
use crate::{Cleanup, Host, Registry};

/// Docker checked, a cleanup guard, a registry on loopback with the test service pushed to it,
/// and a leased port for the stack. Fields drop in order, so the guard goes last.
pub struct Testbed {
    /// The test service with an image ID of its own, in a repository of its own (tag `1`).
    pub image: Pushed,
    /// A loopback port no other test holds.
    pub port: u16,
    /// The registry holding [`Testbed::image`].
    pub registry: Registry,
    /// The test's cleanup guard.
    pub cleanup: Cleanup,
}

impl Testbed {
    /// Checks Docker, starts the registry and pushes the test service to it.
    pub fn new() -> Testbed {
        require_docker();
        let mut cleanup = Cleanup::new();
        let registry = Registry::start();
        let image = pinned_testsvc(&registry, &mut cleanup);
        Testbed {
            image,
            port: free_port(),
            registry,
            cleanup,
        }
    }

    /// A fresh installer host (see [`Host::new`]) whose Compose project this bed cleans up.
    pub fn host(&mut self, compose: Option<&str>) -> Host {
        Host::new(&mut self.cleanup, compose)
    }
}

impl Default for Testbed {
    fn default() -> Self {
        Testbed::new()
    }
}
