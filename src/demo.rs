//! `demo` and `emulate`: the embedded defaults, in-tree emulators on loopback, the gateway
//! pointed at them through the real adapters.

use crate::{
    auth::apikey,
    cli::{ArmThrottleArgs, DemoArgs, EmulateCommand, EmulatorArgs, OidcArgs, TicketEmulatorArgs},
    config::Config,
    emulator::{arm, common::EmulatorTls, jira, servicenow, winrm, wvd_classic},
};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

/// The demo configuration template (`config/demo.toml`).
pub const DEMO_TEMPLATE: &str = include_str!("../config/demo.toml");

/// Escapes a value for use inside a TOML basic string.
fn toml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            c if c.is_control() => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

/// Fills `@NAME@` placeholders; fails on any left unfilled.
pub fn render_template(template: &str, values: &HashMap<&str, String>) -> Result<String, String> {
    let mut out = template.to_string();
    for (k, v) in values {
        out = out.replace(&format!("@{k}@"), &toml_escape(v));
    }
    if let Some(i) = out.find('@')
        && let Some(rest) = out[i + 1..].split('@').next()
        && !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    {
        return Err(format!("demo template placeholder @{rest}@ has no value"));
    }
    Ok(out)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Emulated RD Session Hosts of the demo's `rds-demo` pool.
pub const RDS_HOSTS: [&str; 3] = [
    "rdsh-01.contoso.test",
    "rdsh-02.contoso.test",
    "rdsh-03.contoso.test",
];
/// The demo's emulated MultiPoint server.
pub const MPS_HOST: &str = "mps-01.contoso.test";

/// Emulators started for the demo, kept alive while it runs.
pub struct DemoBackends {
    /// The Entra-style issuer `[auth.oidc]` trusts (what `emulate oidc` runs).
    pub oidc: crate::emulator::oidc::TestIssuer,
    /// The demo user (a UPN with sessions in the ARM pool) and its password at the issuer.
    pub demo_user: String,
    pub demo_password: String,
    pub arm: arm::ArmEmulator,
    pub classic: wvd_classic::ClassicEmulator,
    pub rds: winrm::WinRmEmulator,
    pub multipoint: winrm::WinRmEmulator,
    pub servicenow: servicenow::ServiceNowEmulator,
    pub jira: jira::JiraEmulator,
    /// One ticket per webhook source of `config/demo.toml`, with what it takes to send it.
    pub webhooks: Vec<DemoWebhook>,
    pub values: HashMap<&'static str, String>,
}

/// A ticket of the emulated ServiceNow instance or Jira site asking to log a user off, and the
/// delivery its webhook source receives for it.
pub struct DemoWebhook {
    /// The source's name (and kind) in `config/demo.toml`.
    pub source: &'static str,
    /// What the banner says about it.
    pub what: String,
    /// The ticket (`INC...`, `HELP-1`) and the user it asks to log off.
    pub ticket: String,
    pub user: String,
    /// The delivery's body, a file in the data dir.
    pub body_file: PathBuf,
    /// The delivery id (in the body for ServiceNow, a header for Jira, `--id` for generic).
    pub delivery_id: String,
    /// Headers computed once for the fixed body (servicenow, jira); generic signs when sent.
    pub headers: Vec<(String, String)>,
    /// generic: the file holding the source's `whsec_` secret, for `sessiongate webhook sign`.
    pub secret_file: Option<PathBuf>,
    /// A command that shows the ticket's notes (the job's result once written back).
    pub notes_command: String,
}

/// The demo's Entra tenant, API (audience) and public client of the OIDC emulator.
const DEMO_TENANT: &str = "11111111-2222-4333-8444-666666666666";
pub const DEMO_AUDIENCE: &str = "api://sessiongate-demo";
pub const DEMO_CLIENT_ID: &str = "cccccccc-dddd-4eee-8fff-000000000001";
/// Lifetime of the demo user's tokens: short, a fresh one is one curl away.
pub const DEMO_TOKEN_LIFETIME_SECS: u32 = 3600;

impl DemoBackends {
    /// Signs the demo user in at the OIDC emulator's token endpoint (password grant, as a
    /// public client would) and returns the access token.
    pub async fn demo_user_token(&self) -> Result<String, String> {
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
        for c in reqwest::Certificate::from_pem_bundle(self.oidc.ca_pem().as_bytes())
            .map_err(|e| e.to_string())?
        {
            b = b.add_root_certificate(c);
        }
        let http = b.build().map_err(|e| e.to_string())?;
        let scope = format!("{DEMO_AUDIENCE}/.default");
        let v: serde_json::Value = http
            .post(self.oidc.token_url())
            .form(&[
                ("grant_type", "password"),
                ("client_id", DEMO_CLIENT_ID),
                ("username", self.demo_user.as_str()),
                ("password", self.demo_password.as_str()),
                ("scope", scope.as_str()),
            ])
            .send()
            .await
            .map_err(|e| format!("token request: {e}"))?
            .json()
            .await
            .map_err(|e| format!("token answer: {e}"))?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no token from the OIDC emulator: {v}"))
    }
}

/// Starts every emulator and returns the placeholder values for `config/demo.toml`.
pub async fn start_backends(data_dir: &Path) -> Result<DemoBackends, String> {
    let tls = EmulatorTls::generate().map_err(|e| format!("generating emulator TLS: {e}"))?;
    let ca_path = data_dir.join("emulator-ca.pem");
    std::fs::write(&ca_path, tls.ca_pem()).map_err(|e| format!("{}: {e}", ca_path.display()))?;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the ARM emulator: {e}"))?;
    let opts = arm::ArmEmulatorOptions {
        host_pools: vec!["hp-demo".into()],
        hosts_per_pool: 3,
        sessions_per_host: 3,
        ..arm::ArmEmulatorOptions::default()
    };
    let mut arm_emu = arm::start(listener, &tls, opts)
        .await
        .map_err(|e| format!("starting the ARM emulator: {e}"))?;
    arm_emu.set_ca_pem_path(ca_path.display().to_string());
    let info = arm_emu.info();
    let secret_file = data_dir.join("arm-client-secret");
    write_private(&secret_file, &info.client_secret)
        .map_err(|e| format!("{}: {e}", secret_file.display()))?;

    let mut values: HashMap<&'static str, String> = HashMap::new();
    values.insert("DATA_DIR", data_dir.display().to_string());
    values.insert("CA_BUNDLE", ca_path.display().to_string());
    values.insert("ARM_URL", info.base_url.clone());
    values.insert("ARM_AUTHORITY", info.authority_host.clone());
    values.insert("ARM_TENANT", info.tenant.clone());
    values.insert("ARM_CLIENT_ID", info.client_id.clone());
    values.insert("ARM_SECRET_FILE", secret_file.display().to_string());
    values.insert("ARM_SUBSCRIPTION", info.subscription.clone());
    values.insert("ARM_RESOURCE_GROUP", info.resource_group.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the classic broker emulator: {e}"))?;
    let classic = wvd_classic::start(
        listener,
        &tls,
        wvd_classic::ClassicEmulatorOptions {
            host_pools: vec!["classic-hp1".into()],
            hosts_per_pool: 2,
            sessions_per_host: 3,
            ..wvd_classic::ClassicEmulatorOptions::default()
        },
    )
    .await
    .map_err(|e| format!("starting the classic broker emulator: {e}"))?;
    let ci = classic.info();
    let classic_secret = data_dir.join("classic-client-secret");
    write_private(&classic_secret, &ci.client_secret)
        .map_err(|e| format!("{}: {e}", classic_secret.display()))?;
    values.insert("CLASSIC_URL", ci.broker_url.clone());
    values.insert("CLASSIC_AUTHORITY", ci.authority_host.clone());
    values.insert("CLASSIC_RDS_TENANT", ci.rds_tenant.clone());
    values.insert("CLASSIC_AAD_TENANT", ci.aad_tenant.clone());
    values.insert("CLASSIC_CLIENT_ID", ci.client_id.clone());
    values.insert("CLASSIC_SECRET_FILE", classic_secret.display().to_string());

    let rds = winrm::start(
        &tls,
        winrm::WinRmEmulatorOptions {
            flavour: winrm::Flavour::Rds,
            hosts: RDS_HOSTS.iter().map(|h| h.to_string()).collect(),
            sessions_per_host: 3,
            ..winrm::WinRmEmulatorOptions::default()
        },
    )
    .await
    .map_err(|e| format!("starting the WinRM (RDS) emulator: {e}"))?;
    let multipoint = winrm::start(
        &tls,
        winrm::WinRmEmulatorOptions {
            flavour: winrm::Flavour::MultiPoint,
            hosts: vec![MPS_HOST.to_string()],
            sessions_per_host: 4,
            ..winrm::WinRmEmulatorOptions::default()
        },
    )
    .await
    .map_err(|e| format!("starting the WinRM (MultiPoint) emulator: {e}"))?;
    let winrm_pw = data_dir.join("winrm-password");
    write_private(&winrm_pw, &rds.info().password)
        .map_err(|e| format!("{}: {e}", winrm_pw.display()))?;
    values.insert("WINRM_USER", rds.info().username.clone());
    values.insert("WINRM_PASSWORD_FILE", winrm_pw.display().to_string());
    for (i, h) in RDS_HOSTS.iter().enumerate() {
        let url = rds
            .endpoint(h)
            .ok_or_else(|| format!("the WinRM emulator did not start host {h}"))?;
        values.insert(["RDS_1_URL", "RDS_2_URL", "RDS_3_URL"][i], url);
    }
    let url = multipoint
        .endpoint(MPS_HOST)
        .ok_or_else(|| format!("the WinRM emulator did not start host {MPS_HOST}"))?;
    values.insert("MPS_1_URL", url);

    // Entra ID, emulated: the gateway's [auth.oidc] trusts it; the demo user signs in with the
    // password grant at its token endpoint.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the OIDC emulator: {e}"))?;
    let oidc = crate::emulator::oidc::TestIssuer::start_on(listener, tls.clone(), DEMO_TENANT)
        .await
        .map_err(|e| format!("starting the OIDC emulator: {e}"))?;
    // The last seeded user: the printed examples act on the first host's sessions.
    let demo_user = arm_emu
        .state()
        .sessions("hp-demo")
        .last()
        .map(|s| s.user.clone())
        .ok_or("the ARM emulator seeded no session")?;
    let demo_password = random_secret();
    oidc.set_token_endpoint(crate::emulator::oidc::TokenEndpoint {
        audience: DEMO_AUDIENCE.into(),
        client_id: DEMO_CLIENT_ID.into(),
        client_secret: random_secret(),
        client_roles: Vec::new(),
        users: vec![(
            demo_user.clone(),
            demo_password.clone(),
            // No role: the demo user reaches its own sessions through self-service only.
            Vec::new(),
        )],
        lifetime_secs: DEMO_TOKEN_LIFETIME_SECS,
    });
    values.insert("OIDC_ISSUER", oidc.issuer().to_string());
    values.insert("OIDC_AUDIENCE", DEMO_AUDIENCE.to_string());
    let (servicenow, jira, webhooks) =
        start_ticketing(data_dir, &tls, &ca_path, &arm_emu, &mut values).await?;
    Ok(DemoBackends {
        oidc,
        demo_user,
        demo_password,
        arm: arm_emu,
        classic,
        rds,
        multipoint,
        servicenow,
        jira,
        webhooks,
        values,
    })
}

/// Writes a file in the data dir, naming it in the error.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), String> {
    let r = if private {
        std::str::from_utf8(contents)
            .map_err(std::io::Error::other)
            .and_then(|t| write_private(path, t))
    } else {
        std::fs::write(path, contents)
    };
    r.map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts the ServiceNow and Jira emulators, seeds one ticket per webhook source of the demo
/// (each asking to log off another user with a session in the AVD pool), writes the sources'
/// secrets and the deliveries' bodies into the data dir and fills the `[[webhooks.sources]]`
/// placeholders.
async fn start_ticketing(
    data_dir: &Path,
    tls: &EmulatorTls,
    ca_path: &Path,
    arm_emu: &arm::ArmEmulator,
    values: &mut HashMap<&'static str, String>,
) -> Result<
    (
        servicenow::ServiceNowEmulator,
        jira::JiraEmulator,
        Vec<DemoWebhook>,
    ),
    String,
> {
    // Users of the AVD pool the other printed examples leave alone: the first two sessions are
    // the logoff and Idempotency-Key examples', the last one is the demo user's.
    let sessions = arm_emu.state().sessions("hp-demo");
    let users: Vec<String> = sessions
        .iter()
        .skip(3)
        .take(3)
        .map(|s| s.user.clone())
        .collect();
    let [sn_user, jira_user, gen_user] = <[String; 3]>::try_from(users)
        .map_err(|_| "the ARM emulator seeded too few sessions for the ticket examples")?;
    let ca = shell_word(&ca_path.display().to_string());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the ServiceNow emulator: {e}"))?;
    let mut sn = servicenow::start(
        listener,
        tls,
        servicenow::ServiceNowOptions {
            password: random_secret(),
            client_secret: random_secret(),
            incidents: 0,
            callers: Vec::new(),
            ..servicenow::ServiceNowOptions::default()
        },
    )
    .await
    .map_err(|e| format!("starting the ServiceNow emulator: {e}"))?;
    sn.set_ca_pem_path(ca_path.display().to_string());
    let sn_info = sn.info();
    let sn_state = sn.state();
    let (sn_number, sn_sys_id) = sn_state.add_incident(
        &sn_user,
        "My remote desktop session is frozen",
        "approved",
        "logoff",
    );
    let (gen_number, gen_sys_id) = sn_state.add_incident(
        &gen_user,
        "Log me off: my profile is stuck",
        "approved",
        "logoff",
    );
    let sn_password = data_dir.join("servicenow-password");
    write_file(&sn_password, sn_info.password.as_bytes(), true)?;
    values.insert("SN_URL", sn_info.instance_url.clone());
    values.insert("SN_USER", sn_info.user.clone());
    values.insert("SN_PASSWORD_FILE", sn_password.display().to_string());
    let journal = |sys_id: &str| {
        format!(
            "curl -s --cacert {ca} -u {} '{}/api/now/table/sys_journal_field?sysparm_query=element_id={sys_id}&sysparm_fields=element,value,sys_created_on'",
            shell_word(&format!("{}:{}", sn_info.user, sn_info.password)),
            sn_info.instance_url,
        )
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the Jira emulator: {e}"))?;
    let mut jira_emu = jira::start(
        listener,
        tls,
        jira::JiraOptions {
            api_token: random_secret(),
            issues: 0,
            reporters: Vec::new(),
            ..jira::JiraOptions::default()
        },
    )
    .await
    .map_err(|e| format!("starting the Jira emulator: {e}"))?;
    jira_emu.set_ca_pem_path(ca_path.display().to_string());
    let jira_info = jira_emu.info();
    let jira_state = jira_emu.state();
    let jira_key = jira_state.add_issue(&jira_user, "Please log me off everywhere", "logoff");
    jira_state.set_status(&jira_key, "Approved");
    let jira_token = data_dir.join("jira-api-token");
    write_file(&jira_token, jira_info.api_token.as_bytes(), true)?;
    values.insert("JIRA_URL", jira_info.site_url.clone());
    values.insert("JIRA_EMAIL", jira_info.email.clone());
    values.insert("JIRA_TOKEN_FILE", jira_token.display().to_string());

    let mut hooks = Vec::new();

    // servicenow: the Business Rule's body, its API key and HMAC (the emulator's header).
    let sn_key = apikey::generate_key();
    let sn_hmac = random_secret();
    let sn_hmac_file = data_dir.join("webhook-servicenow-hmac");
    write_file(&sn_hmac_file, sn_hmac.as_bytes(), true)?;
    values.insert("SN_WEBHOOK_KEY_HASH", apikey::hash_key(&sn_key));
    values.insert("SN_HMAC_FILE", sn_hmac_file.display().to_string());
    let delivery_id = uuid::Uuid::new_v4().to_string();
    let body = serde_json::to_vec(&sn_state.notify_payload(&sn_number, &delivery_id, None)?)
        .map_err(|e| e.to_string())?;
    let body_file = data_dir.join("webhook-servicenow.json");
    write_file(&body_file, &body, false)?;
    hooks.push(DemoWebhook {
        source: "servicenow",
        what: format!(
            "incident {sn_number} asks to log off {sn_user}; API key + HMAC of the body, as a Business Rule sends it"
        ),
        ticket: sn_number.clone(),
        user: sn_user,
        body_file,
        headers: vec![
            ("X-Sessiongate-Key".into(), sn_key),
            (
                "X-ServiceNow-Signature".into(),
                crate::webhooks::signature::hub_sign(sn_hmac.as_bytes(), &body),
            ),
        ],
        delivery_id,
        secret_file: None,
        notes_command: journal(&sn_sys_id),
    });

    // jira: the admin webhook's jira:issue_updated body, signed with the webhook's secret.
    let jira_secret = random_secret();
    let jira_secret_file = data_dir.join("webhook-jira-secret");
    write_file(&jira_secret_file, jira_secret.as_bytes(), true)?;
    values.insert(
        "JIRA_WEBHOOK_SECRET_FILE",
        jira_secret_file.display().to_string(),
    );
    let payload = jira_state
        .issue_updated_payload(&jira_key)
        .ok_or("the Jira emulator lost its issue")?;
    let body = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    let body_file = data_dir.join("webhook-jira.json");
    write_file(&body_file, &body, false)?;
    let delivery_id = uuid::Uuid::new_v4().to_string();
    hooks.push(DemoWebhook {
        source: "jira",
        what: format!(
            "issue {jira_key} (Approved) asks to log off {jira_user}; an admin webhook signed with its secret"
        ),
        ticket: jira_key.clone(),
        user: jira_user,
        body_file,
        headers: vec![
            (
                "X-Hub-Signature".into(),
                crate::webhooks::signature::hub_sign(jira_secret.as_bytes(), &body),
            ),
            ("X-Atlassian-Webhook-Identifier".into(), delivery_id.clone()),
        ],
        delivery_id,
        secret_file: None,
        notes_command: format!(
            "curl -s --cacert {ca} -u {} {}/rest/api/3/issue/{jira_key}/comment",
            shell_word(&format!("{}:{}", jira_info.email, jira_info.api_token)),
            jira_info.site_url,
        ),
    });

    // generic: a Standard Webhooks sender naming a ServiceNow incident by number.
    let gen_secret = format!(
        "whsec_{}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            rand::Rng::random::<[u8; 24]>(&mut rand::rng())
        )
    );
    let gen_secret_file = data_dir.join("webhook-generic-secret");
    write_file(&gen_secret_file, gen_secret.as_bytes(), true)?;
    values.insert("GENERIC_SECRET_FILE", gen_secret_file.display().to_string());
    let body = serde_json::to_vec(&serde_json::json!({
        "action": "logoff",
        "user": gen_user,
        "ticket": gen_number,
        "reason": "Log me off: my profile is stuck",
    }))
    .map_err(|e| e.to_string())?;
    let body_file = data_dir.join("webhook-generic.json");
    write_file(&body_file, &body, false)?;
    hooks.push(DemoWebhook {
        source: "generic",
        what: format!(
            "a Standard Webhooks sender asks to log off {gen_user} for incident {gen_number}; signed when sent (timestamps within 5 min)"
        ),
        ticket: gen_number,
        user: gen_user,
        body_file,
        headers: Vec::new(),
        delivery_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        secret_file: Some(gen_secret_file),
        notes_command: journal(&gen_sys_id),
    });
    Ok((sn, jira_emu, hooks))
}

/// The demo's API keys, one per role.
pub struct DemoKeys {
    pub operator: String,
    pub reader: String,
    pub admin: String,
    pub auditor: String,
}

impl DemoKeys {
    pub fn generate(operator: Option<String>) -> Self {
        Self {
            operator: operator.unwrap_or_else(apikey::generate_key),
            reader: apikey::generate_key(),
            admin: apikey::generate_key(),
            auditor: apikey::generate_key(),
        }
    }

    fn insert_hashes(&self, values: &mut HashMap<&'static str, String>) {
        values.insert("OPERATOR_KEY_HASH", apikey::hash_key(&self.operator));
        values.insert("READER_KEY_HASH", apikey::hash_key(&self.reader));
        values.insert("ADMIN_KEY_HASH", apikey::hash_key(&self.admin));
        values.insert("AUDITOR_KEY_HASH", apikey::hash_key(&self.auditor));
    }
}

/// Renders and parses the demo config for the running backends.
pub fn demo_config(
    backends: &DemoBackends,
    keys: &DemoKeys,
    listen: std::net::SocketAddr,
) -> Result<Config, String> {
    let text = demo_config_text(backends, keys, listen)?;
    Config::from_toml_with_env(&text, std::iter::empty()).map_err(|e| e.to_string())
}

/// The demo config as TOML text: `config/demo.toml` with the backends' values filled in.
/// Secrets are not in it: they are files in the data dir that it names (`secret_file`,
/// `password_file`); the API keys appear only as hashes.
pub fn demo_config_text(
    backends: &DemoBackends,
    keys: &DemoKeys,
    listen: std::net::SocketAddr,
) -> Result<String, String> {
    let mut values = backends.values.clone();
    keys.insert_hashes(&mut values);
    values.insert("LISTEN", listen.to_string());
    render_template(DEMO_TEMPLATE, &values)
}

/// File name of the effective config `demo` writes into its data dir.
pub const DEMO_CONFIG_FILE: &str = "sessiongate.toml";

const DEMO_CONFIG_HEADER: &str = "\
# Written by `sessiongate demo`: the configuration this demo ran with (its effective config).
# Secrets are not in this file: the client secrets, the WinRM password and the ticketing
# secrets are files next to it, named by secret_file / password_file / api_token_file / file;
# API keys appear only as hashes.
# The emulators listened on random loopback ports and stop with the demo, so the pools below do
# not answer afterwards. The file stays valid for the commands that need only [server] and
# [audit], for instance:
#   sessiongate audit verify --config <this file>
#   sessiongate audit export --config <this file>
# and `sessiongate config check <this file>` passes while the files it names exist.

";

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn default_data_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "sessiongate-demo-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

pub async fn run(args: DemoArgs) -> u8 {
    crate::telemetry::init(false, "info,sessiongate=info");
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    // Absolute, so the config written below names the same files from any directory.
    let data_dir =
        match std::fs::create_dir_all(&data_dir).and_then(|()| std::fs::canonicalize(&data_dir)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: data dir {}: {e}", data_dir.display());
                return 1;
            }
        };
    if let Some(k) = &args.api_key
        && k.trim().len() < 16
    {
        eprintln!("error: --api-key must be at least 16 characters");
        return 2;
    }
    let backends = match start_backends(&data_dir).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let keys = DemoKeys::generate(args.api_key.clone());
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return 1;
        }
    };
    let local = listener.local_addr().unwrap_or(args.listen);
    let addr = local.to_string();
    let text = match demo_config_text(&backends, &keys, local) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: demo config: {e}");
            return 1;
        }
    };
    let cfg = match Config::from_toml_with_env(&text, std::iter::empty()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: demo config: {e}");
            return 1;
        }
    };
    let cfg_path = data_dir.join(DEMO_CONFIG_FILE);
    if let Err(e) = std::fs::write(&cfg_path, format!("{DEMO_CONFIG_HEADER}{text}")) {
        eprintln!("error: {}: {e}", cfg_path.display());
        return 1;
    }
    let app = match crate::app::build_app(&cfg).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let token = match backends.demo_user_token().await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: signing the demo user in at the OIDC emulator: {e}");
            return 1;
        }
    };
    print_banner(&addr, &keys, &backends, &data_dir, &cfg_path, &token);
    match crate::app::serve(app, listener, crate::app::shutdown_signal()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn print_banner(
    addr: &str,
    keys: &DemoKeys,
    b: &DemoBackends,
    data_dir: &Path,
    cfg: &Path,
    token: &str,
) {
    let url = format!("http://{addr}");
    let state = b.arm.state();
    let hosts = state.hosts("hp-demo");
    let first_host = hosts.first().cloned().unwrap_or_default();
    let sid = state
        .sessions("hp-demo")
        .into_iter()
        .find(|s| s.host.eq_ignore_ascii_case(&first_host))
        .map(|s| s.id)
        .unwrap_or(2);
    // A second session (another one than the first), for the Idempotency-Key example.
    let (host2, sid2) = state
        .sessions("hp-demo")
        .into_iter()
        .find(|s| !(s.host.eq_ignore_ascii_case(&first_host) && s.id == sid))
        .map(|s| (s.host, s.id))
        .unwrap_or_else(|| (first_host.clone(), 3));
    let op = &keys.operator;
    let session = format!("{url}/hostpools/avd-demo/sessionhosts/{first_host}/sessions/{sid}");
    let session2 = format!("{url}/hostpools/avd-demo/sessionhosts/{host2}/sessions/{sid2}");
    println!(
        r#"
sessiongate demo is running at {url}
  helpdesk console in the browser: {url}/ (sign in with a key below)
  data dir (audit log, emulator CA): {data_dir}
  config it runs with (secrets as files beside it): {cfg}

API keys (one per role):
  operator  {op}
  reader    {reader}
  admin     {admin}
  auditor   {auditor}

Try:
  export SG={url} KEY={op}
  # list pools, then the sessions of the AVD pool
  curl -s -H "Authorization: Bearer $KEY" $SG/hostpools
  curl -s -H "Authorization: Bearer $KEY" $SG/hostpools/avd-demo/sessions
  # log a session off, then again (outcome already_gone)
  curl -s -X POST -H "Authorization: Bearer $KEY" {session}/logoff
  curl -s -X POST -H "Authorization: Bearer $KEY" {session}/logoff
  # without a key: 401 problem+json
  curl -s -i $SG/hostpools
  # the reader key may list but not act: 403
  curl -s -X POST -H "Authorization: Bearer {reader}" {session}/disconnect
  # the WVD classic pool, the on-prem RDS farm and the MultiPoint server answer the same API
  curl -s -H "Authorization: Bearer $KEY" $SG/hostpools/classic-demo/sessions
  curl -s -H "Authorization: Bearer $KEY" $SG/hostpools/rds-demo/sessions
  curl -s -X POST -H "Authorization: Bearer $KEY" $SG/hostpools/multipoint-demo/sessionhosts/{mps}/sessions/2/lock
  # fleet: a bulk call on the AVD pool, one result per target (dry run: nothing is sent)
  curl -s -X POST -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    -d '{{"dry_run": true, "targets": [{{"host": "{first_host}", "id": {sid}}}, {{"host": "{first_host}", "id": 999}}]}}' \
    $SG/hostpools/avd-demo/sessions/logoff
  # fleet: one user everywhere (AVD, classic, and on-prem through upn_domains), then log them off everywhere
  curl -s -H "Authorization: Bearer $KEY" $SG/users/user1@contoso.com/sessions
  curl -s -X POST -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    -d '{{"dry_run": true}}' $SG/users/user1@contoso.com/logoff
  # fleet: every session of one host (needs the admin key; protected users are skipped)
  curl -s -X POST -H "Authorization: Bearer {admin}" -H "Content-Type: application/json" \
    -d '{{"all": true, "dry_run": true}}' $SG/hostpools/rds-demo/sessionhosts/rdsh-01.contoso.test/sessions/logoff
  # fleet as a durable job: 202 with Location: /jobs/{{id}}; then watch it (state, counts, items)
  curl -s -i -X POST -H "Authorization: Bearer $KEY" "$SG/users/user1@contoso.com/logoff?async=true"
  curl -s -H "Authorization: Bearer $KEY" "$SG/jobs?limit=1"
  curl -s -H "Authorization: Bearer $KEY" $SG/jobs/<id from Location>
  # retry safely: send this twice; the second answer is the first one replayed
  # (Idempotency-Replayed: true) and nothing is sent to the backend again
  curl -s -i -X POST -H "Authorization: Bearer $KEY" -H "Idempotency-Key: demo-retry-1" {session2}/disconnect
  # the auditor reads the audit log
  curl -s -H "Authorization: Bearer {auditor}" "$SG/audit?limit=5"
  # verify the audit log's hash chains (also after the demo stopped)
  sessiongate audit verify --config {cfg_arg}

Entra ID (emulated: `sessiongate emulate oidc`) token of demo user {user}
(no role: self-service, `auth.self_service = true`; valid {mins} min):
  export TOKEN={token}
  # the user's own sessions, in every pool; then disconnect them (dry run first)
  curl -s -H "Authorization: Bearer $TOKEN" $SG/me/sessions
  curl -s -X POST -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" \
    -d '{{"dry_run": true}}' $SG/me/sessions/disconnect
  # a fresh token (password grant at the emulator's Entra-style v2 token endpoint)
  curl -s --cacert {ca} -d grant_type=password -d client_id={client} -d username={user} -d password={password} -d scope={scope} {token_url}
{webhooks}
Stop with Ctrl-C.
"#,
        data_dir = data_dir.display(),
        cfg = cfg.display(),
        cfg_arg = shell_word(&cfg.display().to_string()),
        reader = keys.reader,
        admin = keys.admin,
        auditor = keys.auditor,
        mps = MPS_HOST,
        user = b.demo_user,
        mins = DEMO_TOKEN_LIFETIME_SECS / 60,
        ca = shell_word(&data_dir.join("emulator-ca.pem").display().to_string()),
        client = DEMO_CLIENT_ID,
        password = shell_word(&b.demo_password),
        scope = shell_word(&format!("{DEMO_AUDIENCE}/.default")),
        token_url = b.oidc.token_url(),
        webhooks = webhooks_banner(b, cfg, &keys.admin),
    );
}

/// The banner's ticketing part: per source, the delivery as a ready-to-paste curl and the
/// command that shows the ticket's notes.
fn webhooks_banner(b: &DemoBackends, cfg: &Path, admin_key: &str) -> String {
    // The binary running now, so the signing command works wherever it was started from.
    let exe = std::env::current_exe()
        .map(|p| shell_word(&p.display().to_string()))
        .unwrap_or_else(|_| "sessiongate".into());
    let mut out = format!(
        "
Ticketing webhooks (docs/ticketing.md), one source of each kind. The tickets live in the
emulated ServiceNow instance {sn} and Jira site {jira}.
Each delivery logs its user off as a job; once the job ended, its result is written to the
ticket. Send one twice: the second answer is the first one replayed (Webhook-Replayed: true),
nothing runs again.
",
        sn = b.servicenow.base_url(),
        jira = b.jira.base_url(),
    );
    for h in &b.webhooks {
        let body = shell_word(&h.body_file.display().to_string());
        let post = "curl -s -i -X POST -H 'Content-Type: application/json'";
        out.push_str(&format!("  # {}: {}\n", h.source, h.what));
        match &h.secret_file {
            Some(secret) => out.push_str(&format!(
                "  {exe} webhook sign --config {cfg} --source {src} --secret-file {secret} --id {id} < {body} \\\n    | {post} -H @- --data-binary @{body} $SG/webhooks/{src}\n",
                cfg = shell_word(&cfg.display().to_string()),
                src = h.source,
                secret = shell_word(&secret.display().to_string()),
                id = h.delivery_id,
            )),
            None => {
                let headers: Vec<String> = h
                    .headers
                    .iter()
                    .map(|(k, v)| format!("-H {}", shell_word(&format!("{k}: {v}"))))
                    .collect();
                out.push_str(&format!(
                    "  {post} \\\n    {} \\\n    --data-binary @{body} $SG/webhooks/{}\n",
                    headers.join(" \\\n    "),
                    h.source,
                ));
            }
        }
        out.push_str(&format!(
            "  # {}'s notes: the job's result, a few seconds after the job ended\n  {}\n",
            h.ticket, h.notes_command
        ));
    }
    out.push_str(&format!(
        "  # a delivery's job, with its write_back state (webhook jobs: admin or auditor key)\n  curl -s -H \"Authorization: Bearer {admin_key}\" $SG/jobs/<job_id from the answer>\n"
    ));
    out
}

pub async fn emulate(which: EmulateCommand) -> u8 {
    crate::telemetry::init(false, "warn");
    let res = match which {
        EmulateCommand::Avd { args, throttle } => emulate_avd(args, throttle).await,
        EmulateCommand::WvdClassic(args) => emulate_classic(args).await,
        EmulateCommand::Oidc(args) => emulate_oidc(args).await,
        EmulateCommand::Servicenow(args) => emulate_servicenow(args).await,
        EmulateCommand::Jira(args) => emulate_jira(args).await,
        EmulateCommand::Winrm {
            args,
            flavour,
            cbt_hardening,
            kerberos_keytab,
            kerberos_principal,
        } => {
            emulate_winrm(
                args,
                flavour,
                cbt_hardening,
                kerberos_keytab,
                kerberos_principal,
            )
            .await
        }
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn write_ca(tls: &EmulatorTls, out: Option<PathBuf>) -> Result<PathBuf, String> {
    let path = out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "sessiongate-emulator-ca-{}.pem",
            uuid::Uuid::new_v4().simple()
        ))
    });
    std::fs::write(&path, tls.ca_pem()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

async fn emulate_avd(args: EmulatorArgs, throttle: ArmThrottleArgs) -> Result<(), String> {
    let tls = EmulatorTls::generate().map_err(|e| e.to_string())?;
    let ca = write_ca(&tls, args.ca_out)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let opts = arm::ArmEmulatorOptions {
        hosts_per_pool: args.hosts,
        sessions_per_host: args.sessions_per_host,
        faults: args.faults.settings(),
        throttling: throttle.settings(),
        ..arm::ArmEmulatorOptions::default()
    };
    let mut emu = arm::start(listener, &tls, opts)
        .await
        .map_err(|e| e.to_string())?;
    emu.set_ca_pem_path(ca.display().to_string());
    println!(
        "{}",
        serde_json::to_string(&emu.info()).map_err(|e| e.to_string())?
    );
    crate::app::shutdown_signal().await;
    Ok(())
}

/// Binds a loopback listener for a ticketing emulator and writes its CA.
async fn ticket_listener(
    args: &TicketEmulatorArgs,
    what: &str,
) -> Result<(EmulatorTls, PathBuf, tokio::net::TcpListener), String> {
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: the {what} emulator listens on loopback only",
            args.listen
        ));
    }
    let tls = EmulatorTls::generate().map_err(|e| e.to_string())?;
    let ca = write_ca(&tls, args.ca_out.clone())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    Ok((tls, ca, listener))
}

