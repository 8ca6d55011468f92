//! NTLM channel binding (CBT, "Extended Protection for Authentication") over loopback HTTPS:
//! sessiongate's NTLM client binds its sign-in to the host's TLS certificate, and the emulated
//! host enforces `CbtHardeningLevel` like Windows (`none` / `relaxed` / `strict`).

use crate::support::winrm::{Env, setup};
use base64::Engine;
use sessiongate::emulator::common::EmulatorTls;
use sessiongate::emulator::winrm::{CbtHardening, Flavour};
use sessiongate::providers::winrm::{RdsProvider, WinRmAuth, cbt, ntlm, ntlm_http, soap};
use sessiongate::providers::{ProviderError, SessionFilter, SessionProvider};
use std::time::Duration;

async fn ntlm_env(hosts: usize, level: CbtHardening) -> Env {
    let mut env = setup(Flavour::Rds, hosts, |o| o.cbt_hardening = level).await;
    env.cfg.auth = WinRmAuth::Ntlm;
    env.cfg.credential.username = format!("CONTOSO\\{}", env.emu.info().username);
    env
}

fn host_addr(endpoint: &str) -> (String, u16) {
    let u = url::Url::parse(endpoint).unwrap();
    (u.host_str().unwrap().to_string(), u.port().unwrap())
}

/// What the hand-built client puts into `MsvAvChannelBindings`.
enum Binding {
    /// No AV pair (a client without channel-binding support).
    Absent,
    /// The hash of this application data.
    Of(Vec<u8>),
    /// The binding of the certificate the server presented on this connection.
    FromServer,
}

fn create_envelope(endpoint: &str) -> String {
    soap::request(
        &soap::RequestHeader {
            to: endpoint,
            action: soap::ACTION_CREATE,
            message_id: &format!("uuid:{}", uuid::Uuid::new_v4()),
            operation_timeout: Duration::from_secs(5),
            shell_id: None,
            options: &[],
        },
        &soap::create_shell_body(),
    )
}

/// One NTLM sign-in by hand on a fresh TLS connection (NEGOTIATE, CHALLENGE, AUTHENTICATE
/// carrying a Create envelope); returns the HTTP status of the AUTHENTICATE leg.
async fn sign_in(env: &Env, endpoint: &str, binding: Binding) -> u16 {
    let ca = std::fs::read_to_string(&env.ca_path).unwrap();
    let connector = tokio_rustls::TlsConnector::from(ntlm_http::tls_config(Some(&ca)).unwrap());
    let (host, port) = host_addr(endpoint);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from(host.clone()).unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let b64 = base64::engine::general_purpose::STANDARD;
    let req = |auth: Vec<u8>| {
        hyper::Request::post("/wsman")
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/soap+xml;charset=UTF-8")
            .header("authorization", format!("Negotiate {}", b64.encode(auth)))
            .body(create_envelope(endpoint))
            .unwrap()
    };
    let resp = sender.send_request(req(ntlm::negotiate())).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Negotiate "))
        .map(|t| b64.decode(t).unwrap())
        .expect("NTLM challenge");
    let _ = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 20).await;
    let ch = ntlm::parse_challenge(&challenge).unwrap();
    let hash = match binding {
        Binding::Absent => None,
        Binding::Of(app) => Some(cbt::ntlm_channel_binding_hash(&app)),
        Binding::FromServer => Some(cbt::ntlm_channel_binding_hash(
            &cbt::application_data(&server_cert).unwrap(),
        )),
    };
    let info = env.emu.info();
    let msg = ntlm::authenticate(
        &info.username,
        "CONTOSO",
        &info.password,
        &ch,
        [3; 8],
        hash.as_ref(),
    );
    sender.ready().await.unwrap();
    let resp = sender.send_request(req(msg)).await.unwrap();
    resp.status().as_u16()
}

/// Application data of some other certificate (what a relay in the middle would present).
fn other_certificate_binding() -> Vec<u8> {
    let other = EmulatorTls::generate().unwrap();
    cbt::application_data(other.server_cert_der()).unwrap()
}

#[tokio::test]
async fn sessiongate_client_signs_in_to_a_strict_host() {
    let env = ntlm_env(2, CbtHardening::Strict).await;
    let st = env.emu.state();
    assert!(st.expected_channel_binding().is_some());
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 6, "{:?}", all.unreachable_hosts);
    assert_eq!(st.cbt_refusals(), 0);
    assert_eq!(st.shells_created(), 2);
}

