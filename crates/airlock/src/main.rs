//! The `airlock` command: a thin layer of argument parsing over the
//! server, the store and the HTTP API.
#![forbid(unsafe_code)]

mod admin;
mod audit;
mod client;
mod dlp;
mod proxy;
mod serve;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// The decision path allocates many small, short-lived values across
/// threads (JSON, Cedar values); mimalloc handles that far better than the
/// system allocator (see docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Hold sensitive actions until they are approved, let exactly that action
/// through once, and record every step in a tamper-evident log.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. With no --config and no ./airlock.toml, runs the
    /// quickstart in ./.airlock/.
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run the `[[proxies.http]]` of FILE alone, asking the server named
    /// in its `[proxy]` section with that section's enforcer key.
    Proxy {
        /// A file with `[proxy]` (server_url, token) and `[[proxies.http]]`.
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Ask for a decision without running anything.
    Check(client::ActionArgs),
    /// Break the glass: an immediate grant for your own action in an
    /// emergency (members of [breakglass] groups; --reason required).
    /// Policy still decides what it forbids; two others review it after.
    Breakglass(client::ActionArgs),
    /// Ask, wait for approval, run COMMAND with a consumed grant, report
    /// its outcome, and exit with its exit code.
    Run(client::RunArgs),
    /// List, show, approve, deny, cancel or revoke requests.
    Requests {
        #[command(subcommand)]
        command: client::RequestsCommand,
    },
    /// Notifications: list what waits or failed, retry a failed one
    /// (admin key).
    Outbox {
        #[command(subcommand)]
        command: client::OutboxCommand,
    },
    /// Verify the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Validate and test policies, without a server.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Manage web console users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Find personal data and secrets in files.
    Dlp {
        #[command(subcommand)]
        command: DlpCommand,
    },
    /// Print a shell completion script (see the README for where to put
    /// it).
    Completions {
        /// The shell: bash, zsh, fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `airlock man > airlock.1`.
    Man,
}

/// Commands that only print what the argument parser knows: no runtime,
/// no logging.
fn describe(command: &Command) -> Option<ExitCode> {
    use std::io::Write;
    let mut cli = <Cli as clap::CommandFactory>::command();
    // Written to memory first: clap_complete panics when its writer fails
    // (a closed pipe, as with `| head`); stdout's errors are ours to report.
    let mut text = Vec::new();
    let rendered = match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut cli, "airlock", &mut text);
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(cli).render(&mut text),
        _ => return None,
    };
    let written = rendered.and_then(|()| std::io::stdout().lock().write_all(&text));
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock: {e}");
            ExitCode::from(2)
        }
    })
}

