//! The `tessera` command line.

mod cli;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tessera::{
    app::{Core, Vault},
    audit::AuditContext,
    config::{Config, LogFormat, Overrides},
    pki::bootstrap,
};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "API keys and mTLS identities, issued and verified"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (creates data/ and certs/ on first start).
    Serve(ServeArgs),
    /// Initialise a fresh data directory sealed with Shamir shares of the master key (no key
    /// file): creates the CA, the server certificate and the admin credential, and prints the
    /// shares, one per line. Give each to a different custodian.
    Init(InitArgs),
    /// Re-issue the bootstrap admin credential (certs/admin.pem, certs/admin.key) offline,
    /// with the server stopped: the way back in when it is lost or expired. Every earlier
    /// admin certificate is revoked (reason superseded) unless --keep-old is given.
    AdminCert(AdminCertArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Download an online backup from a running server (GET /v1/sys/backup, admin).
    Backup {
        #[command(flatten)]
        target: TargetArgs,
        /// Where to write the backup (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into an empty data directory (server stopped). The master key is not
    /// in a backup: bring the key file, the environment variable, or the shares.
    Restore {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        dirs: DirArgs,
        /// A JSON-lines copy of the audit log, to name key revocations made after the backup.
        #[arg(long)]
        audit_log: Option<PathBuf>,
    },
    /// Rotate the master key offline (server stopped): the keyring is rewrapped; the key file
    /// is replaced, or new shares are printed with --shares/--threshold (which also moves a
    /// key-file directory to shares). Shares mode reads the current shares from stdin.
    RotateMaster {
        #[command(flatten)]
        dirs: DirArgs,
        #[arg(long, requires = "threshold")]
        shares: Option<u8>,
        #[arg(long, requires = "shares")]
        threshold: Option<u8>,
    },
    /// Benchmark helper: fill a data directory with `keys` API keys under one API (offline,
    /// batched) and write their secrets, one per line, to `out`.
    #[command(hide = true)]
    BenchPreload {
        #[command(flatten)]
        dirs: DirArgs,
        #[arg(long)]
        keys: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Keep a service's certificate renewed: at 2/3 of its lifetime (with jitter), over mTLS
    /// with the certificate itself; files replaced atomically, then the reload hook. Exits
    /// non-zero if the certificate has expired or is refused. SIGHUP renews at once.
    Agent(AgentArgs),
    /// Who the server takes you for.
    Whoami {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, global = true, value_enum, default_value_t)]
        output: cli::Output,
    },
    /// Register and list APIs.
    Apis {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, global = true, value_enum, default_value_t)]
        output: cli::Output,
        #[command(subcommand)]
        command: cli::Apis,
    },
    /// Issue, list, read, rotate, revoke and verify API keys.
    Keys {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, global = true, value_enum, default_value_t)]
        output: cli::Output,
        #[command(subcommand)]
        command: cli::Keys,
    },
    /// Issue, list, revoke and verify client certificates.
    Certs {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, global = true, value_enum, default_value_t)]
        output: cli::Output,
        #[command(subcommand)]
        command: cli::Certs,
    },
    /// Send one unseal share to a sealed server (the share is read from standard input).
    Unseal {
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// The server the agent talks to, and the CA bundle it trusts.
#[derive(Args)]
struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long = "server",
        env = "TESSERA_ADDR",
        default_value = "https://localhost:8443"
    )]
    server: String,
    /// The CA bundle to trust.
    #[arg(long, env = "TESSERA_CACERT", default_value = "certs/ca.pem")]
    ca: PathBuf,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Get the first certificate with a single-use enrolment token (read from
    /// TESSERA_ENROL_TOKEN, else the first line of standard input); a new key pair is made
    /// here and never leaves this machine.
    Bootstrap {
        #[command(flatten)]
        server: ServerArgs,
        /// The service name the token was made for.
        #[arg(long)]
        identity: String,
        /// Where to write the certificate (with its chain).
        #[arg(long)]
        cert: PathBuf,
        /// Where to write the private key (0600).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        ttl: Option<u64>,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    server: ServerArgs,
    /// The certificate to keep renewed (PEM, with its chain); replaced in place.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Its private key (PEM); replaced in place (0600) with --rekey.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Run this after each renewal (split like a shell would, run without one), e.g.
    /// "systemctl reload nginx".
    #[arg(long)]
    exec: Option<String>,
    /// Send SIGHUP to the process whose pid is in this file after each renewal.
    #[arg(long)]
    signal_pid: Option<PathBuf>,
    /// When to renew, as a fraction of the certificate's lifetime.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    renew_at: f64,
    /// A fresh key pair (and CSR) at each renewal.
    #[arg(long)]
    rekey: bool,
    /// Lifetime to ask for, in seconds (default: the server's default lifetime).
    #[arg(long)]
    ttl: Option<u64>,
    /// Renew if due, then exit (for cron).
    #[arg(long)]
    once: bool,
}

/// Which server, and with which credential.
#[derive(Args, Clone)]
struct TargetArgs {
    /// The server's base URL.
    #[arg(
        long = "server",
        env = "TESSERA_ADDR",
        default_value = "https://localhost:8443",
        global = true
    )]
    addr: String,
    /// The CA bundle to trust.
    #[arg(
        long = "ca",
        env = "TESSERA_CACERT",
        default_value = "certs/ca.pem",
        global = true
    )]
    ca: PathBuf,
    /// Client certificate (PEM chain).
    #[arg(long, env = "TESSERA_CLIENT_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "TESSERA_CLIENT_KEY", global = true)]
    key: Option<PathBuf>,
    /// A root key, sent as a bearer token (prefer the environment variable).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

