//! The `postern` command: parse arguments, load the configuration, open the store, and
//! hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use postern::accounts::{Accounts, Actor, AdminError, IssueRequest, NewAccount};
use postern::clock::now;
use postern::config::{self, Config};
use postern::gateway::{self, Gateway};
use postern::server;
use postern::store::{AppPassword, AuditRecord, Scope, Store, StoreError, User};
use postern::upstream;

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "App-password gateway for IMAP and SMTP"
)]
struct Cli {
    /// Configuration file [default: $POSTERN_CONFIG, then config/postern.toml]
    #[arg(long, global = true, env = "POSTERN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Check the configuration; print "ok" or every problem found.
    CheckConfig {
        /// Also connect to each configured upstream (TLS, greeting) and report.
        #[arg(long)]
        probe: bool,
    },
    /// Create or update the store's tables.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage app passwords.
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCommand),
    /// The organisation's directory ([portal.ldap]).
    #[command(subcommand)]
    Directory(DirectoryCommand),
    /// Upstream tokens from [oauth2.*] identity providers.
    #[command(subcommand)]
    Oauth2(Oauth2Command),
    /// Show the audit trail, newest first.
    Audit {
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DirectoryCommand {
    /// Disable the users whose directory entry is disabled or gone, enable those back.
    Sync {
        /// Show what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum Oauth2Command {
    /// Fetch a token from [oauth2.NAME] for a user and log in upstream with it.
    Test {
        name: String,
        /// A postern user (their upstream identity is used), or an upstream identity.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user who may log in with app passwords.
    Add {
        login: String,
        /// The account name on the upstream server [default: LOGIN]
        #[arg(long)]
        upstream_user: Option<String>,
        /// A sender address the user may use (repeatable) [default: LOGIN if it is one]
        #[arg(long = "address")]
        addresses: Vec<String>,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one user.
    Show {
        login: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop a user's app passwords from working and close their sessions.
    Disable { login: String },
    /// Let a disabled user log in again.
    Enable { login: String },
    /// Remove a user and all their app passwords.
    Remove { login: String },
    /// Forget the user's second factors (TOTP, recovery codes) and sign their browsers
    /// out of the portal; they set up a new one at their next sign-in.
    ResetMfa { login: String },
}

#[derive(Subcommand)]
enum AppPasswordCommand {
    /// Create an app password and print it, once.
    Create {
        login: String,
        /// What it is for, e.g. "Outlook on the office PC"
        #[arg(long)]
        name: String,
        /// Protocols it opens
        #[arg(long, value_delimiter = ',', default_value = "imap,smtp")]
        scopes: Vec<Scope>,
        /// Lifetime, e.g. 90d, 12h
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
    /// List a user's app passwords (never their hashes).
    List {
        login: String,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one app password by id, or all of a user's with --all LOGIN.
    Revoke {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        #[arg(long, value_name = "LOGIN")]
        all: Option<String>,
    },
}

/// An error the user caused: one sentence, exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("postern: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("postern: {}", one_sentence(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already
/// includes (most of postern's errors quote their source).
fn one_sentence(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}

async fn execute(cli: Cli) -> Result<ExitCode> {
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let config = Config::load(&path)?;
    match cli.command {
        Command::CheckConfig { probe } => {
            let mut problems = config.problems();
            problems.extend(config.deferred_problems());
            if problems.is_empty() {
                problems.extend(postern::oauth2::check::key_problems(&config));
            }
            for problem in &problems {
                eprintln!("{}: {problem}", path.display());
            }
            let mut failed = !problems.is_empty();
            if probe && config.problems().is_empty() {
                for report in upstream::probe::probe_all(&config).await {
                    match report.outcome {
                        Ok(what) => println!("{} {}: {what}", report.section, report.address),
                        Err(why) => {
                            failed = true;
                            eprintln!("{} {}: {why}", report.section, report.address);
                        }
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
            println!("ok");
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => serve(config, &path).await,
        Command::Migrate => {
            let store = open_store(&config).await?;
            store.migrate().await?;
            println!("migrated {}", config.store.url);
            Ok(ExitCode::SUCCESS)
        }
        Command::User(command) => user(&config, command).await,
        Command::Directory(DirectoryCommand::Sync { dry_run }) => {
            let Some(ldap) = config.portal.as_ref().and_then(|p| p.ldap.as_ref()) else {
                eprintln!("{}: there is no [portal.ldap] section", path.display());
                return Ok(ExitCode::FAILURE);
            };
            let directory =
                postern::directory::ldap::Directory::new(ldap).map_err(anyhow::Error::msg)?;
            let store = open_store(&config).await?;
            let accounts = accounts(&config).await?;
            let changes = match postern::directory::sync::plan(&directory, &store).await {
                Ok(changes) => changes,
                Err(why) => {
                    eprintln!("the directory cannot be read: {why}; nothing changed");
                    return Ok(ExitCode::FAILURE);
                }
            };
            for change in &changes {
                println!("{change}");
            }
            if changes.is_empty() {
                println!("nothing to change");
            }
            if !dry_run {
                postern::directory::sync::apply(&accounts, &changes).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Oauth2(Oauth2Command::Test { name, user }) => {
            let upstream_user = match open_store(&config).await {
                Ok(store) => match store.user(&user).await {
                    Ok(Some(found)) => found.upstream_user,
                    _ => user,
                },
                Err(_) => user,
            };
            let mut failed = false;
            for line in postern::oauth2::check::test(&config, &name, &upstream_user).await {
                match line {
                    Ok(text) => println!("{text}"),
                    Err(text) => {
                        failed = true;
                        eprintln!("{text}");
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::AppPassword(command) => app_password(&config, command).await,
        Command::Audit { user, limit, json } => {
            let store = open_store(&config).await?;
            let records = store.audit(user.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                for record in &records {
                    println!("{}", audit_line(record));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("POSTERN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn serve(config: Config, path: &std::path::Path) -> Result<ExitCode> {
    init_logging(&config);
    config.validate()?;
    for problem in config.deferred_problems() {
        tracing::warn!("{problem}");
    }
    let store = open_store(&config).await?;
    store.migrate().await.context("migrating the store")?;
    let gateway = Gateway::new(&config, store).await?;
    let bound = server::bind(&config).await?;
    tokio::spawn(reload_on_hangup(gateway.clone(), path.to_owned()));
    server::run(gateway, bound, shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP: read the configuration again and apply what can change live. A file with
/// problems changes nothing; the gateway keeps serving either way.
async fn reload_on_hangup(gateway: std::sync::Arc<Gateway>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reloading is unavailable");
        return;
    };
    while hangups.recv().await.is_some() {
        let loaded = Config::load(&path)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                config.validate()?;
                Ok(config)
            });
        let config = match loaded {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(error = %one_sentence(&error), "reload refused; keeping the running configuration");
                continue;
            }
        };
        match gateway.reload(&config).await {
            Ok(()) => tracing::info!(
                config = %path.display(),
                "reloaded: certificate and upstreams apply to new connections; other settings need a restart"
            ),
            Err(error) => {
                tracing::error!(%error, "reload failed; keeping the running configuration")
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Opens the store; for everything but `migrate`, brings its schema up to date first so a
/// fresh SQLite file just works.
async fn open_store(config: &Config) -> Result<Store> {
    let store = Store::open(&config.store.url)
        .await
        .with_context(|| format!("opening the store {}", redact_url(&config.store.url)))?;
    store.migrate().await.context("migrating the store")?;
    Ok(store)
}

/// The store URL without a password, for messages.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The account operations on the configured store.
async fn accounts(config: &Config) -> Result<Accounts> {
    let store = open_store(config).await?;
    let hasher = gateway::password_hasher(config)?;
    Ok(Accounts::new(store, hasher, config.auth.max_app_passwords).await?)
}

async fn user(config: &Config, command: UserCommand) -> Result<ExitCode> {
    let accounts = accounts(config).await?;
    let result = match command {
        UserCommand::Add {
            login,
            upstream_user,
            addresses,
        } => {
            let account = NewAccount {
                login: &login,
                upstream_user: upstream_user.as_deref(),
                addresses: &addresses,
            };
            accounts
                .add_user(account)
                .await
                .map(|user| println!("added {}", user.login))
        }
        UserCommand::List { json } => accounts.users().await.map(|users| {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&users).unwrap_or_default()
                );
            } else {
                for user in &users {
                    println!("{}", user_line(user));
                }
            }
        }),
        UserCommand::Show { login, json } => match accounts.user(&login).await {
            Ok(user) if json => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&user).unwrap_or_default()
                );
                Ok(())
            }
            Ok(user) => accounts.app_passwords(&login).await.map(|passwords| {
                println!("{}", user_line(&user));
                for app_password in &passwords {
                    println!("  {}", app_password_line(app_password));
                }
            }),
            Err(error) => Err(error),
        },
        UserCommand::Disable { login } => accounts
            .set_disabled(&login, true)
            .await
            .map(|user| println!("disabled {}", user.login)),
        UserCommand::Enable { login } => accounts
            .set_disabled(&login, false)
            .await
            .map(|user| println!("enabled {}", user.login)),
        UserCommand::ResetMfa { login } => accounts
            .reset_mfa(&login)
            .await
            .map(|user| println!("second factors of {} reset", user.login)),
        UserCommand::Remove { login } => accounts
            .remove_user(&login)
            .await
            .map(|()| println!("removed {}", login.to_lowercase())),
    };
    finish(result)
}

async fn app_password(config: &Config, command: AppPasswordCommand) -> Result<ExitCode> {
    let accounts = accounts(config).await?;
    let result = match command {
        AppPasswordCommand::Create {
            login,
            name,
            scopes,
            expires_in,
            json,
        } => {
            let request = IssueRequest {
                login: &login,
                name: &name,
                scopes: &scopes,
                expires_at: expires_in.map(|d| now() + d.as_secs() as i64),
                actor: Actor::Cli,
            };
            accounts.issue_app_password(request).await.map(|issued| {
                let app = &issued.app_password;
                if json {
                    let object = serde_json::json!({
                        "id": app.id,
                        "login": login.to_lowercase(),
                        "name": app.name,
                        "scopes": app.scopes,
                        "expires_at": app.expires_at.map(timestamp),
                        "password": issued.password.expose(),
                    });
                    println!("{object}");
                } else {
                    println!(
                        "App password {} ({}) for {}:",
                        app.id,
                        app.name,
                        login.to_lowercase()
                    );
                    println!();
                    println!("    {}", issued.password.expose());
                    println!();
                    println!("It is shown only this once. Spaces are optional when typing it.");
                }
            })
        }
        AppPasswordCommand::List { login, json } => {
            accounts.app_passwords(&login).await.map(|passwords| {
                if json {
                    let list: Vec<_> = passwords.iter().map(app_password_json).collect();
                    println!("{}", serde_json::Value::Array(list));
                } else {
                    for app_password in &passwords {
                        println!("{}", app_password_line(app_password));
                    }
                }
            })
        }
        AppPasswordCommand::Revoke { id: Some(id), .. } => accounts
            .revoke_app_password(id, Actor::Cli)
            .await
            .map(|(_, login)| println!("revoked app password {id} of {login}")),
        AppPasswordCommand::Revoke {
            all: Some(login), ..
        } => accounts.revoke_all(&login, Actor::Cli).await.map(|ids| {
            println!(
                "revoked {} app passwords of {}",
                ids.len(),
                login.to_lowercase()
            )
        }),
        AppPasswordCommand::Revoke { .. } => {
            Err(AdminError::Store(StoreError::UnknownAppPassword(0)))
        }
    };
    finish(result)
}

/// Maps a refused operation to exit code 1 with one sentence on stderr.
fn finish(result: Result<(), AdminError>) -> Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(AdminError::Store(StoreError::Database(error))) => Err(error.into()),
        Err(AdminError::Store(StoreError::Migrate(error))) => Err(error.into()),
        Err(refused) => Err(Refused(format!("{refused}.")).into()),
    }
}

fn timestamp(unix: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn app_password_json(app: &AppPassword) -> serde_json::Value {
    serde_json::json!({
        "id": app.id,
        "name": app.name,
        "scopes": app.scopes,
        "created_at": timestamp(app.created_at),
        "last_used_at": app.last_used_at.map(timestamp),
        "last_used_ip": app.last_used_ip,
        "last_used_client": app.last_used_app(),
        "expires_at": app.expires_at.map(timestamp),
        "revoked_at": app.revoked_at.map(timestamp),
    })
}

fn app_password_line(app: &AppPassword) -> String {
    let scopes: Vec<&str> = app.scopes.iter().map(|s| s.as_str()).collect();
    let state = match (app.revoked_at, app.is_live(now())) {
        (Some(at), _) => format!("revoked {}", timestamp(at)),
        (None, false) => "expired".to_string(),
        (None, true) => "live".to_string(),
    };
    let mut used = match (app.last_used_at, &app.last_used_ip) {
        (Some(at), Some(ip)) => format!("last used {} from {ip}", timestamp(at)),
        (Some(at), None) => format!("last used {}", timestamp(at)),
        _ => "never used".to_string(),
    };
    if let Some(client) = app.last_used_app() {
        used.push_str(&format!(" by {client}"));
    }
    format!(
        "{:>5}  {:<30}  {:<9}  {}  created {}  {}",
        app.id,
        app.name,
        scopes.join(","),
        state,
        timestamp(app.created_at),
        used
    )
}

fn user_line(user: &User) -> String {
    let state = if user.disabled_at.is_some() {
        "disabled"
    } else {
        "enabled"
    };
    format!(
        "{}  upstream={}  {}  addresses={}",
        user.login,
        user.upstream_user,
        state,
        user.addresses.join(",")
    )
}

fn audit_line(record: &AuditRecord) -> String {
    let mut line = format!(
        "{}  {}  {}",
        timestamp(record.at),
        record.kind,
        record.login
    );
    for (key, value) in [
        (
            "app_password",
            record.app_password_id.map(|id| id.to_string()),
        ),
        ("protocol", record.protocol.clone()),
        ("ip", record.client_ip.clone()),
        ("result", record.result.clone()),
        ("client", record.client_id.clone()),
    ] {
        if let Some(value) = value {
            line.push_str(&format!("  {key}={value}"));
        }
    }
    line
}
