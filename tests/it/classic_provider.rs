//! The WVD classic adapter against the in-tree broker emulator over loopback HTTPS.

use crate::support::classic::{Env, POOL, host};
use sessiongate::domain::{ActionKind, SessionId, SessionState};
use sessiongate::emulator::wvd_classic::{ClassicEmulatorOptions, EnumStyle};
use sessiongate::providers::wvd_classic::ClassicCredentialConfig;
use sessiongate::providers::{ActionEffect, ProviderError, SessionFilter};
use std::time::{Duration, Instant};

const SH1: &str = "classic-hp1-sh1.contoso.com";
const SH2: &str = "classic-hp1-sh2.contoso.com";

fn opts(hosts: u32, sessions: u32) -> ClassicEmulatorOptions {
    ClassicEmulatorOptions {
        hosts_per_pool: hosts,
        sessions_per_host: sessions,
        ..ClassicEmulatorOptions::default()
    }
}

#[tokio::test]
async fn lists_every_session_across_pages_following_next() {
    let env = Env::start(opts(3, 2)).await;
    let st = env.state();
    st.add_session(POOL, SH1, "late@contoso.com").unwrap();
    let mut cfg = env.config();
    cfg.page_size = 2;
    let p = env.provider_with(&cfg);

    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 7);
    assert_eq!(
        st.calls("list_sessions"),
        4,
        "7 sessions at 2 per page = 4 pages"
    );
    let mut keys: Vec<_> = all
        .sessions
        .iter()
        .map(|s| (s.host.clone(), s.id))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 7, "no page read twice");
    assert!(all.sessions.iter().all(|s| s.pool == "legacy"));
    let late = all
        .sessions
        .iter()
        .find(|s| s.user.as_deref() == Some("late@contoso.com"))
        .unwrap();
    assert_eq!(late.host, SH1);
    assert_eq!(
        late.id,
        SessionId(4),
        "lowest free id on the host after 2 and 3"
    );
    assert_eq!(late.state, SessionState::Active);
    assert_eq!(late.ad_user.as_deref(), Some("CONTOSO\\late"));
    assert!(late.created_at.is_some());

    // The token was fetched once and cached across the four pages.
    assert_eq!(st.issuer().issued_count(), 1);

    let hosts = p.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 3);
    assert_eq!(st.calls("list_hosts"), 2, "3 hosts at 2 per page = 2 pages");
    let h1 = hosts.iter().find(|h| h.name == SH1).unwrap();
    assert_eq!(h1.session_count, 3);
    assert_eq!(h1.status, "available");
    assert!(!h1.drain);
}

#[tokio::test]
async fn host_sessions_and_single_session_are_filtered_from_the_pool_list() {
    let env = Env::default().await;
    let p = env.provider();
    let on1 = p
        .list_host_sessions(&host(&SH1.to_uppercase()))
        .await
        .unwrap();
    assert_eq!(on1.len(), 2);
    assert!(on1.iter().all(|s| s.host == SH1));
    let s = p.get_session(&host(SH2), SessionId(3)).await.unwrap();
    assert_eq!(s.host, SH2);
    assert_eq!(s.id, SessionId(3));
    assert!(matches!(
        p.get_session(&host(SH2), SessionId(9)).await,
        Err(ProviderError::SessionNotFound)
    ));
}

