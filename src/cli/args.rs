//! The command line's shape: every verb, flag and help text (clap derive), and the argument
//! groups verbs share (the data/certs directories, the server and credential of a client
//! verb, its output format). Turning arguments into settings ([`DirArgs::overrides`],
//! [`TargetArgs::target`]) is here too; what each verb does is in `offline` and `client`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "API keys and mTLS identities, issued and verified"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Copy an embedded store (a data directory) into an empty PostgreSQL database, with
    /// every server stopped: records stay sealed as they are; counts and the audit chain are
    /// checked in the target before it says what to do next. The master key comes from the
    /// source's key file, `TESSERA_MASTER_KEY`, or shares on stdin.
    Migrate {
        /// The source data directory (holding `db/` and, unless sealed with shares,
        /// `master.key`).
        #[arg(long)]
        from: PathBuf,
        /// The target database, `postgres://…` (it must hold no Tessera data).
        #[arg(long, env = "TESSERA_STORE_URL", hide_env_values = true)]
        to: String,
        /// Optional TOML configuration file (for the target's TLS settings in the URL, use
        /// the URL itself).
        #[arg(long, env = "TESSERA_CONFIG")]
        config: Option<PathBuf>,
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
    /// The load benchmark's framework floor: bare actix-web + rustls with Tessera's TLS
    /// settings, one static route.
    #[command(hide = true)]
    BenchFloor {
        /// The directory with ca.pem, server.pem and server.key.
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Keep a service's certificate renewed: at 2/3 of its lifetime (with jitter), over mTLS
    /// with the certificate itself; files replaced atomically, then the reload hook. Exits 3
    /// if the certificate has expired or is refused (revoked). SIGHUP renews at once.
    Agent(AgentArgs),
    /// Who the server takes you for.
    Whoami {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Register, list, read, change and delete APIs.
    Apis {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Apis,
    },
    /// Issue, list, read, change, rotate, revoke and verify API keys.
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Keys,
    },
    /// Issue, list, read, renew, revoke and verify client certificates; enrolment tokens.
    Certs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Certs,
    },
    /// Send one unseal share to a sealed server (the share is read from standard input).
    Unseal {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Create, list and read tenants (creating one takes the global admin).
    Tenants {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Tenants,
    },
    /// A tenant's roles: the built-in ones and its custom roles.
    Roles {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Roles,
    },
    /// A tenant's role bindings: which roles a service holds.
    Bindings {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Bindings,
    },
    /// Root keys: bearer credentials bound to one tenant (the secret is printed once).
    RootKeys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RootKeys,
    },
    /// The CA bundle, the CRLs, and rotating the issuing CA.
    Pki {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Pki,
    },
    /// Seal state and keyring of a running server; seal it; rotate its data key.
    Sys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Sys,
    },
    /// Print a shell completion script: `tessera completions bash > /etc/bash_completion.d/tessera`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The server the agent talks to, and the CA bundle it trusts.
#[derive(Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long = "server",
        env = "TESSERA_ADDR",
        default_value = "https://localhost:8443"
    )]
    pub server: String,
    /// The CA bundle to trust.
    #[arg(long, env = "TESSERA_CACERT", default_value = "certs/ca.pem")]
    pub ca: PathBuf,
}

#[derive(Subcommand)]
pub enum AgentCommand {
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
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// The certificate to keep renewed (PEM, with its chain); replaced in place.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); replaced in place (0600) with --rekey.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Run this after each renewal (split like a shell would, run without one), e.g.
    /// "systemctl reload nginx".
    #[arg(long)]
    pub exec: Option<String>,
    /// Send SIGHUP to the process whose pid is in this file after each renewal.
    #[arg(long)]
    pub signal_pid: Option<PathBuf>,
    /// When to renew, as a fraction of the certificate's lifetime.
    #[arg(long, default_value_t = 2.0 / 3.0)]
    pub renew_at: f64,
    /// A fresh key pair (and CSR) at each renewal.
    #[arg(long)]
    pub rekey: bool,
    /// Lifetime to ask for, in seconds (default: the server's default lifetime).
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Renew if due, then exit (for cron); when not due, check that the server still takes the
    /// certificate (exit 3 if it is revoked).
    #[arg(long)]
    pub once: bool,
}

/// The server a client verb talks to, and how it prints the answer (shared by `whoami`,
/// `apis`, `keys` and `certs`).
#[derive(Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, global = true, value_enum, default_value_t)]
    pub output: Output,
}