impl TargetArgs {
    fn target(self) -> tessera::client::Target {
        // Without any credential, the bootstrap admin's files next to the CA bundle.
        let dir = self
            .ca
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        let (cert, key) = match (self.cert, self.key, &self.token) {
            (Some(c), Some(k), _) => (Some(c), Some(k)),
            (None, None, None) if dir.join("admin.pem").exists() => {
                (Some(dir.join("admin.pem")), Some(dir.join("admin.key")))
            }
            _ => (None, None),
        };
        tessera::client::Target {
            addr: self.addr,
            ca: self.ca,
            cert,
            key,
            token: self.token.map(tessera::crypto::secret::SecretString::new),
        }
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain offline (server stopped), optionally against a saved checkpoint.
    /// Exits non-zero and names the first bad sequence number if the log was tampered with.
    Verify {
        #[command(flatten)]
        dirs: DirArgs,
        /// A checkpoint saved from `GET /v1/audit/checkpoint`.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
}

#[derive(Args)]
struct DirArgs {
    /// Optional TOML configuration file.
    #[arg(long, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (sled database, master key file).
    #[arg(long, env = "TESSERA_DATA")]
    data: Option<PathBuf>,
    /// Directory of public trust material and local credentials.
    #[arg(long, env = "TESSERA_CERTS")]
    certs: Option<PathBuf>,
}

#[derive(Args)]
struct AdminCertArgs {
    #[command(flatten)]
    dirs: DirArgs,
    /// Leave earlier admin certificates valid (by default they are revoked, so a lost one
    /// stops working).
    #[arg(long)]
    keep_old: bool,
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    dirs: DirArgs,
    /// Number of shares to make.
    #[arg(long)]
    shares: u8,
    /// Number of shares needed to unseal.
    #[arg(long)]
    threshold: u8,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, env = "TESSERA_TRUST_DOMAIN")]
    trust_domain: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    dirs: DirArgs,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "TESSERA_LISTEN")]
    listen: Option<String>,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, env = "TESSERA_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Log format: human or json.
    #[arg(long, env = "TESSERA_LOG_FORMAT")]
    log_format: Option<String>,
    /// Seconds to wait for open connections at shutdown.
    #[arg(long)]
    shutdown_timeout: Option<u64>,
}