#[tokio::test]
async fn enums_as_integers_are_understood() {
    let env = Env::start(ClassicEmulatorOptions {
        enum_style: EnumStyle::Integers,
        ..ClassicEmulatorOptions::default()
    })
    .await;
    let st = env.state();
    assert!(st.set_session_state(POOL, SH1, 3, "Disconnected"));
    st.set_host_reachable(POOL, SH2, false);
    let p = env.provider();
    let s = p.get_session(&host(SH1), SessionId(3)).await.unwrap();
    assert_eq!(s.state, SessionState::Disconnected);
    assert_eq!(s.raw_state, "Disconnected");
    assert_eq!(s.application_type.as_deref(), Some("Desktop"));
    let s = p.get_session(&host(SH1), SessionId(2)).await.unwrap();
    assert_eq!(s.state, SessionState::Active);
    let hosts = p.list_hosts().await.unwrap();
    let h2 = hosts.iter().find(|h| h.name == SH2).unwrap();
    assert_eq!(h2.raw_status, "Unavailable");
    assert_eq!(h2.status, "unavailable");

    // The wire really carried integers.
    let body: serde_json::Value = env
        .http()
        .get(format!("{}/Sessions", env.pool_url()))
        .bearer_auth(env.token().await)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body[0]["sessionState"].is_u64(), "{body}");
}

#[tokio::test]
async fn logoff_then_logoff_again_is_already_gone_and_the_id_is_reused() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    assert_eq!(
        p.logoff(&host(SH1), SessionId(2), false).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(st.session_state(POOL, SH1, 2), None);
    assert_eq!(
        p.logoff(&host(SH1), SessionId(2), false).await.unwrap(),
        ActionEffect::AlreadyGone
    );
    assert_eq!(st.calls("logoff-user"), 2);
    assert_eq!(st.add_session(POOL, SH1, "again@contoso.com"), Some(2));
}

#[tokio::test]
async fn ghost_sessions_need_force() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();

    // A session left behind on a host that is gone from the broker.
    let gone = "gone-sh9.contoso.com";
    let id = st
        .add_ghost_session(POOL, gone, "ghost@contoso.com")
        .unwrap();
    let listed = p.list_host_sessions(&host(gone)).await.unwrap();
    assert_eq!(listed.len(), 1, "ghosts are still listed");
    match p.logoff(&host(gone), SessionId(id), false).await {
        Err(ProviderError::HostUnreachable(m)) => assert!(m.contains(gone), "{m}"),
        other => panic!("expected HostUnreachable, got {other:?}"),
    }
    assert!(st.session_state(POOL, gone, id).is_some());
    assert_eq!(
        p.logoff(&host(gone), SessionId(id), true).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(st.session_state(POOL, gone, id), None);
    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert!(all.sessions.iter().all(|s| s.host != gone));

    // A session on a host that stopped answering: same cure; a second logoff finds it gone.
    st.set_host_reachable(POOL, SH2, false);
    assert!(matches!(
        p.logoff(&host(SH2), SessionId(2), false).await,
        Err(ProviderError::HostUnreachable(_))
    ));
    assert!(matches!(
        p.disconnect(&host(SH2), SessionId(2)).await,
        Err(ProviderError::HostUnreachable(_))
    ));
    assert_eq!(
        p.logoff(&host(SH2), SessionId(2), true).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(
        p.logoff(&host(SH2), SessionId(2), true).await.unwrap(),
        ActionEffect::AlreadyGone
    );
}

#[tokio::test]
async fn disconnect_changes_state_and_keeps_the_session() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    assert_eq!(
        p.disconnect(&host(SH1), SessionId(3)).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(
        st.session_state(POOL, SH1, 3).as_deref(),
        Some("Disconnected")
    );
    let s = p.get_session(&host(SH1), SessionId(3)).await.unwrap();
    assert_eq!(s.state, SessionState::Disconnected);
    // Idempotent.
    assert_eq!(
        p.disconnect(&host(SH1), SessionId(3)).await.unwrap(),
        ActionEffect::Done
    );
    assert!(matches!(
        p.disconnect(&host(SH1), SessionId(42)).await,
        Err(ProviderError::SessionNotFound)
    ));
}

#[tokio::test]
async fn messages_arrive_intact_whatever_they_contain() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    let corpus = [
        ("Maintenance & reboot", "a=b&c=d"),
        ("#1 100% sure", "plus+sign and %20 literal"),
        (
            "  leading and trailing spaces  ",
            "line one\nline two\r\nline three\ttab",
        ),
        (
            "Ünïcödé — 日本語 🚀",
            "émoji 😀 and quotes \"' <tag> / \\ ?x=y;z",
        ),
        ("", "empty title"),
    ];
    for (title, body) in corpus {
        p.send_message(&host(SH1), SessionId(2), title, body)
            .await
            .unwrap();
    }
    let got = st.messages();
    assert_eq!(got.len(), corpus.len());
    for (m, (title, body)) in got.iter().zip(corpus) {
        assert_eq!(m.title, title);
        assert_eq!(m.body, body);
        assert_eq!(m.host, SH1);
        assert_eq!(m.session_id, 2);
    }
    assert!(matches!(
        p.send_message(&host(SH1), SessionId(77), "t", "b").await,
        Err(ProviderError::SessionNotFound)
    ));
}

