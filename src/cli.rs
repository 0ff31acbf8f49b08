//! Command-line types (clap). Secrets are read from stdin or files, never from argv.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// keyward: a sidecar secrets proxy.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about, propagate_version = true)]
pub struct Cli {
    /// Admin socket of the daemon (client commands). Else $KEYWARD_ADMIN, else the
    /// config's admin.unix. `http://host:port` (loopback) or `https://host:port` uses admin
    /// TCP with the token in $KEYWARD_ADMIN_TOKEN_FILE (and the CA in $KEYWARD_ADMIN_CA).
    #[arg(long, global = true, value_name = "PATH")]
    pub admin: Option<String>,
    /// Configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve,
    /// Parse and validate a configuration file; print a summary.
    CheckConfig,
    /// Write a new master key (32 random bytes, base64) with mode 0600.
    Keygen {
        /// Where to write it; never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Credentials.
    #[command(subcommand)]
    Cred(CredCmd),
    /// Routing index (webhook tenant lookup).
    #[command(subcommand)]
    Route(RouteCmd),
    /// Audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Master keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Logging of the running daemon.
    #[command(subcommand)]
    Log(LogCmd),
    /// Webhook tools (no daemon needed).
    #[command(subcommand)]
    Webhook(WebhookCmd),
    /// Store maintenance.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Admin API users (no daemon needed).
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Probe the ops listener (container HEALTHCHECK): exit 0 when it answers 200.
    Health {
        /// URL to GET.
        #[arg(long, default_value = "http://127.0.0.1:9090/readyz")]
        url: String,
    },
}

/// `keyward admin …`
#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Admin API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

/// `keyward admin token …`
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token for a named user: prints the [[admin.users]] entry (its SHA-256 only)
    /// and the token, once.
    New {
        /// The user's name, as audit entries will carry it.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Write the token to this file (mode 0600, never overwritten) instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `keyward webhook …`
#[derive(Debug, Subcommand)]
pub enum WebhookCmd {
    /// Check one delivery offline: prints `valid` or `invalid: <code>: <detail>`.
    Verify {
        /// Provider name (generic providers need --config).
        #[arg(long)]
        provider: String,
        /// File holding the one key the delivery's scheme needs.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "credential_file",
            conflicts_with = "credential_file"
        )]
        secret_file: Option<PathBuf>,
        /// File holding the credential's fields as JSON (as for `cred put`), for schemes that
        /// need more than one field.
        #[arg(long, value_name = "FILE")]
        credential_file: Option<PathBuf>,
        /// The URL the provider called.
        #[arg(long)]
        url: String,
        /// HTTP method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// A header, `Name: value`; repeat for each.
        #[arg(long = "header", value_name = "'K: V'")]
        headers: Vec<String>,
        /// File holding the raw body.
        #[arg(long, value_name = "FILE")]
        body_file: PathBuf,
        /// Unix time to verify at (default: now).
        #[arg(long, value_name = "UNIX")]
        now: Option<u64>,
    },
}

/// `keyward cred …`
#[derive(Debug, Subcommand)]
pub enum CredCmd {
    /// Store fields read as a JSON object from stdin (or --file).
    Put {
        /// Tenant id.
        tenant: String,
        /// Provider name.
        provider: String,
        /// Check against the provider before storing.
        #[arg(long)]
        verify: bool,
        /// Read the JSON from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List a tenant's credentials (masked).
    Ls {
        /// Tenant id.
        tenant: String,
        /// Include soft-deleted credentials.
        #[arg(long)]
        deleted: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one credential's status (masked).
    Get(CredTarget),
    /// Soft-delete a credential.
    Rm(CredTarget),
    /// Undo a soft delete.
    Restore(CredTarget),
    /// Check a stored credential against its provider (records the result).
    Verify(CredTarget),
    /// Print the URL to configure at the provider for the tenant's deliveries (Deepgram's
    /// embeds the credentials keyward checks).
    CallbackUrl(CredTarget),
}

/// A tenant and provider.
#[derive(Debug, Args)]
pub struct CredTarget {
    /// Tenant id.
    pub tenant: String,
    /// Provider name.
    pub provider: String,
}

/// `keyward route …`
#[derive(Debug, Subcommand)]
pub enum RouteCmd {
    /// Map (kind, id) to a tenant.
    Put {
        /// Route kind, e.g. twilio-account.
        kind: String,
        /// Route id, e.g. an Account SID.
        id: String,
        /// Tenant id.
        tenant: String,
    },
    /// Show where (kind, id) points.
    Get {
        /// Route kind.
        kind: String,
        /// Route id.
        id: String,
    },
    /// Remove a route.
    Rm {
        /// Route kind.
        kind: String,
        /// Route id.
        id: String,
    },
}

/// `keyward audit …`
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Print audit entries (the last 20, or those after --after).
    Tail {
        /// JSON lines.
        #[arg(long)]
        json: bool,
        /// Only entries with a larger sequence number.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// At most this many (per batch with --follow).
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Keep printing entries as they are committed; reconnects (resuming after the last
        /// entry printed) when the daemon restarts.
        #[arg(long)]
        follow: bool,
    },
    /// Check the hash chain; with --checkpoint, also that it still extends each checkpoint
    /// in FILE (truncation or a rewrite since then is caught).
    Verify {
        /// Checkpoints kept outside the host: `keyward audit checkpoint` output, the
        /// `audit.checkpoint` entries of `audit tail --json`, or log lines carrying one.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Print a signed checkpoint of the chain's head (JSON), to keep outside the host.
    Checkpoint,
}

/// `keyward key …`
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Re-wrap every tenant key under the active master key (safe to interrupt and rerun).
    Rotate {
        /// Tenant keys per batch.
        #[arg(long, default_value_t = 100)]
        batch: u64,
    },
    /// How many tenant keys each source and key version wraps (a store mid-move shows two).
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `keyward log …`
#[derive(Debug, Subcommand)]
pub enum LogCmd {
    /// Change the daemon's log filter, e.g. `debug` or `keyward=trace,info`.
    Level {
        /// The filter.
        level: String,
    },
}

/// `keyward store …`
#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Copy a store into another (sled into PostgreSQL, or back); resumable.
    Migrate {
        /// Configuration of the source store.
        #[arg(long, value_name = "CONFIG")]
        from: PathBuf,
        /// Configuration of the target store.
        #[arg(long, value_name = "CONFIG")]
        to: PathBuf,
    },
}