impl DirArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            data: self.data.clone(),
            certs: self.certs.clone(),
            ..Overrides::default()
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One crypto provider for the process: ring. Failing means one was already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => {
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
                tessera::http::server::serve(vault, core).await?;
                Ok(())
            })
        }
        Command::Init(args) => {
            let mut o = args.dirs.overrides();
            o.trust_domain = args.trust_domain;
            let config = Config::load(&o)?;
            init_logging(config.log_format);
            actix_web::rt::System::new().block_on(async move {
                let mut vault = Vault::open(config)?;
                let (master, shares) = vault.init_shares(args.shares, args.threshold)?;
                let core = vault.unseal(master).await?;
                bootstrap::ensure_server_cert(
                    core.pki(),
                    &vault.paths,
                    &vault.config.server_cert,
                    vault.clock.now(),
                )
                .await?;
                drop(core);
                println!(
                    "Initialised {} sealed with {} shares, {} needed to unseal. No key file was written.",
                    vault.config.data_dir.display(),
                    args.shares,
                    args.threshold
                );
                println!("  trust anchor: {}", vault.paths.ca.display());
                println!("  admin cert:   {}", vault.paths.admin_cert.display());
                for s in &shares {
                    println!("{}", s.as_str());
                }
                Ok(())
            })
        }
        Command::Audit(AuditCommand::Verify { dirs, checkpoint }) => {
            let config = Config::load(&dirs.overrides())?;
            init_logging(config.log_format);
            let code = actix_web::rt::System::new().block_on(audit_verify(config, checkpoint))?;
            std::process::exit(code);
        }
        Command::Backup { target, out } => actix_web::rt::System::new().block_on(async move {
            let client = tessera::client::Client::new(&target.target())?;
            let answer = client
                .call(reqwest::Method::GET, "/v1/sys/backup", None)
                .await?
                .ok()?;
            // Its structure only: checking its MAC takes the master key (restore does).
            tessera::store::backup::parse(&answer.body)
                .context("the server's backup does not check out")?;
            tessera::files::write_atomic(&out, &answer.body, tessera::files::PRIVATE)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "backup written: {} ({} bytes)",
                out.display(),
                answer.body.len()
            );
            Ok(())
        }),
        Command::Restore {
            file,
            dirs,
            audit_log,
        } => {
            let config = Config::load(&dirs.overrides())?;
            init_logging(config.log_format);
            restore(&config, &file, audit_log.as_deref())
        }
        Command::RotateMaster {
            dirs,
            shares,
            threshold,
        } => {
            let config = Config::load(&dirs.overrides())?;
            init_logging(config.log_format);
            actix_web::rt::System::new().block_on(async move {
                let mut vault = Vault::open(config)
                    .context("opening the data directory (is a server running on it?)")?;
                let old = match vault.automatic_master()? {
                    Some(m) => m,
                    None => read_shares(&vault)?,
                };
                let source = vault.key_source();
                let (new, texts) = vault.rotate_master(&old, shares.zip(threshold))?;
                // The new key must open everything before this reports success.
                drop(vault.unseal(new.duplicate()?).await?);
                println!("master key rotated (the data keys and the pepper are unchanged)");
                if texts.is_empty() {
                    match source {
                        tessera::app::KeySource::Environment => println!(
                            "set TESSERA_MASTER_KEY to: {}",
                            tessera::crypto::hex::encode(new.expose())
                        ),
                        _ => println!(
                            "new key written to {}",
                            vault.config.data_dir.join("master.key").display()
                        ),
                    }
                }
                for t in &texts {
                    println!("{}", t.as_str());
                }
                Ok(())
            })
        }
        Command::BenchPreload { dirs, keys, out } => {
            let config = Config::load(&dirs.overrides())?;
            actix_web::rt::System::new().block_on(async move {
                let vault = Vault::open(config)?;
                let core = unseal_offline(&vault).await?;
                let now = vault.clock.now();
                let api = core
                    .keys()
                    .create_api(
                        &tessera::store::NoRecord,
                        tessera::ids::TenantName::default_tenant(),
                        serde_json::from_value(serde_json::json!({
                            "name": "bench", "purpose": "benchmark", "owner": "bench", "risk": "low"
                        }))?,
                        now,
                    )
                    .await?;
                let secrets = core
                    .keys()
                    .bulk_issue(&tessera::ids::TenantScope::All, &api.id, keys, 2000, now)
                    .await?;
                let mut text = String::with_capacity(secrets.len() * 48);
                for s in &secrets {
                    text.push_str(s.expose());
                    text.push('\n');
                }
                tessera::files::write_atomic(&out, text.as_bytes(), tessera::files::PRIVATE)?;
                println!("{}", api.id);
                Ok(())
            })
        }
        Command::Agent(AgentArgs {
            command:
                Some(AgentCommand::Bootstrap {
                    server: ServerArgs { server, ca },
                    identity,
                    cert,
                    key,
                    ttl,
                }),
            ..
        }) => {
            let token = cli::secret_input(Some("TESSERA_ENROL_TOKEN"))?;
            let b = tessera::agent::Bootstrap {
                server,
                ca,
                cert: cert.clone(),
                key,
                identity,
                token: tessera::crypto::secret::SecretString::new(token.trim().to_owned()),
                ttl_seconds: ttl,
            };
            let v = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(tessera::agent::bootstrap(b))?;
            println!(
                "Wrote {} (valid until unix {}) and its key. Keep it renewed with `tessera agent`.",
                cert.display(),
                v.not_after
            );
            Ok(())
        }
        Command::Agent(a) => {
            init_logging(LogFormat::Human);
            let (Some(cert), Some(key)) = (a.cert, a.key) else {
                anyhow::bail!("--cert and --key are required");
            };
            let exec = a
                .exec
                .as_deref()
                .map(tessera::agent::split_command)
                .transpose()?;
            let opts = tessera::agent::Options {
                server: a.server.server,
                ca: a.server.ca,
                cert,
                key,
                exec,
                signal_pid: a.signal_pid,
                renew_at: a.renew_at,
                rekey: a.rekey,
                ttl_seconds: a.ttl,
                once: a.once,
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(tessera::agent::run(opts))?;
            Ok(())
        }
        Command::Whoami { target, output } => {
            client_verb(target, |c| async move { cli::whoami(&c, output).await })
        }
        Command::Apis {
            target,
            output,
            command,
        } => client_verb(
            target,
            |c| async move { cli::apis(&c, command, output).await },
        ),
        Command::Keys {
            target,
            output,
            command,
        } => client_verb(
            target,
            |c| async move { cli::keys(&c, command, output).await },
        ),
        Command::Certs {
            target,
            output,
            command,
        } => client_verb(
            target,
            |c| async move { cli::certs(&c, command, output).await },
        ),
        Command::Unseal { target } => actix_web::rt::System::new().block_on(async move {
            let mut t = target.target();
            t.cert = None;
            t.key = None;
            let client = tessera::client::Client::new(&t)?;
            let line = cli::secret_input(None)?;
            let body = serde_json::json!({"share": line.trim()});
            let answer = client
                .call(reqwest::Method::POST, "/v1/sys/unseal", Some(&body))
                .await?
                .ok()?;
            println!("{}", answer.json());
            Ok(())
        }),
        Command::AdminCert(AdminCertArgs { dirs, keep_old }) => {
            let config = Config::load(&dirs.overrides())?;
            init_logging(config.log_format);
            actix_web::rt::System::new().block_on(async move {
                let vault = Vault::open(config)
                    .context("opening the data directory (is a server running on it?)")?;
                let core = unseal_offline(&vault).await?;
                let issued = if core.first_start() {
                    None
                } else {
                    let rec = AuditContext::system(
                        "reissue admin credential (offline)",
                        vault.clock.now(),
                    );
                    Some(
                        bootstrap::issue_admin_cert(
                            &*rec,
                            core.pki(),
                            &vault.paths,
                            vault.clock.now(),
                        )
                        .await?,
                    )
                };
                println!(
                    "admin credential written: {} (key {})",
                    vault.paths.admin_cert.display(),
                    vault.paths.admin_key.display()
                );
                if let Some(i) = issued {
                    println!("  serial {}, valid until {}", i.serial, i.not_after);
                    if !keep_old {
                        let rec = AuditContext::system(
                            "revoke earlier admin credentials (offline)",
                            vault.clock.now(),
                        );
                        let revoked = core
                            .pki()
                            .revoke_admin_certs_except(&*rec, &i.serial, vault.clock.now())
                            .await?;
                        for s in &revoked {
                            println!("  revoked the earlier admin certificate {s}");
                        }
                    }
                }
                Ok(())
            })
        }
    }
}