#[tokio::test]
async fn unknown_host_pool_tenant_and_tenant_group() {
    let env = Env::default().await;
    let p = env.provider();
    let nohost = host("nope.contoso.com");
    assert!(matches!(
        p.list_host_sessions(&nohost).await,
        Err(ProviderError::HostNotFound)
    ));
    assert!(matches!(
        p.get_session(&nohost, SessionId(2)).await,
        Err(ProviderError::HostNotFound)
    ));
    assert!(matches!(
        p.logoff(&nohost, SessionId(2), false).await,
        Err(ProviderError::HostNotFound)
    ));
    assert!(matches!(
        p.send_message(&nohost, SessionId(2), "t", "b").await,
        Err(ProviderError::HostNotFound)
    ));

    let info = env.emu.info();
    let mut cfg = env.config_with(&info.client_id, &info.client_secret, "no-such-pool");
    assert!(matches!(
        env.provider_with(&cfg)
            .list_sessions(&SessionFilter::default())
            .await,
        Err(ProviderError::PoolNotFound)
    ));
    cfg.host_pool = POOL.into();
    cfg.tenant = "fabrikam".into();
    assert!(matches!(
        env.provider_with(&cfg).list_hosts().await,
        Err(ProviderError::PoolNotFound)
    ));
    cfg.tenant = info.rds_tenant.clone();
    cfg.tenant_group = "Other Group".into();
    assert!(matches!(
        env.provider_with(&cfg)
            .logoff(&host(SH1), SessionId(2), false)
            .await,
        Err(ProviderError::PoolNotFound)
    ));
}

#[tokio::test]
async fn bad_secret_is_upstream_auth_and_missing_role_is_forbidden() {
    let env = Env::default().await;
    let info = env.emu.info();
    let bad = env.provider_with(&env.config_with(&info.client_id, "wrong-secret", POOL));
    match bad.list_sessions(&SessionFilter::default()).await {
        Err(ProviderError::UpstreamAuth(m)) => {
            assert!(!m.contains("wrong-secret"), "secret leaked: {m}");
        }
        other => panic!("expected UpstreamAuth, got {other:?}"),
    }
    assert_eq!(
        env.state().calls("list_sessions"),
        0,
        "no broker call without a token"
    );

    let norole = env.provider_with(&env.config_with(
        &info.no_role_client_id,
        &info.no_role_client_secret,
        POOL,
    ));
    assert!(matches!(
        norole.list_sessions(&SessionFilter::default()).await,
        Err(ProviderError::UpstreamForbidden(_))
    ));
    assert!(matches!(
        norole.logoff(&host(SH1), SessionId(2), false).await,
        Err(ProviderError::UpstreamForbidden(_))
    ));
    assert_eq!(
        env.state().session_state(POOL, SH1, 2).as_deref(),
        Some("Active")
    );

    // A token the broker stops accepting (revoked, key rollover) is renewed once.
    let p = env.provider();
    p.list_hosts().await.unwrap();
    let issued = env.state().issuer().issued_count();
    env.state().issuer().revoke_all();
    p.list_hosts().await.unwrap();
    assert_eq!(env.state().issuer().issued_count(), issued + 1);
    assert_eq!(env.state().calls("list_hosts"), 3);

    // A broker that keeps refusing tokens: one renewal, then UpstreamAuth.
    env.state().set_reject_tokens(true);
    assert!(matches!(
        p.logoff(&host(SH1), SessionId(2), false).await,
        Err(ProviderError::UpstreamAuth(_))
    ));
    assert_eq!(
        env.state().calls("logoff-user"),
        1 + 2,
        "the 403 above, then one try and one retry after renewal"
    );
    assert_eq!(
        env.state().session_state(POOL, SH1, 2).as_deref(),
        Some("Active")
    );
}

