//! Injection corpus: caller text (message title/body, the gateway account name) reaches the
//! emulated host as inert data, and the command line carries only the fixed template + base64.

use crate::support::winrm::setup;
use base64::Engine;
use sessiongate::domain::{HostName, SessionId};
use sessiongate::emulator::winrm::{EmuSession, Flavour};
use sessiongate::providers::winrm::scripts::{self, Template};
use sessiongate::providers::winrm::transport::STDIN_BOOTSTRAP;
use sessiongate::providers::winrm::{MultiPointProvider, RdsProvider};
use sessiongate::providers::{ProviderError, SessionProvider};

const H1: &str = "rdsh-001.contoso.test";

fn corpus() -> Vec<String> {
    let controls: String = (1u8..0x20).map(char::from).collect();
    vec![
        "plain".into(),
        "it's \"quoted\"".into(),
        "\u{2018}curly\u{2019} \u{201A}low\u{201B} quotes".into(),
        "'; Remove-Item -Recurse C:\\ ; '".into(),
        "a & b | c ; d".into(),
        "`backtick` `n `0".into(),
        "$(Stop-Computer -Force)".into(),
        "${env:PATH} $env:USERNAME @(1) @{a=1}".into(),
        "line1\r\nline2\nline3\r".into(),
        controls,
        "%%ID%% %%PROTECT%% %%TITLE%%".into(),
        "'@\n\"@\n#>".into(),
        "émoji 🙂 ünïcödé 中文".into(),
        String::new(),
        "x".repeat(64 * 1024),
        "\u{2019}".repeat(64 * 1024 / 3),
    ]
}

fn decode_utf16_b64(b64: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

/// The command line is `powershell.exe -NoLogo -NoProfile -NonInteractive -EncodedCommand <b64>`,
/// and the encoded script is one of our templates (or the fixed stdin bootstrap).
fn assert_fixed_command_line(cl: &str, via_stdin: bool) {
    let parts: Vec<&str> = cl.split(' ').collect();
    assert_eq!(parts.len(), 6, "{}", &cl[..cl.len().min(200)]);
    assert_eq!(
        &parts[..5],
        &[
            "powershell.exe",
            "-NoLogo",
            "-NoProfile",
            "-NonInteractive",
            "-EncodedCommand"
        ]
    );
    assert!(
        parts[5]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
    );
    let script = decode_utf16_b64(parts[5]);
    if via_stdin {
        assert_eq!(script, STDIN_BOOTSTRAP);
    } else {
        assert!(scripts::recognise(&script).is_some());
        assert!(script.is_ascii(), "free text never reaches the script text");
    }
}

#[tokio::test]
async fn message_text_arrives_inert() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    let host = HostName::parse(H1).unwrap();
    let corpus = corpus();
    for (i, s) in corpus.iter().enumerate() {
        let title = format!("T{i}:{s}");
        p.send_message(&host, SessionId(2), &title, s)
            .await
            .unwrap();
        let rec = st.scripts().pop().unwrap();
        assert_eq!(rec.template, Some(Template::RdsMessage));
        assert_eq!(rec.texts["TITLE"], title);
        assert_eq!(rec.texts["BODY"], *s);
        assert_eq!(rec.slots["ID"], "2");
        assert_fixed_command_line(&rec.command_line, rec.via_stdin);
        if s.len() >= 64 * 1024 / 3 {
            assert!(rec.via_stdin, "long scripts travel on stdin");
        }
    }
    let msgs = st.messages(H1);
    assert_eq!(msgs.len(), corpus.len());
    for (i, (m, s)) in msgs.iter().zip(corpus.iter()).enumerate() {
        assert_eq!(m.title, format!("T{i}:{s}"));
        assert_eq!(m.body, *s);
    }
}

#[tokio::test]
async fn user_names_arrive_inert() {
    for (i, s) in corpus().into_iter().enumerate() {
        if s.is_empty() {
            continue;
        }
        let env = setup(Flavour::Rds, 1, |_| {}).await;
        let st = env.emu.state();
        // The gateway account name is free text too; the protected session matches it exactly.
        let mut cfg = env.cfg.clone();
        cfg.gateway_account = Some(s.clone());
        st.add_session(H1, 30, EmuSession::user(&s, "", true));
        let p = RdsProvider::from_config("rds", &cfg).unwrap();
        let host = HostName::parse(H1).unwrap();
        assert!(
            matches!(
                p.logoff(&host, SessionId(30), true).await,
                Err(ProviderError::Protected(_))
            ),
            "corpus #{i}"
        );
        let rec = st.scripts().pop().unwrap();
        assert_eq!(rec.template, Some(Template::RdsLogoff));
        assert_eq!(rec.texts["PROTECT"], s);
        assert_fixed_command_line(&rec.command_line, rec.via_stdin);
        assert!(st.sessions(H1).contains_key(&30));
        // The listing returns the name byte for byte.
        let listed = p.get_session(&host, SessionId(30)).await.unwrap();
        assert_eq!(listed.ad_user.as_deref(), Some(s.as_str()));
    }
}

#[tokio::test]
async fn multipoint_protect_text_arrives_inert() {
    let env = setup(Flavour::MultiPoint, 1, |_| {}).await;
    let st = env.emu.state();
    let nasty = "CONTOSO\\o'brien`$(x)\u{2018};&|";
    let mut cfg = env.cfg.clone();
    cfg.gateway_account = Some(nasty.into());
    let p = MultiPointProvider::from_config("mp", &cfg).unwrap();
    let host = HostName::parse(H1).unwrap();
    let r = p.logoff_many(&host, &[SessionId(2), SessionId(3)]).await;
    assert!(r.iter().all(|(_, x)| x.is_ok()));
    let rec = st.scripts().pop().unwrap();
    assert_eq!(rec.template, Some(Template::MpClose));
    assert_eq!(rec.slots["IDS"], "2,3");
    assert_eq!(rec.texts["PROTECT"], nasty);
    assert_fixed_command_line(&rec.command_line, false);
}
