//! Runs a parsed command. Returns the process exit code.

use crate::{
    app,
    auth::apikey,
    cli::{ApikeyCommand, AuditCommand, Command, ConfigCommand},
    config::Config,
    telemetry,
};
use std::path::Path;

pub async fn run(cmd: Command) -> u8 {
    match cmd {
        Command::Serve { config } => serve(&config).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Emulate { which } => crate::demo::emulate(which).await,
        Command::Config {
            cmd: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Apikey {
            cmd: ApikeyCommand::New { id, roles, pools },
        } => apikey_new(&id, &roles, &pools),
        Command::Audit { cmd } => audit(cmd).await,
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

fn load(path: &Path) -> Result<Config, u8> {
    Config::load(path).map_err(|e| {
        eprintln!("error: config {}: {e}", path.display());
        2
    })
}

async fn serve(path: &Path) -> u8 {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    telemetry::init(cfg.server.json_logs, &cfg.server.log_filter);
    serve_config(cfg).await
}

/// Builds and serves `cfg` until SIGTERM/Ctrl-C.
pub async fn serve_config(cfg: Config) -> u8 {
    let listener = match tokio::net::TcpListener::bind(cfg.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listen = %cfg.server.listen, error = %e, "cannot listen");
            eprintln!("error: cannot listen on {}: {e}", cfg.server.listen);
            return 1;
        }
    };
    let app = match app::build_app(&cfg).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    tracing::info!(listen = %cfg.server.listen, pools = cfg.pools.len(), "sessiongate listening");
    match app::serve(app, listener, app::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn config_check(path: &Path) -> u8 {
    match load(path) {
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

fn apikey_new(id: &str, roles: &[String], pools: &[String]) -> u8 {
    for r in roles {
        if !matches!(r.as_str(), "reader" | "operator" | "admin" | "auditor") {
            eprintln!("error: --role {r}: must be reader, operator, admin or auditor");
            return 2;
        }
    }
    let key = apikey::generate_key();
    let q = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("API key (give it to the client; it is not stored anywhere):\n  {key}\n");
    println!("Paste into the config:\n");
    println!("[[auth.api_keys]]");
    println!("id = {id:?}");
    println!("hash = \"{}\"", apikey::hash_key(&key));
    println!("roles = [{}]", q(roles));
    println!("pools = [{}]", q(pools));
    println!("# expires_at = \"2027-01-01T00:00:00Z\"");
    0
}

async fn audit(cmd: AuditCommand) -> u8 {
    let _ = cmd;
    eprintln!("error: audit tools are not available in this build");
    2
}
