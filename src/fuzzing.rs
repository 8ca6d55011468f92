//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; also compiled for the unit
//! tests, which run every committed corpus file through them). Each takes the untrusted bytes
//! one parser receives and runs what sessiongate does with them; none may panic, whatever the
//! input. Not a stable API.

use crate::providers::winrm::{ntlm, soap, xml};

/// A WS-Man (SOAP) reply as the WinRM transport reads it: the XML parser, then every reading
/// of the envelope (fault, action, shell and command ids, receive streams, selectors), then the
/// script result parser on the decoded stdout.
pub fn winrm_reply(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(env) = xml::parse(text) else {
        return;
    };
    if let Some(f) = soap::parse_fault(&env) {
        let _ = (f.is_timed_out(), f.is_access_denied());
    }
    let _ = soap::action_of(&env);
    let _ = soap::shell_id_of_create(&env);
    let _ = soap::command_id_of(&env);
    let _ = soap::selector(&env, "ShellId");
    let _ = env.deep_text();
    let mut all = Vec::new();
    env.find_all("Selector", &mut all);
    if let Some(t) = env.find("OperationTimeout") {
        let _ = soap::parse_xs_duration(t.trimmed_text());
    }
    if let Ok(chunk) = soap::parse_receive(&env) {
        let out = String::from_utf8_lossy(&chunk.stdout);
        let _ = crate::providers::winrm::scripts::parse_result(&out);
    }
}

/// An NTLM exchange: the bytes as a CHALLENGE the client answers (and the emulator's acceptor
/// then checks that answer), and the same bytes as an AUTHENTICATE the emulator's acceptor
/// receives for a fixed NEGOTIATE/CHALLENGE.
pub fn ntlm_tokens(data: &[u8]) {
    use crate::emulator::winrm::ntlm_acceptor as acc;
    let negotiate = ntlm::negotiate();
    if let Ok(ch) = ntlm::parse_challenge(data) {
        let auth = ntlm::authenticate("alice", "CORP", "pw", &ch, [7; 8], Some(&[1; 16]));
        let _ = acc::verify_authenticate(&auth, &negotiate, &ch.raw, "CORP\\alice", "pw");
        let _ = acc::channel_binding_of(&auth);
    }
    let info = ntlm::av_pairs(&[(2, ntlm::utf16le("CORP")), (1, ntlm::utf16le("HOST"))]);
    let challenge = acc::challenge_message([3; 8], &info, "CORP");
    let _ = acc::is_negotiate(data);
    let _ = acc::verify_authenticate(data, &negotiate, &challenge, "CORP\\alice", "pw");
    let _ = acc::channel_binding_of(data);
}

/// A `WWW-Authenticate` value carrying a Negotiate (SPNEGO/Kerberos) or NTLM token, as the
/// transport extracts it. The Kerberos/SPNEGO token itself is handed to the system's GSS-API
/// library (MIT krb5), which sessiongate does not parse; an extracted token that is NTLM goes
/// to [`ntlm_tokens`].
pub fn auth_header(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(token) = crate::providers::winrm::ntlm_http::header_token(text) {
        ntlm_tokens(&token);
    }
}

/// A bearer token as the JWT verifier reads it before any key is consulted (header, `kid`,
/// `iss` hint).
pub fn jwt_header(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        crate::auth::fuzz_token_header(text);
    }
}

/// An ARM answer body (list page, resource, error) as the AVD adapter maps it.
pub fn arm_json(data: &[u8]) {
    crate::providers::avd::fuzz_arm_body(data);
}

/// A WVD classic broker answer body (session list, host list, error) as the adapter maps it.
pub fn classic_json(data: &[u8]) {
    crate::providers::wvd_classic::fuzz_classic_body(data);
}

/// A request's path parameters (first line, `/`-separated: pool, host, session) and body (the
/// rest) as the extractors read them.
pub fn request(data: &[u8]) {
    use crate::api::{fleet, handlers};
    use crate::domain::{HostName, PoolName, SessionId};
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut parts = head.split('/');
    let _ = parts.next().map(PoolName::parse);
    let _ = parts.next().map(HostName::parse);
    let _ = parts.next().map(SessionId::parse);
    let _ = serde_json::from_slice::<handlers::LogoffBody>(body);
    let _ = serde_json::from_slice::<handlers::DisconnectBody>(body);
    let _ = serde_json::from_slice::<handlers::MessageBody>(body);
    let _ = serde_json::from_slice::<fleet::BulkBody>(body);
    let _ = serde_json::from_slice::<fleet::BulkMessageBody>(body);
}

