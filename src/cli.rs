//! Command line: `serve`, `demo`, `emulate`, `config check`, `apikey new`, `webhook sign`,
//! `audit`, `openapi`,
//! `probe`, `completions`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

#[derive(Debug, Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "One audited REST API for remote-desktop session control"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the production entry point).
    Serve {
        /// Configuration file (TOML); `SESSIONGATE__SECTION__KEY` variables override it.
        #[arg(long, short, env = "SESSIONGATE_CONFIG")]
        config: PathBuf,
    },
    /// Run the gateway on its embedded defaults against in-tree emulators (no setup needed).
    Demo(DemoArgs),
    /// Run one backend emulator alone (for tests, benchmarks and client authors).
    Emulate {
        #[command(subcommand)]
        which: EmulateCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCommand,
    },
    /// API key tools.
    Apikey {
        #[command(subcommand)]
        cmd: ApikeyCommand,
    },
    /// Webhook tools.
    Webhook {
        #[command(subcommand)]
        cmd: WebhookCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCommand,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Probe a running gateway's health endpoint (for container health checks); exit 0 when healthy.
    Probe {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
        /// Extra CA certificates (PEM) to trust for an https:// URL (a private CA's `[server.tls]`
        /// certificate).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Print a shell completion script, e.g. `sessiongate completions bash > /etc/bash_completion.d/sessiongate`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `--output` of the commands that print a report for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Output {
    /// Text for people.
    #[default]
    Text,
    /// One JSON document on stdout (also for errors the command reports itself).
    Json,
}

/// The `--output` flag.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: CompletionShell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    use clap_complete::{Shell, generate};
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    generate(shell, &mut Cli::command(), "sessiongate", out);
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address for the gateway.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Use this operator API key instead of a fresh random one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Where the demo keeps its audit log and emulator CA (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on (the WinRM emulator ignores it: one loopback port per emulated host).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Session hosts per pool.
    #[arg(long, default_value_t = 3)]
    pub hosts: usize,
    /// Sessions per host.
    #[arg(long, default_value_t = 4)]
    pub sessions_per_host: usize,
    /// Write the emulator's CA certificate (PEM) here (default: printed in the JSON line as a path under the temp dir).
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Fault injection of `emulate avd|wvd-classic|winrm|servicenow|jira`, for testing a client's handling of a
/// misbehaving backend. Rates are fractions of requests, `0` (never) to `1` (every request),
/// rolled per request in this order: slow, drop, 5xx, 429, then (after the backend acted) drop,
/// 5xx.
#[derive(Debug, Args, Clone, Default)]
pub struct FaultArgs {
    /// Delay every response by this many milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,
    /// Fraction of requests answered 5xx before the backend acts.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "RATE")]
    pub error_rate: f64,
    /// Fraction of requests whose connection is dropped, without an answer, before the backend acts.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "RATE")]
    pub drop_rate: f64,
    /// Fraction of requests answered 429 with `Retry-After: 1` before the backend acts.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "RATE")]
    pub throttle_rate: f64,
    /// Fraction of requests the backend carries out, then drops the connection without an answer.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "RATE")]
    pub drop_after_rate: f64,
    /// Fraction of requests the backend carries out, then answers 5xx.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "RATE")]
    pub error_after_rate: f64,
    /// Fraction of requests delayed by `--slow-ms` more before the backend acts.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "RATE")]
    pub slow_rate: f64,
    /// The extra delay of the slow requests.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub slow_ms: u64,
}

impl FaultArgs {
    /// The emulators' fault settings these flags ask for.
    pub fn settings(&self) -> crate::emulator::common::FaultSettings {
        crate::emulator::common::FaultSettings {
            latency_ms: self.latency_ms,
            error_rate: self.error_rate,
            drop_rate: self.drop_rate,
            drop_after_rate: self.drop_after_rate,
            error_after_rate: self.error_after_rate,
            throttle_rate: self.throttle_rate,
            slow_rate: self.slow_rate,
            slow_ms: self.slow_ms,
        }
    }
}

/// `emulate servicenow` and `emulate jira`.
#[derive(Debug, Args, Clone)]
pub struct TicketEmulatorArgs {
    /// Loopback address to listen on (a non-loopback address is refused).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Tickets seeded at start (incidents INC0010001..., or requests HELP-1...).
    #[arg(long, default_value_t = 3)]
    pub tickets: u32,
    /// The password (ServiceNow) or API token (Jira) of the integration account (default:
    /// the emulator's fixed one, printed in the JSON line).
    #[arg(long)]
    pub secret: Option<String>,
    /// Rate limit: this many requests per user (ServiceNow) or writes per issue (Jira) per
    /// `--rate-window-secs`, then 429 with `Retry-After`.
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub rate_window_secs: u64,
    /// Write the emulator's CA certificate (PEM) here (default: a path under the temp dir).
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// `emulate oidc`.
#[derive(Debug, Args, Clone)]
pub struct OidcArgs {
    /// Loopback address to listen on (a non-loopback address is refused).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Tenant id (the issuer is `https://HOST:PORT/{tenant}/v2.0`).
    #[arg(long, default_value = "11111111-2222-4333-8444-666666666666")]
    pub tenant: String,
    /// The API the tokens are for (`aud`); requests ask for scope `{audience}/.default`.
    #[arg(long, default_value = "api://sessiongate")]
    pub audience: String,
    /// The registered client (application) id.
    #[arg(long, default_value = "cccccccc-dddd-4eee-8fff-000000000001")]
    pub client_id: String,
    /// The client's secret (default: a fresh random one, printed in the JSON line).
    #[arg(long)]
    pub client_secret: Option<String>,
    /// A user the password grant signs in (repeat for more).
    #[arg(long = "user", value_name = "UPN", default_values_t = vec!["alice@contoso.com".to_string()])]
    pub users: Vec<String>,
    /// App role in every user's tokens (repeat for more; e.g. Reader, Operator).
    #[arg(long = "user-role", value_name = "ROLE")]
    pub user_roles: Vec<String>,
    /// App role in the client's own (client-credentials) tokens (repeat for more).
    #[arg(long = "client-role", value_name = "ROLE")]
    pub client_roles: Vec<String>,
    /// The users' password (default: a fresh random one, printed in the JSON line).
    #[arg(long)]
    pub password: Option<String>,
    /// Lifetime of issued tokens (`expires_in`), seconds.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub token_lifetime_secs: u32,
    /// Write the emulator's CA certificate (PEM) here (default: a path under the temp dir).
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
}

/// ARM's token buckets in `emulate avd` (per subscription and operation kind; the defaults are
/// ARM's published ones). Past a bucket the emulator answers 429 `SubscriptionRequestsThrottled`
/// with `Retry-After`; every metered answer carries `x-ms-ratelimit-remaining-subscription-*`.
#[derive(Debug, Args, Clone)]
pub struct ArmThrottleArgs {
    /// Answer every request without metering it.
    #[arg(long)]
    pub no_throttle: bool,
    /// Read (GET) bucket size.
    #[arg(long, default_value_t = 250, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub read_bucket: u32,
    /// Read tokens refilled per second.
    #[arg(long, default_value_t = 25, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub read_refill: u32,
    /// Write (POST, PATCH: disconnect, sendMessage) bucket size.
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub write_bucket: u32,
    /// Write tokens refilled per second.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub write_refill: u32,
    /// Delete (DELETE: log off) bucket size.
    #[arg(long, default_value_t = 200, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub delete_bucket: u32,
    /// Delete tokens refilled per second.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub delete_refill: u32,
}

impl ArmThrottleArgs {
    /// The emulator's throttle settings these flags ask for (`None`: `--no-throttle`).
    pub fn settings(&self) -> Option<crate::emulator::arm::ThrottleSettings> {
        (!self.no_throttle).then_some(crate::emulator::arm::ThrottleSettings {
            read_capacity: self.read_bucket,
            read_refill_per_sec: self.read_refill,
            write_capacity: self.write_bucket,
            write_refill_per_sec: self.write_refill,
            delete_capacity: self.delete_bucket,
            delete_refill_per_sec: self.delete_refill,
        })
    }
}

/// A fault rate: a number from 0 to 1.
fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number (a rate is 0 to 1, e.g. 0.2)"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "`{s}` is out of range: a rate is a fraction from 0 to 1 (e.g. 0.2 for 20 %)"
        ))
    }
}

