//! `smoker-install`: verifies bundles and applies them on a host.
//!
//! Every subcommand returns a typed result (`commands`), rendered once (`output`): as text, or
//! with `--json` as one envelope. The exit status is the failure's kind
//! (`smoker::error::Kind::exit_code`), the same for every subcommand.

mod cli;
mod commands;
mod output;

use clap::FromArgMatches as _;
use cli::{AuditCmd, Cli, Cmd, PolicyCmd};
use commands::{Ctx, Lifecycle};
use output::Output;
use smoker::envelope::Envelope;
use smoker::error::Kind;
use smoker::layout::Layout;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let out = if cli.json {
        Output::json()
    } else {
        Output::text()
    };
    let command = cli.cmd.name();
    if let Err(e) = trust_gate(&cli) {
        let f = output::Failure::from(e);
        let envelope = Envelope::failure(Some(command), f.kind, f.message, serde_json::Value::Null);
        return out.emit(&envelope, "");
    }
    let ctx = Ctx {
        layout: Layout::new(&cli.root),
        host_config: cli.host_config,
    };
    match cli.cmd {
        Cmd::Verify {
            keys,
            store: true,
            profile,
            ..
        } => out.finish(
            command,
            commands::verify_store(&ctx, &keys, profile.as_deref()),
        ),
        Cmd::Verify { keys, bundle, .. } => {
            out.finish(command, commands::verify(&keys, bundle.unwrap_or_default()))
        }
        Cmd::Apply(args) => out.finish(command, commands::apply(&ctx, args)),
        Cmd::Staged {
            keys,
            apply_due,
            keep,
        } => out.finish(command, commands::staged(&ctx, &keys, apply_due, keep)),
        Cmd::Pull {
            keys,
            channel,
            profiles,
            host_id,
            attempts,
            backoff_ms,
            env_file,
            project,
            keep,
        } => out.finish(
            command,
            commands::pull(
                &ctx,
                commands::PullArgs {
                    keys,
                    channel,
                    profiles,
                    host_id,
                    attempts,
                    backoff_ms,
                    env_file,
                    project,
                    keep,
                },
            ),
        ),
        Cmd::Stage {
            keys,
            wait,
            allow_downgrade,
            allow_env_change,
            environment,
            window,
            bundle,
        } => out.finish(
            command,
            commands::stage(
                &ctx,
                commands::StageArgs {
                    keys,
                    wait,
                    allow_downgrade,
                    allow_env_change,
                    environment,
                    window,
                },
                bundle,
            ),
        ),
        Cmd::Rollback {
            profile,
            to,
            restore_data,
            wait,
        } => out.finish(
            command,
            commands::rollback(
                &ctx,
                profile,
                smoker::rollback::Request {
                    to,
                    restore_data,
                    wait,
                },
            ),
        ),
        Cmd::Preflight {
            keys,
            env_file,
            allow_env_change,
            allow_downgrade,
            environment,
            bundle,
        } => out.finish(
            command,
            commands::preflight(
                &ctx,
                &keys,
                env_file.as_deref(),
                (allow_env_change, allow_downgrade),
                environment.as_deref(),
                bundle,
            ),
        ),
        Cmd::Policy {
            cmd: PolicyCmd::Suggest { keys, bundle },
        } => out.finish(command, commands::policy_suggest(&keys, bundle)),
        Cmd::Backup { profile } => out.finish(command, commands::backup(&ctx, profile)),
        Cmd::Backups { profile } => out.finish(command, commands::backups(&ctx, profile)),
        Cmd::Restore { profile, id } => out.finish(command, commands::restore(&ctx, profile, id)),
        Cmd::Status { profile } => out.finish(command, commands::status(&ctx, profile.as_deref())),
        Cmd::History { profile } => {
            out.finish(command, commands::history(&ctx, profile.as_deref()))
        }
        Cmd::Recover { wait } => out.finish(command, commands::recover(&ctx, wait)),
        Cmd::Gc { keep } => out.finish(command, commands::gc(&ctx, keep)),
        Cmd::Unlock { profile, force } => {
            out.finish(command, commands::unlock(&ctx, profile, force))
        }
        Cmd::UsbLog { dir } => out.finish(command, commands::usb_log(&dir)),
        Cmd::Stop { profile, wait } => out.finish(
            command,
            commands::lifecycle(&ctx, &profile, wait, Lifecycle::Stop),
        ),
        Cmd::Start { profile, wait } => out.finish(
            command,
            commands::lifecycle(&ctx, &profile, wait, Lifecycle::Start),
        ),
        Cmd::Remove {
            profile,
            purge_backups,
            wait,
        } => out.finish(
            command,
            commands::lifecycle(&ctx, &profile, wait, Lifecycle::Remove { purge_backups }),
        ),
        Cmd::Audit {
            cmd: AuditCmd::Verify,
        } => out.finish(command, commands::audit_verify(&ctx)),
    }
}