async fn audit_verify(config: Config, checkpoint: Option<PathBuf>) -> anyhow::Result<i32> {
    let store = tessera::app::open_store(&config)
        .context("opening the data directory (is a server running on it?)")?;
    let cp = match &checkpoint {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cp: tessera::audit::Checkpoint =
                serde_json::from_str(&text).context("the checkpoint file is not a checkpoint")?;
            cp.verify_signature()
                .context("the checkpoint's signature does not verify")?;
            let ours = tessera::audit::stored_public_key(&*store).await?;
            if ours.as_deref() != Some(cp.public_key.as_str()) {
                anyhow::bail!("the checkpoint was signed by another key than this log's");
            }
            Some(cp)
        }
        None => None,
    };
    let report = tessera::audit::check(&*store, cp.as_ref()).await?;
    if report.valid {
        println!(
            "audit log valid: {} entries checked, head seq {}",
            report.checked, report.head_seq
        );
        Ok(0)
    } else {
        println!(
            "audit log INVALID at seq {}: {} ({} entries checked before it)",
            report.first_bad_seq.unwrap_or(0),
            report.problem.as_deref().unwrap_or("unknown problem"),
            report.checked
        );
        Ok(1)
    }
}

/// Runs a client verb on a small runtime.
fn client_verb<F, Fut>(target: TargetArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(tessera::client::Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let client = tessera::client::Client::new(&target.target())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f(client))
}