/// A webhook delivery as the receiver reads it, before and after authentication: line 1 the
/// `webhook-id`, line 2 `webhook-timestamp`, line 3 `webhook-signature` (Standard Webhooks),
/// line 4 `X-Hub-Signature`, the rest the raw body. Both signature checks run on it; then the
/// body (as if authenticated) goes through a mapping with every field, guards included.
pub fn webhook(data: &[u8]) {
    use crate::webhooks::signature::{hub_verify, standard_verify};
    static MAPPING: std::sync::LazyLock<Option<crate::webhooks::mapping::Compiled>> =
        std::sync::LazyLock::new(|| {
            let cfg: crate::webhooks::mapping::MappingConfig = toml::from_str(
                r#"
action = "/action"
user = "/issue/fields/reporter/emailAddress"
pool = "/pool"
host = "/host"
session_id = "/session"
force = "/force"
reason = "/reason"
ticket = "/issue/key"
ticket_id = "/issue/id"
allowed_actions = ["logoff", "disconnect"]
allowed_pools = ["hp1"]
require = [{ pointer = "/approval", equals = "approved" }]
"#,
            )
            .ok()?;
            cfg.compile(&crate::config::Key::root("fuzz"), &["hp1".into()])
                .ok()
        });
    let mut lines = data.splitn(5, |b| *b == b'\n');
    let mut line = || lines.next().map(String::from_utf8_lossy);
    let (id, ts, sig, hub) = (line(), line(), line(), line());
    let body = data
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(3)
        .map_or(&[][..], |(i, _)| &data[i + 1..]);
    let key = b"fuzzing-key-0123456789abcdef".to_vec();
    let _ = standard_verify(
        std::slice::from_ref(&key),
        id.as_deref(),
        ts.as_deref(),
        sig.as_deref(),
        body,
        1_700_000_000,
        300,
    );
    let _ = hub_verify(std::slice::from_ref(&key), hub.as_deref(), body);
    if let (Some(m), Ok(v)) = (
        MAPPING.as_ref(),
        serde_json::from_slice::<serde_json::Value>(body),
    ) {
        let _ = m.apply(&v);
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` names its binaries and corpus directories.
pub const TARGETS: [(&str, Target); 8] = [
    ("winrm_reply", winrm_reply),
    ("ntlm_tokens", ntlm_tokens),
    ("auth_header", auth_header),
    ("jwt_header", jwt_header),
    ("arm_json", arm_json),
    ("classic_json", classic_json),
    ("request", request),
    ("webhook", webhook),
];

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// `name version` of every package in a `Cargo.lock`.
    fn locked(path: &str) -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut out = std::collections::BTreeSet::new();
        let mut name = None;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_string());
            } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
                out.insert(format!("{n} {}", v.trim_matches('"')));
            }
        }
        out
    }

    /// `fuzz/` builds with `--locked` (CI's last step): its lock file must pin every package
    /// the gateway's lock pins, at the same version, or the CI fuzz build stops. Only the
    /// gateway's dev-dependencies may be missing. After `cargo update` or a new dependency, run
    /// `cp Cargo.lock fuzz/ && (cd fuzz && cargo metadata --format-version 1 >/dev/null)`.
    #[test]
    fn the_fuzz_lock_file_follows_the_main_one() {
        let root = env!("CARGO_MANIFEST_DIR");
        let main = locked(&format!("{root}/Cargo.lock"));
        let fuzz = locked(&format!("{root}/fuzz/Cargo.lock"));
        let dev_only = ["fastrand ", "tempfile ", "rustix ", "linux-raw-sys "];
        let missing: Vec<&String> = main
            .difference(&fuzz)
            .filter(|p| !dev_only.iter().any(|d| p.starts_with(d)))
            .filter(|p| !p.starts_with("sessiongate "))
            .collect();
        assert!(
            missing.is_empty(),
            "fuzz/Cargo.lock lacks {missing:?}: cp Cargo.lock fuzz/ && (cd fuzz && cargo metadata --format-version 1 >/dev/null)"
        );
    }

    /// Every committed corpus file (seeds and inputs that once crashed) goes through its
    /// target: the regression test for fuzzer findings, run by the normal test command.
    #[test]
    fn committed_fuzz_corpora_run_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut ran = 0;
        for (name, f) in TARGETS {
            for dir in [
                root.join("corpus").join(name),
                root.join("regressions").join(name),
            ] {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in entries {
                    let path = e.expect("corpus entry").path();
                    let data = std::fs::read(&path).expect("corpus file");
                    f(&data);
                    ran += 1;
                }
            }
        }
        assert!(
            ran >= TARGETS.len(),
            "expected seed corpora under fuzz/corpus/<target>, ran {ran} inputs"
        );
    }
}
