//! The `tessera` command line: [`run`] parses the arguments ([`args`]) and runs one verb.
//! `serve` runs on actix's runtime, as the server does; every other verb that needs async
//! runs on the one runtime `block_on` builds. The offline verbs (server stopped) are in
//! `offline`, the verbs that talk to a running server in `client` (keys, certificates,
//! APIs, the agent) and `admin` (tenants, roles, bindings, root keys, PKI, audit, seal).
//! This is the only layer that prints and that uses `anyhow`.

/// `println!` for a verb's answer on standard output. A reader that went away
/// (`tessera keys list | head -1`) ends the process quietly with [`exit::BROKEN_PIPE`], as a
/// Unix tool killed by `SIGPIPE` does, where `println!` would panic.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_line(format_args!($($arg)*))
    };
}

mod admin;
pub mod args;
mod client;
mod floor;
mod offline;

use std::future::Future;

use clap::Parser;

use self::args::{AgentArgs, AgentCommand, AuditCommand, Cli, ClientArgs, Command, ServeArgs};
use crate::{
    app::Vault,
    config::{Config, LogFormat},
};

/// Writes one line of a verb's answer (see `out!`).
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(exit::BROKEN_PIPE)
        }
        Err(e) => {
            eprintln!("error: cannot write the answer: {e}");
            std::process::exit(exit::FAILED);
        }
    }
}

/// The exit codes, so that a script can branch on them (README, *Command line*).
pub mod exit {
    /// Done; for a verdict (`keys verify`, `certs verify`, `audit verify`), VALID.
    pub const OK: i32 = 0;
    /// The command failed: the server could not be reached or answered an error, a file
    /// could not be read or written. Returned by `main` for any error that reaches it.
    pub const FAILED: i32 = 1;
    /// The command line itself is wrong (clap's own code for usage errors).
    pub const USAGE: i32 = 2;
    /// A definite verdict other than VALID: a key or certificate that is revoked, expired,
    /// unknown, lacks a scope...; an audit log that does not verify; `tessera agent` with a
    /// certificate that is expired or refused (revoked) and must be replaced.
    pub const NOT_VALID: i32 = 3;
    /// Standard output was closed before the answer was written: the status of a Unix tool
    /// killed by `SIGPIPE` (128 + 13). Not a success: `init` or `rotate-master` may have
    /// printed shares or a key that nobody read.
    pub const BROKEN_PIPE: i32 = 141;
}

/// Parses the command line and runs the verb it names. Returns the process's exit code when
/// the verb ran to its end ([`exit`]); an error is reported by the caller ([`exit::FAILED`]).
pub fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    // One crypto provider for the process: ring. Failing means one was already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve(args)?,
        Command::Init(args) => block_on(offline::init(args))?,
        Command::AdminCert(args) => block_on(offline::admin_cert(args))?,
        Command::Audit(AuditCommand::Verify { dirs, checkpoint }) => {
            return block_on(offline::audit_verify(dirs, checkpoint));
        }
        Command::Audit(AuditCommand::Check { client }) => {
            let (c, out) = connect(client)?;
            return block_on(async move { admin::audit_check(&c, out).await });
        }
        Command::Audit(AuditCommand::List {
            client,
            limit,
            after_seq,
        }) => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::audit_list(&c, limit, after_seq, out).await })?;
        }
        Command::Audit(AuditCommand::Checkpoint { client, fresh, out }) => {
            let (c, _) = connect(client)?;
            block_on(async move { admin::audit_checkpoint(&c, fresh, out).await })?;
        }
        Command::Backup { target, out } => block_on(client::backup(target, out))?,
        Command::Restore {
            file,
            dirs,
            audit_log,
        } => offline::restore(&file, &dirs, audit_log.as_deref())?,
        Command::Migrate { from, to, config } => block_on(offline::migrate(&from, &to, config))?,
        Command::RotateMaster {
            dirs,
            shares,
            threshold,
        } => block_on(offline::rotate_master(dirs, shares, threshold))?,
        Command::BenchPreload { dirs, keys, out } => {
            block_on(offline::bench_preload(dirs, keys, out))?;
        }
        Command::BenchFloor { certs, listen } => floor::run(&certs, &listen)?,
        Command::Agent(AgentArgs {
            command:
                Some(AgentCommand::Bootstrap {
                    server,
                    identity,
                    cert,
                    key,
                    ttl,
                }),
            ..
        }) => block_on(client::agent_bootstrap(server, identity, cert, key, ttl))?,
        Command::Agent(a) => return block_on(client::agent_run(a)),
        Command::Whoami { client } => {
            let (c, out) = connect(client)?;
            block_on(async move { client::whoami(&c, out).await })?;
        }
        Command::Apis { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { client::apis(&c, command, out).await })?;
        }
        Command::Keys { client, command } => {
            let (c, out) = connect(client)?;
            return block_on(async move { client::keys(&c, command, out).await });
        }
        Command::Certs { client, command } => {
            let (c, out) = connect(client)?;
            return block_on(async move { client::certs(&c, command, out).await });
        }
        Command::Unseal { target } => block_on(client::unseal(target))?,
        Command::Tenants { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::tenants(&c, command, out).await })?;
        }
        Command::Roles { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::roles(&c, command, out).await })?;
        }
        Command::Bindings { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::bindings(&c, command, out).await })?;
        }
        Command::RootKeys { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::root_keys(&c, command, out).await })?;
        }
        Command::Pki { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::pki(&c, command, out).await })?;
        }
        Command::Sys { client, command } => {
            let (c, out) = connect(client)?;
            block_on(async move { admin::sys(&c, command, out).await })?;
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "tessera",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(exit::OK)
}

/// The one runtime of every verb but `serve`: a current-thread tokio runtime, built here and
/// nowhere else, that runs `verb` to its end.
fn block_on<T>(verb: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(verb)
}

/// `tessera serve`: on actix's own runtime (its `System`), which the server needs.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut o = args.dirs.overrides();
    o.listen = args.listen;
    o.trust_domain = args.trust_domain;
    o.log_format = args.log_format;
    o.shutdown_timeout_seconds = args.shutdown_timeout;
    let config = Config::load(&o)?;
    init_logging(config.log_format);
    actix_web::rt::System::new().block_on(async move {
        let vault = Vault::open(config)?;
        let core = match vault.automatic_master()? {
            Some(master) => Some(vault.unseal(master).await?),
            None => None,
        };
        crate::http::server::serve(vault, core).await?;
        Ok(())
    })
}

/// The client of a client verb, and how it prints.
fn connect(args: ClientArgs) -> anyhow::Result<(crate::client::Client, args::Output)> {
    Ok((
        crate::client::Client::new(&args.target.target())?,
        args.output,
    ))
}

/// Logs to standard error, filtered by `RUST_LOG` (default `info`). Colours only for a
/// person at a terminal ([`colour`]).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines get ANSI colours: only when standard error is a terminal (a file, a pipe,
/// journald or a log shipper would get escape codes in its text) and `NO_COLOR` is unset or
/// empty (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour;

    #[test]
    fn colours_only_for_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
