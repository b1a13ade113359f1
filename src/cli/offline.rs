//! The offline verbs, run with the server stopped (each takes the data directory's lock):
//! `init`, `admin-cert`, `rotate-master`, `restore`, `audit verify` and `bench-preload`. Each
//! loads the configuration, asks custody (`app`) or the domain to do the work, and prints the
//! outcome. Reading unseal shares from standard input is here; checking and combining them is
//! custody's.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::Context;

use super::{
    args::{AdminCertArgs, DirArgs, InitArgs},
    exit, init_logging,
};
use crate::{
    app::{
        Core, KeySource, Vault,
        vault::{self, RestoreError},
    },
    audit::AuditContext,
    config::Config,
    crypto::keyring::MasterKey,
    files,
    pki::bootstrap,
};

/// The configuration of an offline verb: the file, the environment, then the directories.
fn load(dirs: &DirArgs) -> anyhow::Result<Config> {
    Ok(Config::load(&dirs.overrides())?)
}

/// `tessera init`: a fresh data directory sealed with Shamir shares, with its CA, server
/// certificate and admin credential; prints the shares.
pub(super) async fn init(args: InitArgs) -> anyhow::Result<()> {
    let mut o = args.dirs.overrides();
    o.trust_domain = args.trust_domain;
    let config = Config::load(&o)?;
    init_logging(config.log_format);
    let mut vault = Vault::open(config)?;
    let shares = vault.init_shares(args.shares, args.threshold).await?;
    out!(
        "Initialised {} sealed with {} shares, {} needed to unseal. No key file was written.",
        vault.config.data_dir.display(),
        args.shares,
        args.threshold
    );
    out!("  trust anchor: {}", vault.paths.ca.display());
    out!("  admin cert:   {}", vault.paths.admin_cert.display());
    for s in &shares {
        out!("{}", s.as_str());
    }
    Ok(())
}

/// `tessera admin-cert`: re-issues the bootstrap admin credential, and revokes the earlier
/// ones unless told to keep them.
pub(super) async fn admin_cert(
    AdminCertArgs { dirs, keep_old }: AdminCertArgs,
) -> anyhow::Result<()> {
    let config = load(&dirs)?;
    init_logging(config.log_format);
    let vault =
        Vault::open(config).context("opening the data directory (is a server running on it?)")?;
    let core = unseal_offline(&vault).await?;
    // On a fresh data directory the unseal itself issued the first one.
    let issued = if core.first_start() {
        None
    } else {
        let rec = AuditContext::system("reissue admin credential (offline)", vault.clock.now());
        Some(bootstrap::issue_admin_cert(&*rec, core.pki(), &vault.paths, vault.clock.now()).await?)
    };
    out!(
        "admin credential written: {} (key {})",
        vault.paths.admin_cert.display(),
        vault.paths.admin_key.display()
    );
    if let Some(i) = issued {
        out!("  serial {}, valid until {}", i.serial, i.not_after);
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
                out!("  revoked the earlier admin certificate {s}");
            }
        }
    }
    Ok(())
}

/// `tessera rotate-master`: a new master key, the keyring rewrapped; prints where the new key
/// went (or the new shares).
pub(super) async fn rotate_master(
    dirs: DirArgs,
    shares: Option<u8>,
    threshold: Option<u8>,
) -> anyhow::Result<()> {
    let config = load(&dirs)?;
    init_logging(config.log_format);
    let mut vault =
        Vault::open(config).context("opening the data directory (is a server running on it?)")?;
    let old = match vault.automatic_master()? {
        Some(m) => m,
        None => read_shares(&vault)?,
    };
    let source = vault.key_source();
    // The new key opens everything once this returns.
    let (new, texts) = vault.rotate_master(&old, shares.zip(threshold)).await?;
    out!("master key rotated (the data keys and the pepper are unchanged)");
    if texts.is_empty() {
        match source {
            KeySource::Environment => out!(
                "set TESSERA_MASTER_KEY to: {}",
                crate::crypto::hex::encode(new.expose())
            ),
            _ => out!(
                "new key written to {}",
                vault.config.data_dir.join("master.key").display()
            ),
        }
    }
    for t in &texts {
        out!("{}", t.as_str());
    }
    Ok(())
}

