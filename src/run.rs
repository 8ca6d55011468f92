//! Runs a parsed command. Returns the process exit code.

use crate::audit::AuditConfig;
use crate::{
    app,
    auth::apikey,
    cli::{ApikeyCommand, AuditCommand, Command, ConfigCommand},
    config::{Config, ConfigError, ValidatedConfig},
    telemetry,
};
use std::path::Path;
use time::OffsetDateTime;

pub async fn run(cmd: Command) -> u8 {
    match cmd {
        Command::Serve { config } => serve(&config).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Emulate { which } => crate::demo::emulate(which).await,
        Command::Config {
            cmd: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Apikey {
            cmd:
                ApikeyCommand::New {
                    id,
                    roles,
                    pools,
                    expires,
                },
        } => apikey_new(&id, &roles, &pools, expires.as_deref()),
        Command::Audit { cmd } => audit(cmd).await,
        Command::Probe { url } => probe(&url).await,
        Command::Openapi => match crate::api::openapi::yaml() {
            Ok(y) => {
                print!("{y}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    }
}

/// Reads the file (shape only: types and unknown keys); errors print as `error: config F: KEY: ...`.
fn load(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| config_error(path, &e))
}

/// [`load`] and [`Config::validate`]: the one validation `serve` and `config check` share.
fn load_validated(path: &Path) -> Result<ValidatedConfig, u8> {
    load(path)?.validate().map_err(|e| config_error(path, &e))
}

fn config_error(path: &Path, e: &ConfigError) -> u8 {
    eprintln!("error: config {}: {e}", path.display());
    2
}

async fn serve(path: &Path) -> u8 {
    // Everything `config check` checks is checked before the socket is bound or the network used.
    let cfg = match load_validated(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(cfg.server.json_logs, &cfg.server.log_filter);
    serve_config(cfg).await
}

/// Serves a validated config until SIGTERM/Ctrl-C. What can still fail here is the network:
/// binding the socket, the audit database, OIDC discovery.
pub async fn serve_config(cfg: ValidatedConfig) -> u8 {
    let listen = cfg.server.listen;
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %listen, error = %e, "cannot listen");
            eprintln!("error: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    let pools = cfg.pools.len();
    let app = match app::build_validated(cfg).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Some((addr, router)) = app.metrics.clone() {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(listen = %addr, "metrics listening");
                tokio::spawn(async move {
                    if let Err(e) = app::serve_metrics(router, l).await {
                        tracing::error!(error = %e, "the metrics listener stopped");
                    }
                });
            }
            Err(e) => {
                tracing::error!(listen = %addr, error = %e, "cannot listen for metrics");
                eprintln!("error: cannot listen on {addr} (metrics.listen): {e}");
                return 1;
            }
        }
    }
    tracing::info!(listen = %listen, pools, "sessiongate listening");
    match app::serve(app, listener, app::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn config_check(path: &Path) -> u8 {
    match load_validated(path) {
        Ok(c) => {
            println!(
                "ok: {} ({} pool(s), {} API key(s))",
                path.display(),
                c.pools.len(),
                c.auth.api_keys.len()
            );
            0
        }
        Err(code) => code,
    }
}

/// For the audit commands: the file and its `[audit]` section only (no secrets are read).
fn load_for_audit(path: &Path) -> Result<Config, u8> {
    let cfg = load(path)?;
    cfg.audit
        .validate()
        .and_then(|()| cfg.audit.validate_location(&cfg.server.data_dir))
        .map_err(|e| config_error(path, &e))?;
    Ok(cfg)
}

fn apikey_new(id: &str, roles: &[String], pools: &[String], expires: Option<&str>) -> u8 {
    let mut parsed = Vec::with_capacity(roles.len());
    for r in roles {
        match serde_json::from_value::<crate::auth::Role>(serde_json::Value::String(r.clone())) {
            Ok(role) => parsed.push(role),
            Err(_) => {
                eprintln!("error: --role {r}: must be reader, operator, admin or auditor");
                return 2;
            }
        }
    }
    let expires_at = match expires
        .map(|e| time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!(
                "error: --expires {}: not an RFC 3339 time ({e})",
                expires.unwrap_or("")
            );
            return 2;
        }
    };
    let key = apikey::generate_key();
    let snippet = apikey::config_snippet(id, &key, &parsed, pools, expires_at);
    println!("API key (give it to the client; only its hash is kept):\n  {key}\n");
    println!("Paste into the config:\n\n{snippet}");
    0
}

async fn audit(cmd: AuditCommand) -> u8 {
    let to_u8 = |c: i32| u8::try_from(c).unwrap_or(1);
    match cmd {
        AuditCommand::Verify { config } => {
            let cfg = match load_for_audit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            to_u8(audit_verify(&cfg.audit, &cfg.server.data_dir).await)
        }
        AuditCommand::Export {
            config,
            since,
            format,
        } => {
            let cfg = match load_for_audit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let since = match since.map(|s| {
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| format!("--since {s}: not an RFC 3339 time ({e})"))
            }) {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    eprintln!("error: {e}");
                    return 2;
                }
            };
            to_u8(audit_export(&cfg.audit, &cfg.server.data_dir, since, &format).await)
        }
    }
}

async fn probe(url: &str) -> u8 {
    let client = match crate::httpclient::build_client(None, std::time::Duration::from_secs(3)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match client
        .get(url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => 0,
        Ok(r) => {
            eprintln!("unhealthy: {url} answered {}", r.status());
            1
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            1
        }
    }
}

/// Renders a verification report for people.
pub fn render_report(r: &crate::audit::VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "audit verify: {} chain(s), {} event(s) checked",
        r.chains.len(),
        r.events_checked
    );
    for c in &r.chains {
        match &c.broken {
            None => {
                let _ = writeln!(
                    s,
                    "  chain {}: ok ({} events after anchor seq {}, head seq {})",
                    c.chain, c.events, c.anchor_seq, c.head_seq
                );
            }
            Some(b) => {
                let _ = writeln!(s, "  chain {}: BROKEN at {}", c.chain, b);
            }
        }
    }
    let _ = writeln!(s, "result: {}", if r.ok { "INTACT" } else { "BROKEN" });
    s
}

/// `sessiongate audit verify`: prints the report; exit code 0 intact, 1 broken, 2 cannot open.
pub async fn audit_verify(cfg: &AuditConfig, data_dir: &Path) -> i32 {
    let store = match crate::audit::open_read_only(cfg, data_dir).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("audit verify: cannot open the audit store: {e}");
            return 2;
        }
    };
    match crate::audit::AuditStore::verify(&store).await {
        Ok(r) => {
            print!("{}", render_report(&r));
            if r.ok { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("audit verify: cannot read the audit store: {e}");
            2
        }
    }
}

/// `sessiongate audit export --format jsonl [--since T]`: writes to stdout; exit code 0 done,
/// 1 failed midway, 2 cannot open or bad format.
pub async fn audit_export(
    cfg: &AuditConfig,
    data_dir: &Path,
    since: Option<OffsetDateTime>,
    format: &str,
) -> i32 {
    if format != "jsonl" {
        eprintln!("audit export: unsupported format {format:?} (supported: jsonl)");
        return 2;
    }
    let store = match crate::audit::open_read_only(cfg, data_dir).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("audit export: cannot open the audit store: {e}");
            return 2;
        }
    };
    match crate::audit::export_jsonl(&store, since, tokio::io::stdout()).await {
        Ok(n) => {
            eprintln!("audit export: {n} event(s)");
            0
        }
        Err(e) => {
            eprintln!("audit export: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn audit_command_futures_are_send() {
        let cfg = AuditConfig::default();
        let dir = std::path::PathBuf::from("/nonexistent");
        assert_send(&audit_verify(&cfg, &dir));
        assert_send(&audit_export(&cfg, &dir, None, "jsonl"));
    }
}