/// Unseals for an offline command: the key file or `TESSERA_MASTER_KEY`, or shares read from
/// standard input, one per line, as `tessera init` printed them.
async fn unseal_offline(vault: &Vault) -> anyhow::Result<Core> {
    let master = match vault.automatic_master()? {
        Some(m) => m,
        None => read_shares(vault)?,
    };
    Ok(vault.unseal(master).await?)
}

/// Reads shares from standard input until the threshold is reached.
fn read_shares(vault: &Vault) -> anyhow::Result<tessera::crypto::keyring::MasterKey> {
    let threshold = vault.seal.as_ref().map_or(0, |s| usize::from(s.threshold));
    eprintln!("the data directory is sealed: enter {threshold} shares, one per line");
    let mut shares = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for line in std::io::stdin().lines() {
        let line = zeroize::Zeroizing::new(line?);
        if line.trim().is_empty() {
            continue;
        }
        let (n, bytes) = vault.check_share(&line)?;
        if seen.insert(n) {
            shares.push(bytes);
        }
        if shares.len() == threshold {
            break;
        }
    }
    Ok(vault.combine(&shares)?)
}

/// Imports a backup into the (empty, locked) target and checks it against the MAC key of its
/// own keyring, opened with the operator's master key.
fn import_authenticated(
    vault: &mut Vault,
    backup: &tessera::store::backup::Unverified<'_>,
) -> anyhow::Result<()> {
    vault.db()?.import(&backup.entries)?;
    vault.reload_seal()?;
    let master = match vault.automatic_master()? {
        Some(m) => m,
        None if vault.seal.is_some() => read_shares(vault)?,
        None => anyhow::bail!(
            "restore needs the master key that the backup's server used: copy its master.key \
             into {} (mode 0600) or set TESSERA_MASTER_KEY",
            vault.config.data_dir.display()
        ),
    };
    let (_, keyring) = vault
        .db()?
        .unseal(&master)
        .context("the master key does not open the backup's keyring")?;
    backup.verify(&keyring.pepper().backup_key())?;
    Ok(())
}