/// Every pooled connection is bound, resumed TLS sessions included (rustls reports the
/// certificate of the session being resumed).
#[tokio::test]
async fn every_pooled_connection_carries_the_binding() {
    let mut env = ntlm_env(1, CbtHardening::Strict).await;
    env.cfg.max_concurrency_per_host = 4;
    let st = env.emu.state();
    let host = env.emu.info().hosts[0].clone();
    let hn = sessiongate::domain::HostName::parse(&host.name).unwrap();
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    let lists = futures::future::join_all((0..4).map(|_| p.list_host_sessions(&hn))).await;
    for l in lists {
        assert_eq!(l.unwrap().len(), 3);
    }
    assert!(st.ntlm_sign_ins() >= 2, "{} sign-ins", st.ntlm_sign_ins());
    assert_eq!(st.cbt_refusals(), 0);

    // The premise: a resumed session still exposes the server certificate.
    let ca = std::fs::read_to_string(&env.ca_path).unwrap();
    let connector = tokio_rustls::TlsConnector::from(ntlm_http::tls_config(Some(&ca)).unwrap());
    let (h, port) = host_addr(&host.endpoint);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect((h.as_str(), port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(h.clone()).unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        // TLS 1.3 tickets arrive after the handshake: let the client read them.
        tokio::io::AsyncWriteExt::write_all(&mut tls, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
        let conn = tls.get_ref().1;
        kinds.push(conn.handshake_kind());
        let cert = conn.peer_certificates().expect("peer certificates")[0].to_vec();
        assert_eq!(
            cbt::ntlm_channel_binding_hash(&cbt::application_data(&cert).unwrap()),
            st.expected_channel_binding().unwrap()
        );
    }
    assert_eq!(kinds[1], Some(rustls::HandshakeKind::Resumed), "{kinds:?}");
}

#[tokio::test]
async fn strict_requires_a_binding_relaxed_and_none_do_not() {
    let env = ntlm_env(1, CbtHardening::Strict).await;
    let st = env.emu.state();
    let host = env.emu.info().hosts[0].clone();
    let ep = host.endpoint.as_str();

    assert_eq!(sign_in(&env, ep, Binding::Absent).await, 401);
    assert_eq!(st.cbt_refusals(), 1);
    assert_eq!(st.shells_created(), 0, "a refused sign-in runs nothing");
    assert_eq!(sign_in(&env, ep, Binding::FromServer).await, 200);
    assert_eq!(st.shells_created(), 1);

    st.set_host_cbt_hardening(&host.name, CbtHardening::Relaxed);
    assert_eq!(st.cbt_hardening(&host.name), Some(CbtHardening::Relaxed));
    assert_eq!(sign_in(&env, ep, Binding::Absent).await, 200);
    st.set_cbt_hardening(CbtHardening::None);
    assert_eq!(sign_in(&env, ep, Binding::Absent).await, 200);
    assert_eq!(st.cbt_refusals(), 1);
    assert_eq!(st.shells_created(), 3);
}

#[tokio::test]
async fn wrong_binding_is_refused_unless_bindings_are_ignored() {
    let env = ntlm_env(1, CbtHardening::Relaxed).await;
    let st = env.emu.state();
    let ep = env.emu.info().hosts[0].endpoint.clone();
    let wrong = other_certificate_binding();

    for (level, status) in [
        (CbtHardening::Relaxed, 401),
        (CbtHardening::Strict, 401),
        (CbtHardening::None, 200),
    ] {
        st.set_cbt_hardening(level);
        assert_eq!(
            sign_in(&env, &ep, Binding::Of(wrong.clone())).await,
            status,
            "{level:?}"
        );
        // The right binding passes at every level.
        assert_eq!(
            sign_in(&env, &ep, Binding::FromServer).await,
            200,
            "{level:?}"
        );
    }
    assert_eq!(st.cbt_refusals(), 2);
}

/// Serves `relay_tls` on a loopback port and pipes every connection to `upstream` over a new
/// TLS connection: a man in the middle holding a certificate the client trusts.
async fn start_relay(relay_tls: EmulatorTls, upstream: (String, u16), upstream_ca: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connector =
        tokio_rustls::TlsConnector::from(ntlm_http::tls_config(Some(&upstream_ca)).unwrap());
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let acceptor = relay_tls.acceptor();
            let connector = connector.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut down) = acceptor.accept(down).await else {
                    return;
                };
                let Ok(tcp) =
                    tokio::net::TcpStream::connect((upstream.0.as_str(), upstream.1)).await
                else {
                    return;
                };
                let name = rustls::pki_types::ServerName::try_from(upstream.0.clone()).unwrap();
                let Ok(mut up) = connector.connect(name, tcp).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_tls_terminating_relay_cannot_reuse_the_sign_in() {
    let mut env = ntlm_env(1, CbtHardening::Relaxed).await;
    let st = env.emu.state();
    let host = env.emu.info().hosts[0].clone();
    let emulator_ca = std::fs::read_to_string(&env.ca_path).unwrap();
    let relay_tls = EmulatorTls::generate().unwrap();
    // The client trusts both CAs, so only channel binding can tell the relay apart.
    let both = env.dir.path().join("both.pem");
    std::fs::write(&both, format!("{emulator_ca}{}", relay_tls.ca_pem())).unwrap();
    env.cfg.ca_bundle = Some(both);
    let port = start_relay(relay_tls, host_addr(&host.endpoint), emulator_ca).await;
    env.cfg.hosts[0].endpoint = Some(format!("https://127.0.0.1:{port}/wsman"));
    let hn = sessiongate::domain::HostName::parse(&host.name).unwrap();

    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    assert!(matches!(
        p.list_host_sessions(&hn).await,
        Err(ProviderError::UpstreamAuth(_))
    ));
    assert_eq!(st.cbt_refusals(), 1);
    assert_eq!(st.shells_created(), 0);

    // A host that ignores channel bindings lets the relayed sign-in through.
    st.set_cbt_hardening(CbtHardening::None);
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    assert_eq!(p.list_host_sessions(&hn).await.unwrap().len(), 3);
    assert_eq!(st.cbt_refusals(), 1);
}