/// `tessera bench-preload`: `keys` API keys under one new API, their secrets written one per
/// line to `out`; prints the API's id.
pub(super) async fn bench_preload(dirs: DirArgs, keys: usize, out: PathBuf) -> anyhow::Result<()> {
    let config = load(&dirs)?;
    let vault = Vault::open(config)?;
    let core = unseal_offline(&vault).await?;
    let now = vault.clock.now();
    let api = core
        .keys()
        .create_api(
            &crate::store::NoRecord,
            crate::ids::TenantName::default_tenant(),
            serde_json::from_value(serde_json::json!({
                "name": "bench", "purpose": "benchmark", "owner": "bench", "risk": "low"
            }))?,
            now,
        )
        .await?;
    let secrets = core
        .keys()
        .bulk_issue(&crate::ids::TenantScope::All, &api.id, keys, 2000, now)
        .await?;
    let mut text = String::with_capacity(secrets.len() * 48);
    for s in &secrets {
        text.push_str(s.expose());
        text.push('\n');
    }
    files::write_atomic(&out, text.as_bytes(), files::PRIVATE)?;
    out!("{}", api.id);
    Ok(())
}

/// `tessera audit verify`: checks the hash chain, optionally against a saved checkpoint.
/// Returns the exit code: [`exit::OK`] when the log is valid, [`exit::NOT_VALID`] when it is
/// not.
pub(super) async fn audit_verify(
    dirs: DirArgs,
    checkpoint: Option<PathBuf>,
) -> anyhow::Result<i32> {
    let config = load(&dirs)?;
    init_logging(config.log_format);
    let store = crate::app::open_store(&config)
        .context("opening the data directory (is a server running on it?)")?;
    let cp = match &checkpoint {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let cp: crate::audit::Checkpoint =
                serde_json::from_str(&text).context("the checkpoint file is not a checkpoint")?;
            cp.verify_signature()
                .context("the checkpoint's signature does not verify")?;
            let ours = crate::audit::stored_public_key(&*store).await?;
            if ours.as_deref() != Some(cp.public_key.as_str()) {
                anyhow::bail!("the checkpoint was signed by another key than this log's");
            }
            Some(cp)
        }
        None => None,
    };
    let report = crate::audit::check(&*store, cp.as_ref()).await?;
    if report.valid {
        out!(
            "audit log valid: {} entries checked, head seq {}",
            report.checked,
            report.head_seq
        );
        Ok(0)
    } else {
        out!(
            "audit log INVALID at seq {}: {} ({} entries checked before it)",
            report.first_bad_seq.unwrap_or(0),
            report.problem.as_deref().unwrap_or("unknown problem"),
            report.checked
        );
        Ok(exit::NOT_VALID)
    }
}