#[tokio::test]
async fn throttling_is_waited_out_within_budget() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    p.list_hosts().await.unwrap();
    st.throttle_next(2, 1);
    let t0 = Instant::now();
    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 4);
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(st.calls("list_sessions"), 3);

    // A throttled message was refused before it ran: re-sending it delivers it exactly once.
    st.throttle_next(1, 1);
    p.send_message(&host(SH1), SessionId(2), "t", "b")
        .await
        .unwrap();
    assert_eq!(st.calls("send-message-user"), 2);
    assert_eq!(st.messages().len(), 1);
}

#[tokio::test]
async fn throttling_beyond_budget_is_reported_with_retry_after() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    st.throttle_next(100, 120);
    let t0 = Instant::now();
    match p.logoff(&host(SH1), SessionId(2), false).await {
        Err(ProviderError::Throttled { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(120));
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "did not wait past the budget"
    );
    assert_eq!(st.calls("logoff-user"), 1);

    // Token-bucket throttling: a burst larger than the bucket still completes (waits ~1s each).
    st.throttle_next(0, 1);
    st.set_throttling(Some((2, 1)));
    for _ in 0..4 {
        p.list_hosts().await.unwrap();
    }
    assert!(
        st.calls("list_hosts") > 4,
        "some calls were throttled and retried"
    );
    st.set_throttling(None);
}

#[tokio::test]
async fn server_errors_are_retried_for_reads_only() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    p.list_hosts().await.unwrap();

    st.fail_next(2);
    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 4);
    assert_eq!(st.calls("list_sessions"), 3);

    st.fail_next(10);
    match p.list_sessions(&SessionFilter::default()).await {
        Err(ProviderError::Upstream { status, .. }) => assert_eq!(status, Some(503)),
        other => panic!("expected Upstream 503, got {other:?}"),
    }
    assert_eq!(st.calls("list_sessions"), 3 + 4, "first try + 3 retries");
    st.fail_next(0);

    // A message that may have arrived is never re-sent.
    st.fail_next(1);
    assert!(matches!(
        p.send_message(&host(SH1), SessionId(2), "t", "b").await,
        Err(ProviderError::Upstream {
            status: Some(503),
            ..
        })
    ));
    assert_eq!(st.calls("send-message-user"), 1);
    // Nor is a logoff.
    st.fail_next(1);
    assert!(p.logoff(&host(SH1), SessionId(2), false).await.is_err());
    assert_eq!(st.calls("logoff-user"), 1);
}

#[tokio::test]
async fn operation_timeout_maps_to_timeout() {
    let env = Env::default().await;
    let st = env.state();
    let p = env.provider();
    st.set_host_hang(POOL, SH1, true);
    assert!(matches!(
        p.disconnect(&host(SH1), SessionId(2)).await,
        Err(ProviderError::Timeout(_))
    ));
    assert_eq!(st.calls("disconnect-user"), 1, "actions are not retried");
}