async fn emulate_servicenow(args: TicketEmulatorArgs) -> Result<(), String> {
    use crate::emulator::servicenow;
    let (tls, ca, listener) = ticket_listener(&args, "ServiceNow").await?;
    let mut opts = servicenow::ServiceNowOptions {
        incidents: args.tickets,
        rate_limit: args.rate_limit.map(|limit| servicenow::RateLimit {
            limit,
            window_secs: args.rate_window_secs,
        }),
        faults: args.faults.settings(),
        ..Default::default()
    };
    if let Some(s) = args.secret {
        opts.password = s;
    }
    let mut emu = servicenow::start(listener, &tls, opts)
        .await
        .map_err(|e| e.to_string())?;
    emu.set_ca_pem_path(ca.display().to_string());
    println!(
        "{}",
        serde_json::to_string(&emu.info()).map_err(|e| e.to_string())?
    );
    crate::app::shutdown_signal().await;
    Ok(())
}

async fn emulate_jira(args: TicketEmulatorArgs) -> Result<(), String> {
    use crate::emulator::jira;
    let (tls, ca, listener) = ticket_listener(&args, "Jira").await?;
    let mut opts = jira::JiraOptions {
        issues: args.tickets,
        write_limit: args.rate_limit.map(|limit| jira::WriteLimit {
            limit,
            window_secs: args.rate_window_secs,
        }),
        faults: args.faults.settings(),
        ..Default::default()
    };
    if let Some(s) = args.secret {
        opts.api_token = s;
    }
    let mut emu = jira::start(listener, &tls, opts)
        .await
        .map_err(|e| e.to_string())?;
    emu.set_ca_pem_path(ca.display().to_string());
    println!(
        "{}",
        serde_json::to_string(&emu.info()).map_err(|e| e.to_string())?
    );
    crate::app::shutdown_signal().await;
    Ok(())
}

