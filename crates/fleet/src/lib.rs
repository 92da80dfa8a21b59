//! Fleet rollouts of smoker-release bundles over SSH, without a server of our own: the
//! [`inventory`] (`fleet.toml`, groups, a `discover` command), the system's OpenSSH client
//! ([`ssh`]: one multiplexed connection per host, resumable copies) and the strategies and
//! reports of [`rollout`] (rolling, immediate, scheduled). `cargo xtask rollout` is its CLI.
//!
//! Every host verifies and applies with its own `smoker-install`; this crate only chooses the
//! bundle, moves it and reads the installer's exit status and JSON envelope.

pub mod inventory;
pub mod rollout;
pub mod ssh;