/// `tessera restore`: restores a backup into an empty data directory (see
/// [`vault::restore`]), and names the revocations made after the backup that it lost (from the
/// certs directory's published CRLs, and the shipped audit log).
pub(super) fn restore(file: &Path, dirs: &DirArgs, audit_log: Option<&Path>) -> anyhow::Result<()> {
    let config = load(dirs)?;
    init_logging(config.log_format);
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let backup = crate::store::backup::parse(&bytes)
        .with_context(|| format!("{} is not a usable backup", file.display()))?;
    vault::restore(&config, &backup, read_shares).map_err(|e| match e {
        RestoreError::Refused(e) => anyhow::Error::new(e).context(format!(
            "{} was not restored (the target directory holds no database)",
            file.display()
        )),
        other => other.into(),
    })?;
    let header = &backup.header;
    out!(
        "restored {} entries from a backup made at {} into {} (authenticated with the master key)",
        backup.entries.len(),
        header.created_at,
        match &config.store_url {
            Some(t) => t.to_string(),
            None => config.data_dir.display().to_string(),
        }
    );
    out!("The first unseal opens a new audit epoch. The master key is not in the backup.");

    // Revocations made after the backup are not in it: name them.
    let in_backup: BTreeSet<String> = header.revoked_serials.iter().cloned().collect();
    let mut lost: Vec<String> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(config.certs_dir.join("crls.pem")) {
        for block in pem::parse_many(&text).unwrap_or_default() {
            if let Ok((_, crl)) = x509_parser::parse_x509_crl(block.contents()) {
                for r in crl.iter_revoked_certificates() {
                    let serial = crate::identity::Serial::from_bytes(r.raw_serial());
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
        out!("No revocation made after the backup is known to be lost.");
    } else {
        out!("Revocations made after the backup, LOST by this restore (revoke them again):");
        for l in &lost {
            out!("  {l}");
        }
    }
    Ok(())
}

/// `tessera migrate`: copies the embedded store in `from` into the empty PostgreSQL database
/// `to`, sealed records as they are, then checks the copy (every entry, byte for byte; the
/// audit chain) through the target engine with the master key.
pub(super) async fn migrate(from: &Path, to: &str, config: Option<PathBuf>) -> anyhow::Result<()> {
    let source = Config::load(&crate::config::Overrides {
        config_file: config.clone(),
        data: Some(from.to_owned()),
        ..Default::default()
    })?;
    init_logging(source.log_format);
    let target = Config::load(&crate::config::Overrides {
        config_file: config,
        data: Some(from.to_owned()),
        store_url: Some(to.to_owned()),
        ..Default::default()
    })?;
    let target_url = target
        .store_url
        .clone()
        .context("--to must be a postgres:// URL")?;
    anyhow::ensure!(
        from.join("db").exists(),
        "{} holds no database",
        from.display()
    );
    let vault =
        Vault::open(source.clone()).context("opening the source (is a server running on it?)")?;
    let master = match vault.automatic_master()? {
        Some(m) => m,
        None => read_shares(&vault)?,
    };
    let unsealed = vault
        .db()?
        .unseal(&master)
        .context("the master key does not open the source")?;
    let entries = unsealed.admin.snapshot()?;
    let source_audit = crate::audit::check(&*unsealed.store, None).await?;
    anyhow::ensure!(
        source_audit.valid,
        "the source's audit log does not verify (at seq {}): not copied",
        source_audit.first_bad_seq.unwrap_or(0)
    );

    let db = crate::store::open_database(&target.store_location())
        .with_context(|| format!("connecting to {target_url}"))?;
    anyhow::ensure!(
        db.is_empty(),
        "{target_url} already holds Tessera data: migrate into an empty database"
    );
    db.import(&entries)
        .with_context(|| format!("copying into {target_url}"))?;
    let copied = db
        .unseal(&master)
        .context("the master key does not open the copy")?;
    let back = copied.admin.snapshot()?;
    anyhow::ensure!(
        back == entries,
        "the copy differs from the source ({} entries read back, {} written)",
        back.len(),
        entries.len()
    );
    let audit = crate::audit::check(&*copied.store, None).await?;
    anyhow::ensure!(
        audit.valid && audit.head_seq == source_audit.head_seq,
        "the copy's audit chain does not verify"
    );
    let records = entries.iter().filter(|(k, _)| k.starts_with(b"r/")).count();
    out!(
        "copied {} entries ({records} sealed records) from {} to {target_url}; every entry \
         read back identical, audit chain valid to seq {}",
        entries.len(),
        from.display(),
        audit.head_seq
    );
    out!("Next:");
    out!("  1. start each node with --store {target_url} (or [store] url in its config);");
    out!(
        "  2. give every node the same master key: {}",
        match vault.key_source() {
            crate::app::KeySource::Shares => "unseal each node with the shares".to_owned(),
            _ => format!(
                "TESSERA_MASTER_KEY, or a copy of {} in its data directory (mode 0600)",
                from.join("master.key").display()
            ),
        }
    );
    out!("  3. copy certs/ (ca.pem, admin.pem, admin.key) to where operators and nodes expect it;");
    out!(
        "  4. keep {} unchanged until the cluster serves: it is your way back.",
        from.display()
    );
    Ok(())
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
fn read_shares(vault: &Vault) -> anyhow::Result<MasterKey> {
    let threshold = vault.seal.as_ref().map_or(0, |s| usize::from(s.threshold));
    eprintln!("the data directory is sealed: enter {threshold} shares, one per line");
    let mut shares = Vec::new();
    let mut seen = BTreeSet::new();
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