#[tokio::test]
async fn capabilities_say_classic() {
    let env = Env::default().await;
    let p = env.provider();
    let c = p.capabilities();
    assert!(c.classic);
    assert!(c.force_logoff);
    assert_eq!(
        c.actions,
        vec![
            ActionKind::Logoff,
            ActionKind::Disconnect,
            ActionKind::Message
        ]
    );
    assert!(c.service.contains("classic") && c.service.contains("retired"));
    assert_eq!(p.kind().as_str(), "wvd-classic");
}

#[tokio::test]
async fn build_errors_name_the_key() {
    let env = Env::default().await;
    let mut cfg = env.config();
    cfg.broker_url = "http://insecure.example".into();
    let Err(e) = sessiongate::providers::wvd_classic::build("legacy", &cfg) else {
        panic!("build should fail")
    };
    assert!(e.to_string().contains("pools[legacy].broker_url"), "{e}");
    let mut cfg = env.config();
    cfg.credential = sessiongate::providers::wvd_classic::ClassicCredentialConfig::ClientSecret {
        tenant_id: "t".into(),
        client_id: "c".into(),
        secret_env: Some("SESSIONGATE_TEST_SURELY_UNSET_VAR".into()),
        secret_file: None,
    };
    let Err(e) = sessiongate::providers::wvd_classic::build("legacy", &cfg) else {
        panic!("build should fail")
    };
    assert!(e.to_string().contains("secret_env"), "{e}");
    let mut cfg = env.config();
    cfg.ca_bundle = Some(env.dir.path().join("missing.pem"));
    let Err(e) = sessiongate::providers::wvd_classic::build("legacy", &cfg) else {
        panic!("build should fail")
    };
    assert!(e.to_string().contains("pools[legacy].ca_bundle"), "{e}");
}