/// Restores a backup into an empty data directory, and names the revocations made after the
/// backup that it lost (from the certs directory's published CRLs, and the shipped audit log).
fn restore(
    config: &Config,
    file: &std::path::Path,
    audit_log: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let backup = tessera::store::backup::parse(&bytes)
        .with_context(|| format!("{} is not a usable backup", file.display()))?;
    let header = backup.header.clone();
    let db_dir = config.data_dir.join("db");
    let mut vault = Vault::open(config.clone())
        .context("opening the target data directory (is a server running on it?)")?;
    if !vault.db()?.is_empty() {
        anyhow::bail!(
            "{} already holds a database: restore only into an empty data directory",
            config.data_dir.display()
        );
    }
    // The backup's MAC key comes from its own keyring, which only the master key opens: the
    // key file or TESSERA_MASTER_KEY in the target, or the shares on standard input. Nothing
    // of an unauthenticated backup may stay behind.
    if let Err(e) = import_authenticated(&mut vault, &backup) {
        drop(vault);
        let _ = std::fs::remove_dir_all(&db_dir);
        return Err(e.context(format!(
            "{} was not restored (the target directory holds no database)",
            file.display()
        )));
    }
    let db = vault.db()?;
    let entries = &backup.entries;
    let summary = serde_json::json!({
        "backup_created_at": header.created_at,
        "backup_audit_head_seq": header.audit_head_seq,
    });
    db.put_meta(tessera::app::RESTORE_META, summary.to_string().as_bytes())?;
    drop(db);
    drop(vault);
    println!(
        "restored {} entries from a backup made at {} into {} (authenticated with the master key)",
        entries.len(),
        header.created_at,
        config.data_dir.display()
    );
    println!("The first unseal opens a new audit epoch. The master key is not in the backup.");

    // Revocations made after the backup are not in it: name them.
    let in_backup: std::collections::BTreeSet<String> =
        header.revoked_serials.iter().cloned().collect();
    let mut lost: Vec<String> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(config.certs_dir.join("crls.pem")) {
        for block in pem::parse_many(&text).unwrap_or_default() {
            if let Ok((_, crl)) = x509_parser::parse_x509_crl(block.contents()) {
                for r in crl.iter_revoked_certificates() {
                    let serial = tessera::identity::Serial::from_bytes(r.raw_serial());
                    if !in_backup.contains(serial.as_str()) {
                        lost.push(format!("certificate {serial} (in the published CRL)"));
                    }
                }
            }
        }
    }
    if let Some(path) = audit_log {
        let head = header.audit_head_seq;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let action = e["action"].as_str().unwrap_or("");
            if e["seq"].as_u64().unwrap_or(0) > head
                && e["outcome"] == "success"
                && action.ends_with("/revoke")
            {
                lost.push(format!(
                    "{} {} (audit seq {})",
                    if action.contains("/certs/") {
                        "certificate"
                    } else {
                        "key"
                    },
                    e["object"].as_str().unwrap_or("?"),
                    e["seq"]
                ));
            }
        }
    }
    lost.sort();
    lost.dedup();
    if lost.is_empty() {
        println!("No revocation made after the backup is known to be lost.");
    } else {
        println!("Revocations made after the backup, LOST by this restore (revoke them again):");
        for l in &lost {
            println!("  {l}");
        }
    }
    Ok(())
}