/// What `sessiongate emulate oidc` prints (one JSON line).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OidcEmulatorInfo {
    pub issuer: String,
    pub discovery_url: String,
    pub jwks_uri: String,
    pub token_url: String,
    pub tenant: String,
    pub audience: String,
    pub client_id: String,
    pub client_secret: String,
    pub users: Vec<String>,
    pub password: String,
    pub token_lifetime_secs: u32,
    pub ca_pem_path: String,
}

fn random_secret() -> String {
    use base64::Engine;
    use rand::Rng;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::rng().random::<[u8; 24]>())
}

async fn emulate_oidc(args: OidcArgs) -> Result<(), String> {
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: the OIDC emulator mints tokens and listens on loopback only",
            args.listen
        ));
    }
    let tls = EmulatorTls::generate().map_err(|e| e.to_string())?;
    let ca = write_ca(&tls, args.ca_out)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let issuer = crate::emulator::oidc::TestIssuer::start_on(listener, tls, &args.tenant)
        .await
        .map_err(|e| e.to_string())?;
    let client_secret = args.client_secret.unwrap_or_else(random_secret);
    let password = args.password.unwrap_or_else(random_secret);
    issuer.set_token_endpoint(crate::emulator::oidc::TokenEndpoint {
        audience: args.audience.clone(),
        client_id: args.client_id.clone(),
        client_secret: client_secret.clone(),
        client_roles: args.client_roles,
        users: args
            .users
            .iter()
            .map(|u| (u.clone(), password.clone(), args.user_roles.clone()))
            .collect(),
        lifetime_secs: args.token_lifetime_secs,
    });
    let info = OidcEmulatorInfo {
        issuer: issuer.issuer().to_string(),
        discovery_url: issuer.discovery_url(),
        jwks_uri: issuer.jwks_url(),
        token_url: issuer.token_url(),
        tenant: args.tenant,
        audience: args.audience,
        client_id: args.client_id,
        client_secret,
        users: args.users,
        password,
        token_lifetime_secs: args.token_lifetime_secs,
        ca_pem_path: ca.display().to_string(),
    };
    println!(
        "{}",
        serde_json::to_string(&info).map_err(|e| e.to_string())?
    );
    crate::app::shutdown_signal().await;
    Ok(())
}