fn rsa_cert(cn: &str) -> (rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![cn.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (key, cert)
}

#[tokio::test]
async fn certificate_credential_signs_in_with_a_client_assertion() {
    let env = Env::default().await;
    let info = env.emu.info();
    let (key, cert) = rsa_cert("sessiongate-classic");
    env.state()
        .trust_certificate(&info.client_id, cert.der(), &key.public_key_pem());
    let path = env.dir.path().join("sp.pem");
    std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let mut cfg = env.config();
    cfg.credential = ClassicCredentialConfig::ClientCertificate {
        tenant_id: info.aad_tenant.clone(),
        client_id: info.client_id.clone(),
        cert_file: path,
    };
    let p = env.provider_with(&cfg);
    assert_eq!(p.list_hosts().await.unwrap().len(), 2);
    assert_eq!(env.state().issuer().issued_count(), 1);

    // A certificate the directory does not know is refused: UpstreamAuth.
    let (key2, cert2) = rsa_cert("stranger");
    let path2 = env.dir.path().join("stranger.pem");
    std::fs::write(&path2, format!("{}{}", cert2.pem(), key2.serialize_pem())).unwrap();
    cfg.credential = ClassicCredentialConfig::ClientCertificate {
        tenant_id: info.aad_tenant.clone(),
        client_id: info.client_id.clone(),
        cert_file: path2,
    };
    assert!(matches!(
        env.provider_with(&cfg).list_hosts().await,
        Err(ProviderError::UpstreamAuth(_))
    ));

    // A file without a key is a start-up error naming the key.
    let path3 = env.dir.path().join("nokey.pem");
    std::fs::write(&path3, cert.pem()).unwrap();
    cfg.credential = ClassicCredentialConfig::ClientCertificate {
        tenant_id: info.aad_tenant.clone(),
        client_id: info.client_id.clone(),
        cert_file: path3,
    };
    let Err(e) = sessiongate::providers::wvd_classic::build("legacy", &cfg) else {
        panic!("build should fail")
    };
    assert!(
        e.to_string().contains("pools[legacy].credential.cert_file"),
        "{e}"
    );
}

#[tokio::test]
async fn client_api_version_header_is_sent() {
    let env = Env::default().await;
    let p = env.provider();
    p.list_hosts().await.unwrap();
    assert_eq!(
        env.state().last_client_api_version().as_deref(),
        Some(sessiongate::providers::wvd_classic::DEFAULT_CLIENT_API_VERSION)
    );
    let mut cfg = env.config();
    cfg.client_api_version = "1.0.2866.1".into();
    env.provider_with(&cfg).list_hosts().await.unwrap();
    assert_eq!(
        env.state().last_client_api_version().as_deref(),
        Some("1.0.2866.1")
    );
}

#[tokio::test]
async fn dropped_connections_fail_as_transport_errors() {
    let env = Env::default().await;
    let p = env.provider();
    p.list_hosts().await.unwrap();
    env.state()
        .faults()
        .set(sessiongate::emulator::common::FaultSettings {
            drop_rate: 1.0,
            ..Default::default()
        });
    assert!(matches!(
        p.send_message(&host(SH1), SessionId(2), "t", "b").await,
        Err(ProviderError::Transport(_))
    ));
    assert!(env.state().messages().is_empty());
    assert!(matches!(
        p.list_hosts().await,
        Err(ProviderError::Transport(_))
    ));
    env.state().faults().set(Default::default());
    assert_eq!(p.list_hosts().await.unwrap().len(), 2);
}

#[tokio::test]
async fn drop_after_rate_acts_then_cuts_the_connection_unanswered() {
    let env = Env::default().await;
    let p = env.provider();
    p.list_hosts().await.unwrap();
    env.state()
        .faults()
        .set(sessiongate::emulator::common::FaultSettings {
            drop_after_rate: 1.0,
            ..Default::default()
        });
    let err = p
        .send_message(&host(SH1), SessionId(2), "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert_eq!(env.state().messages().len(), 1, "the broker acted");
    env.state().faults().set(Default::default());
    assert_eq!(p.list_hosts().await.unwrap().len(), 2);
}

#[tokio::test]
async fn answers_over_the_size_cap_fail_typed() {
    let env = Env::default().await;
    let mut cfg = env.config();
    cfg.max_response_bytes = 64 * 1024;
    let p = env.provider_with(&cfg);
    assert_eq!(p.list_hosts().await.unwrap().len(), 2); // token cached first
    env.state().faults().set_oversized_body(1 << 40);
    let t0 = Instant::now();
    for res in [
        p.list_sessions(&SessionFilter::default()).await.map(|_| ()),
        p.send_message(&host(SH1), SessionId(2), "t", "b").await,
    ] {
        match res {
            Err(ProviderError::Upstream {
                status: Some(200),
                code,
                ..
            }) => assert_eq!(code, "response_too_large"),
            other => panic!("{other:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    env.state().faults().set_oversized_body(0);
    assert!(env.state().messages().is_empty());
    assert_eq!(p.list_hosts().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_slow_broker_is_a_timeout_and_an_action_is_tried_once() {
    let env = Env::default().await;
    let mut cfg = env.config();
    cfg.timeout_secs = 1;
    let p = env.provider_with(&cfg);
    p.list_hosts().await.unwrap(); // token cached before the latency starts
    let faults = env.state().faults().clone();
    faults.set(sessiongate::emulator::common::FaultSettings {
        latency_ms: 3000,
        ..Default::default()
    });
    // One attempt of at most timeout_secs: a second one would take the call past 2 s.
    let t0 = Instant::now();
    assert!(matches!(
        p.send_message(&host(SH1), SessionId(2), "t", "b").await,
        Err(ProviderError::Timeout(_))
    ));
    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "{:?}",
        t0.elapsed()
    );
    // A read is tried again (and times out again) within max_retries.
    let t0 = Instant::now();
    assert!(matches!(
        p.list_hosts().await,
        Err(ProviderError::Timeout(_))
    ));
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    faults.set(Default::default());
    assert!(env.state().messages().is_empty());
}
