//! Runs a parsed command. Returns the process exit code.

use crate::audit::AuditConfig;
use crate::{
    app,
    auth::apikey,
    cli::{ApikeyCommand, AuditCommand, Command, ConfigCommand, Output, WebhookCommand},
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
            cmd: ConfigCommand::Check { file, output },
        } => config_check(&file, output.output),
        Command::Apikey {
            cmd:
                ApikeyCommand::New {
                    id,
                    roles,
                    pools,
                    expires,
                    output,
                },
        } => apikey_new(&id, &roles, &pools, expires.as_deref(), output.output),
        Command::Webhook { cmd } => webhook(cmd),
        Command::Audit { cmd } => audit(cmd).await,
        Command::Probe { url, ca_file } => probe(&url, ca_file.as_deref()).await,
        Command::Completions { shell } => {
            crate::cli::write_completions(shell, &mut std::io::stdout());
            0
        }
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
    let traces =
        match telemetry::init_with(cfg.server.json_logs, &cfg.server.log_filter, cfg.otlp()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
    if let Some(o) = cfg.otlp() {
        tracing::info!(otlp.endpoint = %o.traces_url, otlp.sampling = o.sampling, "exporting traces");
    }
    let code = serve_config(cfg).await;
    // The spans of the last requests leave before the process does.
    if let Some(t) = traces {
        t.shutdown().await;
    }
    code
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
                tracing::info!(listen = %addr, tls = app.tls.is_some(), "metrics listening");
                let tls = app.tls.clone();
                let timeout = app.header_read_timeout;
                tokio::spawn(async move {
                    if let Err(e) = app::serve_metrics_with(router, l, tls, timeout).await {
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
    tracing::info!(listen = %listen, pools, tls = app.tls.is_some(), "sessiongate listening");
    match app::serve(app, listener, app::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Prints one JSON document on stdout.
fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

fn config_check(path: &Path, output: Output) -> u8 {
    if output == Output::Text {
        return match load_validated(path) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("warning: {w}");
                }
                println!(
                    "ok: {} ({} pool(s), {} API key(s), {} webhook source(s))",
                    path.display(),
                    c.pools.len(),
                    c.auth.api_keys.len(),
                    c.webhooks.sources.len()
                );
                0
            }
            Err(code) => code,
        };
    }
    match Config::load(path).and_then(|c| c.validate()) {
        Ok(c) => {
            print_json(&serde_json::json!({
                "ok": true,
                "file": path.display().to_string(),
                "pools": c.pools.len(),
                "api_keys": c.auth.api_keys.len(),
                "warnings": c.warnings(),
                "webhook_sources": c.webhooks.sources.len(),
            }));
            0
        }
        Err(e) => {
            print_json(&serde_json::json!({
                "ok": false,
                "file": path.display().to_string(),
                "key": e.key,
                "message": e.message,
            }));
            2
        }
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

fn apikey_new(
    id: &str,
    roles: &[String],
    pools: &[String],
    expires: Option<&str>,
    output: Output,
) -> u8 {
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
    if output == Output::Json {
        let rfc3339 = time::format_description::well_known::Rfc3339;
        print_json(&serde_json::json!({
            "id": id,
            "key": key,
            "roles": parsed,
            "pools": pools,
            "expires": expires_at.and_then(|t| t.format(&rfc3339).ok()),
            "config_snippet": snippet,
        }));
        return 0;
    }
    println!("API key (give it to the client; only its hash is kept):\n  {key}\n");
    println!("Paste into the config:\n\n{snippet}");
    0
}

fn webhook(cmd: WebhookCommand) -> u8 {
    use crate::webhooks::{SourceKind, sign};
    let WebhookCommand::Sign {
        source,
        secret_file,
        config,
        kind,
        hmac_header,
        id,
        timestamp,
        output,
    } = cmd;
    let fail = |what: String| {
        match output.output {
            Output::Text => eprintln!("error: {what}"),
            Output::Json => print_json(&serde_json::json!({ "ok": false, "error": what })),
        }
        2
    };
    let (kind, hmac, id_header) = match (&config, kind.as_deref()) {
        (Some(path), _) => {
            let cfg = match load(path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match cfg.webhooks.sources.iter().find(|s| s.name == source) {
                Some(s) => sign::from_config(s),
                None => return fail(format!("{}: no webhook source '{source}'", path.display())),
            }
        }
        (None, Some(k)) => {
            match serde_json::from_value::<SourceKind>(serde_json::Value::String(k.into())) {
                Ok(k) => (
                    k,
                    hmac_header.clone(),
                    k.default_delivery_id().map(str::to_string),
                ),
                Err(_) => return fail(format!("--kind {k}: must be generic, jira or servicenow")),
            }
        }
        (None, None) => return fail("give --config (naming the source) or --kind".into()),
    };
    let secret = match std::fs::read_to_string(&secret_file) {
        Ok(s) => s.trim_end_matches(['\r', '\n']).to_string(),
        Err(e) => return fail(format!("--secret-file {}: {e}", secret_file.display())),
    };
    let mut body = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut body) {
        return fail(format!("reading the body from stdin: {e}"));
    }
    let id = id.unwrap_or_else(|| format!("msg_{}", uuid::Uuid::now_v7().simple()));
    let timestamp = timestamp.unwrap_or_else(|| OffsetDateTime::now_utc().unix_timestamp());
    let headers = match sign::sign(&sign::SignRequest {
        kind,
        secret: &secret,
        hmac_header: hmac.as_deref(),
        delivery_id_header: id_header.as_deref(),
        id,
        timestamp,
        body: &body,
    }) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    match output.output {
        Output::Json => {
            let map: serde_json::Map<String, serde_json::Value> = headers
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            print_json(
                &serde_json::json!({ "source": source, "kind": kind.as_str(), "headers": map }),
            );
        }
        Output::Text => {
            for (k, v) in headers {
                println!("{k}: {v}");
            }
        }
    }
    0
}

async fn audit(cmd: AuditCommand) -> u8 {
    let to_u8 = |c: i32| u8::try_from(c).unwrap_or(1);
    match cmd {
        AuditCommand::Verify { config, output } => {
            let cfg = match load_for_audit(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            to_u8(audit_verify_as(&cfg.audit, &cfg.server.data_dir, output.output).await)
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

async fn probe(url: &str, ca_file: Option<&Path>) -> u8 {
    let ca = match ca_file.map(crate::httpclient::read_ca_bundle).transpose() {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("error: --ca-file: {e}");
            return 1;
        }
    };
    let client = match crate::httpclient::build_client(
        ca.as_deref().map(|pem| ("--ca-file", pem)),
        std::time::Duration::from_secs(3),
    ) {
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
    audit_verify_as(cfg, data_dir, Output::Text).await
}

/// [`audit_verify`] in the chosen format: with [`Output::Json`] the report (or
/// `{"ok": false, "error": ...}` when the store cannot be read) as one JSON document.
pub async fn audit_verify_as(cfg: &AuditConfig, data_dir: &Path, output: Output) -> i32 {
    let failed = |what: String| {
        match output {
            Output::Text => eprintln!("audit verify: {what}"),
            Output::Json => print_json(&serde_json::json!({ "ok": false, "error": what })),
        }
        2
    };
    let store = match crate::audit::open_read_only(cfg, data_dir).await {
        Ok(s) => s,
        Err(e) => return failed(format!("cannot open the audit store: {e}")),
    };
    match crate::audit::AuditStore::verify(&store).await {
        Ok(r) => {
            match output {
                Output::Text => print!("{}", render_report(&r)),
                Output::Json => match serde_json::to_value(&r) {
                    Ok(v) => print_json(&v),
                    Err(e) => return failed(format!("cannot render the report: {e}")),
                },
            }
            if r.ok { 0 } else { 1 }
        }
        Err(e) => failed(format!("cannot read the audit store: {e}")),
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