/// Which server, and with which credential.
#[derive(Args, Clone)]
pub struct TargetArgs {
    /// The server's base URL.
    #[arg(
        long = "server",
        env = "TESSERA_ADDR",
        default_value = "https://localhost:8443",
        global = true
    )]
    pub addr: String,
    /// The CA bundle to trust.
    #[arg(
        long = "ca",
        env = "TESSERA_CACERT",
        default_value = "certs/ca.pem",
        global = true
    )]
    pub ca: PathBuf,
    /// Client certificate (PEM chain).
    #[arg(long, env = "TESSERA_CLIENT_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "TESSERA_CLIENT_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// A root key, sent as a bearer token (prefer the environment variable).
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl TargetArgs {
    pub fn target(self) -> crate::client::Target {
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
        crate::client::Target {
            addr: self.addr,
            ca: self.ca,
            cert,
            key,
            token: self.token.map(crate::crypto::secret::SecretString::new),
        }
    }
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain offline (server stopped), optionally against a saved checkpoint.
    /// Exits 3 and names the first bad sequence number if the log was tampered with.
    Verify {
        #[command(flatten)]
        dirs: DirArgs,
        /// A checkpoint saved from `GET /v1/audit/checkpoint` (`tessera audit checkpoint`).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
    },
    /// Have a running server check its whole chain (global admin). Exits 3 if it does not
    /// verify.
    Check {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The newest entries the caller may read (a tenant principal: its tenant's only).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// How many entries (1 to 100).
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// The global admin only: entries after this sequence number.
        #[arg(long)]
        after_seq: Option<u64>,
    },
    /// The latest signed checkpoint (global admin), to keep somewhere the server cannot
    /// write and give to `tessera audit verify --checkpoint` later.
    Checkpoint {
        #[command(flatten)]
        client: ClientArgs,
        /// Sign a fresh one now rather than return the latest.
        #[arg(long)]
        fresh: bool,
        /// Write it to this file (JSON) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum Tenants {
    /// Create a tenant (global admin).
    Create {
        name: String,
    },
    /// The tenants the caller administers.
    List,
    Get {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum Roles {
    /// The built-in roles and the tenant's custom roles.
    List {
        #[arg(long)]
        tenant: String,
    },
    Get {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Define a custom role (only with permissions the caller holds).
    Create {
        #[arg(long)]
        tenant: String,
        name: String,
        /// A permission, e.g. keys:read (repeat for more).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
    },
    /// Replace a custom role's permissions.
    Set {
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
    },
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum Bindings {
    List {
        #[arg(long)]
        tenant: String,
    },
    /// A service's roles.
    Get {
        #[arg(long)]
        tenant: String,
        /// The service name.
        identity: String,
    },
    /// Bind roles to a service (replaces its roles).
    Set {
        #[arg(long)]
        tenant: String,
        identity: String,
        /// A role name (repeat for more).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Take every role from a service.
    Delete {
        #[arg(long)]
        tenant: String,
        identity: String,
    },
}

#[derive(Subcommand)]
pub enum RootKeys {
    /// Create a root key (the secret is printed once).
    Create {
        /// The global admin only (default: `default`).
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A permission it carries (repeat for more).
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    List,
    Get {
        id: String,
    },
    /// A new secret; the old one keeps working for --grace seconds.
    Rotate {
        id: String,
        #[arg(long)]
        grace: Option<u64>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum Pki {
    /// The CA bundle (PEM) that clients trust.
    Ca {
        /// Write it to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The CRL of every CA in one PEM file (what nginx's `ssl_crl` needs).
    Crl {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A new issuing CA (global admin); the old one keeps signing CRLs until its last
    /// certificate expires.
    Rotate,
}

#[derive(Subcommand)]
pub enum Sys {
    /// Sealed or not, unseal progress, keyring versions.
    Status,
    /// Seal the server at once: every key leaves memory (global admin).
    Seal,
    /// A new data key for new writes; existing records are rewrapped in the background
    /// (global admin).
    RotateKeyring,
}

#[derive(Args)]
pub struct DirArgs {
    /// Optional TOML configuration file.
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (the database, the master key file).
    #[arg(long, env = "TESSERA_DATA")]
    pub data: Option<PathBuf>,
    /// Directory of public trust material and local credentials.
    #[arg(long, env = "TESSERA_CERTS")]
    pub certs: Option<PathBuf>,
    /// A shared PostgreSQL database (`postgres://…`) instead of the embedded one under the
    /// data directory.
    #[arg(long = "store", env = "TESSERA_STORE_URL", hide_env_values = true)]
    pub store_url: Option<String>,
}

#[derive(Args)]
pub struct AdminCertArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Leave earlier admin certificates valid (by default they are revoked, so a lost one
    /// stops working).
    #[arg(long)]
    pub keep_old: bool,
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Number of shares to make.
    #[arg(long)]
    pub shares: u8,
    /// Number of shares needed to unseal.
    #[arg(long)]
    pub threshold: u8,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, env = "TESSERA_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dirs: DirArgs,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "TESSERA_LISTEN")]
    pub listen: Option<String>,
    /// SPIFFE trust domain of issued identities.
    #[arg(long, env = "TESSERA_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Log format: human or json.
    #[arg(long, env = "TESSERA_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Seconds to wait for open connections at shutdown.
    #[arg(long)]
    pub shutdown_timeout: Option<u64>,
}

impl DirArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            data: self.data.clone(),
            certs: self.certs.clone(),
            store_url: self.store_url.clone(),
            ..Overrides::default()
        }
    }
}

/// `name=value` (the value may hold further `=`).
fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not name=value"))
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Apis {
    /// Register an API.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        owner: String,
        /// low, medium, high or critical.
        #[arg(long)]
        risk: String,
        /// The prefix of its keys (default `tsk`).
        #[arg(long)]
        prefix: Option<String>,
    },
    /// List the APIs the caller may see.
    List,
    Get {
        id: String,
    },
    /// Change an API's registry entry (only the fields given).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        risk: Option<String>,
        /// The day it went live (YYYY-MM-DD).
        #[arg(long)]
        live_date: Option<String>,
        /// The day its keys and owner must be reviewed by (YYYY-MM-DD).
        #[arg(long)]
        review_by: Option<String>,
        /// Verify reports `expiring` past 80 % of this age (seconds).
        #[arg(long)]
        max_key_age: Option<u64>,
    },
    /// Delete an API that has no live keys.
    Delete {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum Keys {
    /// Issue a key (the secret is printed once).
    Create {
        #[arg(long)]
        api: String,
        #[arg(long)]
        name: Option<String>,
        /// A scope (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long)]
        ttl: Option<u64>,
        #[arg(long)]
        remaining: Option<u64>,
        /// Metadata for the key's owner, e.g. --metadata customer=acme (repeat for more).
        #[arg(long = "metadata", value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// An API's keys.
    List {
        #[arg(long)]
        api: String,
    },
    Get {
        id: String,
    },
    /// Change a key (only the fields given).
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Replace its scopes with these (repeat for more).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Turn it off (verify answers DISABLED) or back on.
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        /// Verifications left.
        #[arg(long, conflicts_with = "unlimited")]
        remaining: Option<u64>,
        /// No quota.
        #[arg(long)]
        unlimited: bool,
        /// When it expires (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
        /// Replace its metadata with these pairs (repeat for more).
        #[arg(long = "metadata", value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// A new key; the old one keeps working for --grace seconds.
    Rotate {
        id: String,
        #[arg(long)]
        grace: Option<u64>,
    },
    Revoke {
        id: String,
    },
    /// Verify a key read from TESSERA_KEY or the first line of standard input. Exits 0 when
    /// VALID, 3 for any other verdict, 1 when there is no verdict.
    Verify {
        #[arg(long)]
        api: Option<String>,
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum Certs {
    /// Issue a certificate from a CSR (recommended), or make the key pair here (--generate,
    /// with --key-out).
    Issue {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        tenant: Option<String>,
        /// A PEM CSR file.
        #[arg(long, conflicts_with = "generate")]
        csr: Option<PathBuf>,
        #[arg(long, requires = "key_out")]
        generate: bool,
        /// Where to write the generated private key (0600).
        #[arg(long)]
        key_out: Option<PathBuf>,
        /// Where to write the certificate and its chain (PEM).
        #[arg(long)]
        cert_out: Option<PathBuf>,
        #[arg(long)]
        ttl: Option<u64>,
    },
    List {
        /// A service name or SPIFFE id.
        #[arg(long)]
        identity: Option<String>,
    },
    /// A certificate's metadata.
    Get { serial: String },
    /// Renew the client certificate given with --cert/--key, authenticated by itself (same
    /// identity, fresh validity); --csr rotates the key pair.
    Renew {
        /// A CSR for a new key pair (PEM); without it the current public key is kept.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Where to write the new certificate and its chain (PEM).
        #[arg(long)]
        cert_out: PathBuf,
        #[arg(long)]
        ttl: Option<u64>,
    },
    Revoke {
        serial: String,
        /// e.g. key_compromise, superseded, cessation_of_operation.
        #[arg(long)]
        reason: Option<String>,
    },
    /// A single-use enrolment token for one service (printed once), for
    /// `tessera agent bootstrap` on the new workload.
    Token {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        tenant: Option<String>,
        /// How long it may be used, in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Verify a certificate (PEM file, leaf first). Exits 0 when VALID, 3 for any other
    /// verdict, 1 when there is no verdict.
    Verify { file: PathBuf },
}