/// A command line clap refused (exit status 2, message on stderr), or `--help` / `--version`
/// (0). With `--json` anywhere on the line, a usage error is also reported as an envelope on
/// stdout.
fn usage_error(e: &clap::Error) -> ExitCode {
    let code = e.exit_code();
    let _ = e.print();
    if e.use_stderr() && std::env::args_os().skip(1).any(|a| a == "--json") {
        let rendered = e.render().to_string();
        let message = rendered
            .trim()
            .strip_prefix("error: ")
            .unwrap_or(rendered.trim())
            .to_string();
        let envelope = Envelope::failure(None, Kind::Usage, message, serde_json::Value::Null);
        println!("{}", envelope.to_json());
        return ExitCode::from(Kind::Usage.exit_code());
    }
    ExitCode::from(u8::try_from(code).unwrap_or(Kind::Usage.exit_code()))
}

/// Before anything runs: an elevated caller (sudo by a user, set-uid) may not pick what the
/// installer trusts or which policy exceptions apply, and a root process refuses a host root
/// that someone other than root could change.
fn trust_gate(cli: &Cli) -> smoker::error::Result<()> {
    use smoker::privilege::{self, Choices, Invoker};
    let invoker = privilege::invoker();
    if invoker != Invoker::Unprivileged {
        privilege::check_root_dir(&cli.root)?;
    }
    if !matches!(invoker, Invoker::Elevated { .. }) {
        return Ok(());
    }
    let mut choices = Choices {
        root: not_default(&cli.root, smoker::layout::DEFAULT_ROOT),
        host_config: not_default(&cli.host_config, smoker::hostconfig::DEFAULT_HOST_CONFIG),
        ..Choices::default()
    };
    match &cli.cmd {
        Cmd::Verify { keys, .. } => choices.keys = keys_of(keys),
        Cmd::Stage {
            keys,
            allow_downgrade,
            allow_env_change,
            environment,
            ..
        } => {
            choices.keys = keys_of(keys);
            choices.exceptions = exceptions(
                *allow_downgrade,
                *allow_env_change,
                environment.is_some(),
                false,
            );
        }
        Cmd::Apply(a) => {
            choices.keys = keys_of(&a.keys);
            choices.env_file = a.env_file.as_deref();
            choices.exceptions = exceptions(
                a.allow_downgrade,
                a.allow_env_change,
                a.environment.is_some(),
                a.project.is_some(),
            );
        }
        Cmd::Preflight {
            keys,
            env_file,
            allow_env_change,
            allow_downgrade,
            environment,
            ..
        } => {
            choices.keys = keys_of(keys);
            choices.env_file = env_file.as_deref();
            choices.exceptions = exceptions(
                *allow_downgrade,
                *allow_env_change,
                environment.is_some(),
                false,
            );
        }
        Cmd::Staged { keys, .. } => choices.keys = keys_of(keys),
        Cmd::Pull {
            keys,
            env_file,
            project,
            ..
        } => {
            choices.keys = keys_of(keys);
            choices.env_file = env_file.as_deref();
            choices.exceptions = exceptions(false, false, false, project.is_some());
        }
        Cmd::UsbLog { .. } => {
            return Err(smoker::error::Error::Policy(
                "usb-log is for the smoker-usb unit (run by root), not for sudo".into(),
            ));
        }
        Cmd::Policy {
            cmd: PolicyCmd::Suggest { keys, .. },
        } => choices.keys = keys_of(keys),
        _ => {}
    }
    privilege::check_elevated(&invoker, &choices)
}

fn not_default<'a>(p: &'a std::path::Path, default: &str) -> Option<&'a std::path::Path> {
    (p != std::path::Path::new(default)).then_some(p)
}

/// The policy-exception flags that were given.
fn exceptions(
    downgrade: bool,
    env_change: bool,
    environment: bool,
    project: bool,
) -> Vec<&'static str> {
    [
        (downgrade, "--allow-downgrade"),
        (env_change, "--allow-env-change"),
        (environment, "--environment"),
        (project, "--project"),
    ]
    .into_iter()
    .filter_map(|(set, flag)| set.then_some(flag))
    .collect()
}

fn keys_of(k: &cli::KeyArgs) -> Option<&std::path::Path> {
    k.key.as_deref().or(k.keys.as_deref())
}