#[derive(Debug, Subcommand)]
pub enum EmulateCommand {
    /// Azure Resource Manager (Microsoft.DesktopVirtualization) with its token endpoint.
    Avd {
        #[command(flatten)]
        args: EmulatorArgs,
        #[command(flatten)]
        throttle: ArmThrottleArgs,
    },
    /// An OpenID Connect issuer shaped like Microsoft Entra ID v2.0 (discovery, JWKS, token
    /// endpoint with client-credentials and password grants), on loopback only.
    Oidc(OidcArgs),
    /// The WVD classic (RDInfra) broker with its token endpoint.
    WvdClassic(EmulatorArgs),
    /// A ServiceNow instance: Table API (incidents, journal fields), Basic and OAuth
    /// (`oauth_token.do`), per-user rate limit, and the Business Rule webhook
    /// (`POST /_emulator/notify/{number}`, loopback targets only).
    Servicenow(TicketEmulatorArgs),
    /// A Jira Cloud / Service Management site: ADF issue comments, service-desk request
    /// comments, Basic auth with email and API token, per-issue write limit.
    Jira(TicketEmulatorArgs),
    /// WinRM hosts (RD Session Host or MultiPoint flavour).
    Winrm {
        #[command(flatten)]
        args: EmulatorArgs,
        #[arg(long, value_enum, default_value_t = WinrmFlavour::Rds)]
        flavour: WinrmFlavour,
        /// Also accept Kerberos (Negotiate) with the `HTTP/<host>` keys of this keytab
        /// (needs MIT's libgssapi_krb5.so.2 and `KRB5_CONFIG` for the realm).
        #[arg(long)]
        kerberos_keytab: Option<PathBuf>,
        /// The client principal Kerberos must prove (default: the emulator's user at any realm).
        #[arg(long, requires = "kerberos_keytab")]
        kerberos_principal: Option<String>,
        /// NTLM channel-binding enforcement, like the hosts' WinRM `CbtHardeningLevel`.
        #[arg(long, value_enum, default_value_t = CbtHardeningArg::Relaxed)]
        cbt_hardening: CbtHardeningArg,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum WinrmFlavour {
    Rds,
    Multipoint,
}

/// `--cbt-hardening` of `emulate winrm`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CbtHardeningArg {
    /// Ignore channel bindings.
    None,
    /// Check a binding when the client sends one.
    Relaxed,
    /// Require a correct binding.
    Strict,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file; names the offending key on error.
    Check {
        file: PathBuf,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Print a fresh API key and the `[[auth.api_keys]]` entry to paste into the config.
    New {
        /// Key id (appears in the audit log).
        #[arg(long, default_value = "automation")]
        id: String,
        /// Role(s): reader, operator, admin, auditor.
        #[arg(long = "role", default_values_t = vec!["operator".to_string()])]
        roles: Vec<String>,
        /// Pool(s) the roles cover (`*` for all).
        #[arg(long = "pool", default_values_t = vec!["*".to_string()])]
        pools: Vec<String>,
        /// Expiry (RFC 3339), e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Print the headers a source would send with the body on stdin (curl users, testing a
    /// source): `webhook-id`, `webhook-timestamp`, `webhook-signature` (generic);
    /// `X-Hub-Signature` and `X-Atlassian-Webhook-Identifier` (jira); the HMAC header (servicenow).
    Sign {
        /// The source's name in `[[webhooks.sources]]` (its kind and headers come from --config).
        #[arg(long)]
        source: String,
        /// File holding the secret (a `whsec_` secret for generic sources).
        #[arg(long)]
        secret_file: PathBuf,
        /// Configuration file naming the source.
        #[arg(long, short, env = "SESSIONGATE_CONFIG")]
        config: Option<PathBuf>,
        /// The source's kind, when no configuration is given: generic, jira, servicenow.
        #[arg(long)]
        kind: Option<String>,
        /// servicenow without --config: the HMAC header to sign in.
        #[arg(long)]
        hmac_header: Option<String>,
        /// Delivery id (default: a fresh one).
        #[arg(long)]
        id: Option<String>,
        /// Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        #[command(flatten)]
        output: OutputArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit log's hash chains; exit 0 when intact, 1 at the first break.
    Verify {
        #[arg(long, short, env = "SESSIONGATE_CONFIG")]
        config: PathBuf,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Export events for a SIEM, oldest first.
    Export {
        #[arg(long, short, env = "SESSIONGATE_CONFIG")]
        config: PathBuf,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_fractions_from_zero_to_one() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("0.2"), Ok(0.2));
        assert_eq!(parse_rate("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "inf", "20%", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