async fn emulate_classic(args: EmulatorArgs) -> Result<(), String> {
    let tls = EmulatorTls::generate().map_err(|e| e.to_string())?;
    let ca = write_ca(&tls, args.ca_out)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let opts = wvd_classic::ClassicEmulatorOptions {
        hosts_per_pool: u32::try_from(args.hosts).map_err(|_| "--hosts is too large")?,
        sessions_per_host: u32::try_from(args.sessions_per_host)
            .map_err(|_| "--sessions-per-host is too large")?,
        faults: args.faults.settings(),
        ..wvd_classic::ClassicEmulatorOptions::default()
    };
    let emu = wvd_classic::start(listener, &tls, opts)
        .await
        .map_err(|e| e.to_string())?;
    let mut info = serde_json::to_value(emu.info()).map_err(|e| e.to_string())?;
    info["ca_pem_path"] = ca.display().to_string().into();
    println!("{info}");
    crate::app::shutdown_signal().await;
    Ok(())
}

async fn emulate_winrm(
    args: EmulatorArgs,
    flavour: crate::cli::WinrmFlavour,
    cbt_hardening: crate::cli::CbtHardeningArg,
    kerberos_keytab: Option<PathBuf>,
    kerberos_principal: Option<String>,
) -> Result<(), String> {
    let tls = EmulatorTls::generate().map_err(|e| e.to_string())?;
    let ca = write_ca(&tls, args.ca_out)?;
    let (flavour, prefix) = match flavour {
        crate::cli::WinrmFlavour::Rds => (winrm::Flavour::Rds, "rdsh"),
        crate::cli::WinrmFlavour::Multipoint => (winrm::Flavour::MultiPoint, "mps"),
    };
    let opts = winrm::WinRmEmulatorOptions {
        flavour,
        hosts: (1..=args.hosts.max(1))
            .map(|i| format!("{prefix}-{i:02}.contoso.test"))
            .collect(),
        sessions_per_host: u32::try_from(args.sessions_per_host)
            .map_err(|_| "--sessions-per-host is too large")?,
        kerberos_keytab,
        kerberos_principal,
        faults: args.faults.settings(),
        cbt_hardening: match cbt_hardening {
            crate::cli::CbtHardeningArg::None => winrm::CbtHardening::None,
            crate::cli::CbtHardeningArg::Relaxed => winrm::CbtHardening::Relaxed,
            crate::cli::CbtHardeningArg::Strict => winrm::CbtHardening::Strict,
        },
        ..winrm::WinRmEmulatorOptions::default()
    };
    let emu = winrm::start(&tls, opts).await.map_err(|e| e.to_string())?;
    let mut info = serde_json::to_value(emu.info()).map_err(|e| e.to_string())?;
    info["ca_pem_path"] = ca.display().to_string().into();
    println!("{info}");
    crate::app::shutdown_signal().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_escapes_and_refuses_missing_values() {
        let mut v = HashMap::new();
        v.insert("A", "C:\\x \"q\"".to_string());
        assert_eq!(
            render_template("a = \"@A@\"", &v).unwrap(),
            "a = \"C:\\\\x \\\"q\\\"\""
        );
        assert!(render_template("a = \"@B@\"", &v).is_err());
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(
            shell_word("/tmp/sg-demo/sessiongate.toml"),
            "/tmp/sg-demo/sessiongate.toml"
        );
        assert_eq!(shell_word("/tmp/my demo/x.toml"), "'/tmp/my demo/x.toml'");
        assert_eq!(shell_word("/tmp/it's"), "'/tmp/it'\\''s'");
    }
}