#[derive(Debug, Subcommand)]
enum DlpCommand {
    /// Scan files (streaming, in bounded memory) and print one JSON object
    /// `{"file", "start", "end", "type"}` per finding and line, or at a
    /// terminal (or with --text) `FILE:START-END: TYPE`; offsets are in
    /// bytes, values are never printed. Exits 0 whether or not anything
    /// was found; 2 if a file could not be read (the others are still
    /// scanned) or the config is invalid.
    Scan {
        /// Print JSON lines, also at a terminal (the default when the
        /// output is a pipe or a file).
        #[arg(long, conflicts_with = "text")]
        json: bool,
        /// Print `FILE:START-END: TYPE` lines, also into a pipe or a file
        /// (the default at a terminal).
        #[arg(long)]
        text: bool,
        /// Add the custom detectors of this file's `[dlp]` table
        /// (`[[dlp.patterns]]`, `[[dlp.dictionaries]]`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key; it is printed once, as the last line.
    Create {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Whose key.
        #[arg(long)]
        user: String,
        /// user (default), enforcer or admin.
        #[arg(long, default_value = "user")]
        role: String,
        /// The key stops working after this long (`12h`, `30d`); by
        /// default it lasts until revoked.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// List API keys: id, user, role, created, last used (to the minute),
    /// expires, revoked.
    List {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// Revoke an API key: every running node refuses it (401) from the
    /// next request on. The key is kept, marked revoked, for the audit
    /// trail.
    Revoke {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The key's id (`key_…`, as `keys list` shows it).
        key_id: String,
    },
    /// Replace the audit signing key (checkpoints are signed with the new
    /// one from the next start; the old public key is kept so what it
    /// signed still verifies). Recorded as `key_rotated`. Give every node
    /// the new key file before it starts again.
    RotateAudit {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Exit 0 if the whole log verifies (chain, Merkle tree, every signed
    /// checkpoint in the store and the witness folders); otherwise say
    /// what failed. With --dir, an export, with no database and no config.
    Verify {
        /// The configuration file (the deployment's database).
        #[arg(long, required_unless_present = "dir", conflicts_with = "dir")]
        config: Option<PathBuf>,
        /// An export folder (`airlock audit export`).
        #[arg(long, requires = "public_key")]
        dir: Option<PathBuf>,
        /// The audit public key: a file holding it, or the key (PASERK or
        /// hex). With --config, instead of the key file in the data
        /// directory.
        #[arg(long)]
        public_key: Option<String>,
        #[command(flatten)]
        out: Output,
    },
    /// Write the log for an auditor: DIR/records.jsonl (one line per
    /// record, each a Merkle leaf), DIR/checkpoints/ (the signed tree
    /// checkpoints), DIR/public-key.
    Export {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        /// `jsonl` (the verifiable export) or `ocsf` (OCSF events for a
        /// SIEM, in records.ocsf.jsonl).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Print an inclusion proof of record SEQ in the newest checkpoint.
    Prove {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The record's sequence number.
        #[arg(long)]
        seq: u64,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Load a policy folder and report errors.
    Validate {
        /// The folder.
        dir: PathBuf,
        /// Take users and groups from this config.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run policy test cases.
    Test {
        /// The cases file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Set a user's web console password, read from standard input.
    SetPassword {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The user.
        #[arg(long)]
        user: String,
    },
    /// TOTP step-up for approvals.
    Totp {
        #[command(subcommand)]
        command: TotpCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TotpCommand {
    /// Enrol a user's authenticator: prints the otpauth:// URI to add to
    /// it (replacing an earlier enrolment). The secret is stored sealed.
    Enroll {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The user.
        #[arg(long)]
        user: String,
    },
}

/// `--json` for commands a script would parse.
#[derive(Debug, Args, Clone, Copy)]
pub struct Output {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Not for the server: it goes on serving with its stdout closed
    // (`a_server_whose_stdout_is_closed_serves`).
    if !matches!(cli.command, Command::Serve { .. } | Command::Proxy { .. }) {
        quiet_on_closed_pipe();
    }
    if let Some(code) = describe(&cli.command) {
        return code;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes help a person at a terminal and garble a log file
        // or a journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve::run(config).await,
            Command::Proxy { config } => proxy::run(&config).await,
            Command::Keys {
                command:
                    KeysCommand::Create {
                        config,
                        user,
                        role,
                        expires_in,
                    },
            } => admin::keys_create(&config, &user, &role, expires_in.as_deref()).await,
            Command::Keys {
                command: KeysCommand::List { config, out },
            } => admin::keys_list(&config, out).await,
            Command::Keys {
                command: KeysCommand::Revoke { config, key_id },
            } => admin::keys_revoke(&config, &key_id).await,
            Command::Keys {
                command: KeysCommand::RotateAudit { config },
            } => admin::keys_rotate_audit(&config).await,
            Command::Check(args) => client::check(args).await,
            Command::Breakglass(args) => client::breakglass(args).await,
            Command::Run(args) => client::run(args).await,
            Command::Requests { command } => client::requests(command).await,
            Command::Outbox { command } => client::outbox(command).await,
            Command::Audit {
                command:
                    AuditCommand::Verify {
                        config,
                        dir,
                        public_key,
                        out,
                    },
            } => {
                // Off the async threads: the PostgreSQL driver runs its own
                // event loop.
                tokio::task::spawn_blocking(move || match (config, dir) {
                    (_, Some(dir)) => {
                        audit::verify_dir(&dir, public_key.as_deref().unwrap_or(""), out)
                    }
                    (Some(config), None) => {
                        admin::audit_verify(&config, public_key.as_deref(), out)
                    }
                    (None, None) => anyhow::bail!("--config or --dir"),
                })
                .await?
            }
            Command::Audit {
                command:
                    AuditCommand::Export {
                        config,
                        out,
                        format,
                    },
            } => tokio::task::spawn_blocking(move || audit::export(&config, &out, &format)).await?,
            Command::Audit {
                command: AuditCommand::Prove { config, seq },
            } => tokio::task::spawn_blocking(move || audit::prove(&config, seq)).await?,
            Command::Policy {
                command: PolicyCommand::Validate { dir, config },
            } => admin::policy_validate(&dir, config.as_deref()),
            Command::Policy {
                command: PolicyCommand::Test { file },
            } => admin::policy_test(&file),
            Command::Users {
                command: UsersCommand::SetPassword { config, user },
            } => admin::users_set_password(&config, &user).await,
            Command::Users {
                command:
                    UsersCommand::Totp {
                        command: TotpCommand::Enroll { config, user },
                    },
            } => admin::users_totp_enroll(&config, &user).await,
            Command::Dlp {
                command:
                    DlpCommand::Scan {
                        json,
                        text,
                        config,
                        files,
                    },
            } => {
                // The contract's form (one JSON object per finding) for
                // whatever reads the output; a person at a terminal gets
                // the shorter lines unless they ask.
                let json = json || (!text && !std::io::stdout().is_terminal());
                // Plain blocking file reads: off the async threads.
                tokio::task::spawn_blocking(move || dlp::scan(json, config.as_deref(), &files))
                    .await?
            }
            // Answered by `describe` before the runtime starts.
            Command::Completions { .. } | Command::Man => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // An error can quote a server's answer, which can quote a
            // requester's text: each line made visible (no terminal
            // escapes), and lines after the first indented, so a config
            // error's caret snippet reads as one and quoted text cannot
            // pass for a line of ours.
            let text = format!("{e:#}");
            let lines: Vec<String> = text
                .trim_end()
                .lines()
                .map(|l| airlock_core::display::visible(l).into_owned())
                .collect();
            eprintln!("airlock: {}", lines.join("\n    "));
            ExitCode::from(2)
        }
    }
}

/// A reader that goes away (`airlock keys list | head -2`) is not an
/// error: Rust ignores SIGPIPE, so `println!` panics on the closed pipe,
/// and giving SIGPIPE back its default would take unsafe code. That one
/// panic exits quietly instead, with the status a command killed by
/// SIGPIPE has (141); any other panic is reported as before.
fn quiet_on_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}
