//! RD Session Host and MultiPoint adapters against the WinRM emulator over loopback HTTPS.

use crate::support::winrm::{GATEWAY, eventually, setup};
use sessiongate::domain::{ActionKind, HostName, SessionId, SessionState};
use sessiongate::emulator::winrm::{EmuSession, Flavour, HostMode};
use sessiongate::providers::winrm::{
    BulkLogoffStatus, HostConfig, MultiPointProvider, RdsProvider, build_rds,
};
use sessiongate::providers::{ActionEffect, ProviderError, SessionFilter, SessionProvider};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn gateway_account_is_the_protected_one() {
    assert_eq!(GATEWAY, "CONTOSO\\svc-gateway");
}

fn h(s: &str) -> HostName {
    HostName::parse(s).unwrap()
}

const H1: &str = "rdsh-001.contoso.test";
const H2: &str = "rdsh-002.contoso.test";
const H3: &str = "rdsh-003.contoso.test";

#[tokio::test]
async fn rds_lists_sessions_of_a_host_and_of_the_pool() {
    let env = setup(Flavour::Rds, 3, |_| {}).await;
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    let s = p.list_host_sessions(&h(H1)).await.unwrap();
    assert_eq!(s.len(), 3, "session 0 is not a user session");
    assert_eq!(s[0].id, SessionId(2));
    assert_eq!(s[0].ad_user.as_deref(), Some("CONTOSO\\user001-01"));
    assert_eq!(s[0].state, SessionState::Active);
    assert_eq!(s[2].state, SessionState::Disconnected);
    assert_eq!(s[0].pool, "rds");
    assert_eq!(s[0].host, H1);

    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 9);
    assert!(all.unreachable_hosts.is_empty());

    let one = p.get_session(&h(H2), SessionId(3)).await.unwrap();
    assert_eq!(one.ad_user.as_deref(), Some("CONTOSO\\user002-02"));
    assert!(matches!(
        p.get_session(&h(H2), SessionId(77)).await,
        Err(ProviderError::SessionNotFound)
    ));

    let hosts = p.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 3);
    assert!(
        hosts
            .iter()
            .all(|x| x.status == "available" && x.session_count == 3)
    );
    let caps = p.capabilities();
    assert_eq!(
        caps.actions,
        vec![
            ActionKind::Logoff,
            ActionKind::Disconnect,
            ActionKind::Message
        ]
    );
}

#[tokio::test]
async fn rds_logoff_disconnect_and_message() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let p = build_rds("rds", &env.cfg).unwrap();
    assert_eq!(
        p.logoff(&h(H1), SessionId(2), true).await.unwrap(),
        ActionEffect::Done
    );
    assert!(!st.sessions(H1).contains_key(&2));
    assert_eq!(
        p.logoff(&h(H1), SessionId(2), false).await.unwrap(),
        ActionEffect::AlreadyGone
    );
    assert_eq!(
        p.disconnect(&h(H1), SessionId(3)).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(st.sessions(H1)[&3].state, "Disconnected");
    assert!(matches!(
        p.disconnect(&h(H1), SessionId(42)).await,
        Err(ProviderError::SessionNotFound)
    ));
    p.send_message(&h(H1), SessionId(4), "Maintenance", "Rebooting at 18:00")
        .await
        .unwrap();
    let m = st.messages(H1);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].session, 4);
    assert_eq!(m[0].title, "Maintenance");
    assert_eq!(m[0].body, "Rebooting at 18:00");
    assert!(matches!(
        p.send_message(&h(H1), SessionId(99), "t", "b").await,
        Err(ProviderError::SessionNotFound)
    ));
}

#[tokio::test]
async fn session_zero_and_the_gateway_session_are_protected() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    st.add_session(H1, 9, EmuSession::user("svc-gateway", "CONTOSO", true));
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    let before = st.round_trips();
    assert!(matches!(
        p.logoff(&h(H1), SessionId(0), true).await,
        Err(ProviderError::Protected(_))
    ));
    assert_eq!(
        st.round_trips(),
        before,
        "session 0 is refused before any request"
    );
    assert!(matches!(
        p.logoff(&h(H1), SessionId(9), true).await,
        Err(ProviderError::Protected(_))
    ));
    assert!(matches!(
        p.disconnect(&h(H1), SessionId(9)).await,
        Err(ProviderError::Protected(_))
    ));
    assert!(st.sessions(H1).contains_key(&9));
    assert_eq!(st.sessions(H1)[&9].state, "Active");
}

#[tokio::test]
async fn win32_errors_map_to_provider_errors() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    st.set_mode(
        H1,
        HostMode {
            force_win32: Some(5),
            command_fault: None,
        },
    );
    assert!(matches!(
        p.logoff(&h(H1), SessionId(2), true).await,
        Err(ProviderError::UpstreamForbidden(_))
    ));
    assert!(matches!(
        p.list_host_sessions(&h(H1)).await,
        Err(ProviderError::UpstreamForbidden(_))
    ));
    st.set_mode(
        H1,
        HostMode {
            force_win32: Some(1722),
            command_fault: None,
        },
    );
    assert!(matches!(
        p.disconnect(&h(H1), SessionId(2)).await,
        Err(ProviderError::HostUnreachable(_))
    ));
    st.set_mode(
        H1,
        HostMode {
            force_win32: Some(1168),
            command_fault: None,
        },
    );
    assert_eq!(
        p.logoff(&h(H1), SessionId(2), true).await.unwrap(),
        ActionEffect::AlreadyGone
    );
    assert!(matches!(
        p.disconnect(&h(H1), SessionId(2)).await,
        Err(ProviderError::SessionNotFound)
    ));
    st.set_mode(
        H1,
        HostMode {
            force_win32: Some(31),
            command_fault: None,
        },
    );
    match p.logoff(&h(H1), SessionId(2), true).await {
        Err(ProviderError::Upstream { code, .. }) => assert_eq!(code, "win32:31"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wsman_faults_are_typed() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    st.set_mode(
        H1,
        HostMode {
            force_win32: None,
            command_fault: Some(2150858770),
        },
    );
    match p.logoff(&h(H1), SessionId(2), true).await {
        Err(ProviderError::Upstream {
            status,
            code,
            message,
        }) => {
            assert_eq!(status, Some(500));
            assert_eq!(code, "wsman_fault:2150858770");
            assert!(message.contains("emulated fault"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    st.set_mode(
        H1,
        HostMode {
            force_win32: None,
            command_fault: Some(5),
        },
    );
    assert!(matches!(
        p.logoff(&h(H1), SessionId(2), true).await,
        Err(ProviderError::UpstreamForbidden(_))
    ));
    st.set_mode(H1, HostMode::default());
    assert_eq!(
        p.logoff(&h(H1), SessionId(2), true).await.unwrap(),
        ActionEffect::Done
    );
}

#[tokio::test]
async fn bad_password_is_upstream_auth() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let pw = env.dir.path().join("wrong");
    std::fs::write(&pw, "not-the-password").unwrap();
    let mut cfg = env.cfg.clone();
    cfg.credential.password_file = Some(pw);
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    assert!(matches!(
        p.list_host_sessions(&h(H1)).await,
        Err(ProviderError::UpstreamAuth(_))
    ));
}

#[tokio::test]
async fn untrusted_certificate_is_a_transport_error() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let mut cfg = env.cfg.clone();
    cfg.ca_bundle = None;
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    match p.list_host_sessions(&h(H1)).await {
        Err(ProviderError::Transport(m)) => assert!(m.contains("TLS"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tls_server_name_overrides_the_certificate_name() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let mut cfg = env.cfg.clone();
    cfg.hosts[0].tls_server_name = Some("localhost".into());
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    assert_eq!(p.list_host_sessions(&h(H1)).await.unwrap().len(), 3);
}

#[tokio::test]
async fn unreachable_hosts_are_reported_not_fatal() {
    let env = setup(Flavour::Rds, 3, |o| o.unreachable = vec![H2.into()]).await;
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
    assert_eq!(all.sessions.len(), 6);
    assert_eq!(all.unreachable_hosts.len(), 1);
    assert_eq!(all.unreachable_hosts[0].host, H2);
    assert!(
        all.unreachable_hosts[0]
            .error
            .starts_with("host_unreachable")
    );
    let hosts = p.list_hosts().await.unwrap();
    let h2 = hosts.iter().find(|x| x.name == H2).unwrap();
    assert_eq!(h2.status, "unreachable");
    assert_eq!(hosts.iter().filter(|x| x.status == "available").count(), 2);
    assert!(matches!(
        p.logoff(&h(H2), SessionId(2), true).await,
        Err(ProviderError::HostUnreachable(_))
    ));
    let _ = H3;
}

#[tokio::test]
async fn hosts_outside_the_inventory_are_never_contacted() {
    // A listener that only counts connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            c2.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let mut cfg = env.cfg.clone();
    cfg.hosts = vec![HostConfig {
        endpoint: Some(format!("https://127.0.0.1:{port}/wsman")),
        ..HostConfig::named("inside.contoso.test")
    }];
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    let mp = MultiPointProvider::from_config("mp", &cfg).unwrap();
    // Names a caller might use to point us elsewhere.
    for name in [
        "evil.example.com",
        "127.0.0.1",
        "localhost",
        "inside.contoso.test.evil",
    ] {
        let x = h(name);
        assert!(!p.host_in_inventory(&x));
        assert!(matches!(
            p.list_host_sessions(&x).await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            p.get_session(&x, SessionId(2)).await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            p.logoff(&x, SessionId(2), true).await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            p.disconnect(&x, SessionId(2)).await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            p.send_message(&x, SessionId(2), "t", "b").await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            mp.lock(&x, SessionId(2)).await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            mp.unlock(&x, SessionId(2)).await,
            Err(ProviderError::HostNotFound)
        ));
        assert!(matches!(
            mp.logoff_all(&x, true).await,
            Err(ProviderError::HostNotFound)
        ));
        let many = mp.logoff_many(&x, &[SessionId(2)]).await;
        assert!(matches!(many[0].1, Err(ProviderError::HostNotFound)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "no connection for non-inventory hosts"
    );
    // Case-insensitive match of the inventory name; this one does connect (proves the counter).
    assert!(p.host_in_inventory(&h("INSIDE.contoso.test")));
    let _ = p.list_host_sessions(&h("INSIDE.contoso.test")).await;
    assert!(count.load(Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn warm_shells_are_reused_and_round_trips_counted() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    p.list_host_sessions(&h(H1)).await.unwrap();
    // Create + Command + Receive (+ Signal in the background).
    assert!(
        eventually(|| st.round_trips() == 4).await,
        "{}",
        st.round_trips()
    );
    assert_eq!(st.shells_created(), 1);
    assert_eq!(p.transport_stats().round_trips, 4);
    p.logoff(&h(H1), SessionId(2), true).await.unwrap();
    assert!(
        eventually(|| st.round_trips() == 7).await,
        "{}",
        st.round_trips()
    );
    assert_eq!(
        st.shells_created(),
        1,
        "the second action reuses the warm shell"
    );
    p.send_message(&h(H1), SessionId(3), "a", "b")
        .await
        .unwrap();
    assert!(eventually(|| st.round_trips() == 10).await);
    assert_eq!(st.shells_created(), 1);
    let stats = p.transport_stats();
    assert_eq!(stats.round_trips, 10);
    assert_eq!(stats.shells_created, 1);
    assert_eq!(st.open_shells(H1), 1);
    p.close().await;
    assert_eq!(st.open_shells(H1), 0);
}

#[tokio::test]
async fn a_shell_the_server_forgot_is_replaced() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    p.list_host_sessions(&h(H1)).await.unwrap();
    assert!(eventually(|| st.round_trips() == 4).await);
    st.drop_shells(H1);
    assert_eq!(p.list_host_sessions(&h(H1)).await.unwrap().len(), 3);
    assert_eq!(st.shells_created(), 2);
}

#[tokio::test]
async fn receive_polls_through_timed_out_faults() {
    let env = setup(Flavour::Rds, 1, |o| o.command_duration_ms = 2300).await;
    let st = env.emu.state();
    let mut cfg = env.cfg.clone();
    cfg.operation_timeout_secs = 1;
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    let s = p.list_host_sessions(&h(H1)).await.unwrap();
    assert_eq!(s.len(), 3);
    // Create, Command, Receive (TimedOut) ×2, Receive (Done).
    assert!(st.round_trips() >= 5, "{}", st.round_trips());
}

#[tokio::test]
async fn multipoint_operations() {
    let env = setup(Flavour::MultiPoint, 1, |o| o.sessions_per_host = 4).await;
    let st = env.emu.state();
    let mut admin = EmuSession::user("alice-admin", "CONTOSO", true);
    admin.admin = true;
    st.add_session(H1, 20, admin);
    st.add_session(H1, 21, EmuSession::user("svc-gateway", "CONTOSO", true));
    let p = MultiPointProvider::from_config("mp", &env.cfg).unwrap();
    assert_eq!(
        p.capabilities().actions,
        vec![
            ActionKind::Logoff,
            ActionKind::Disconnect,
            ActionKind::Lock,
            ActionKind::Unlock
        ]
    );
    let list = p.list_host_sessions(&h(H1)).await.unwrap();
    assert_eq!(list.len(), 6);
    let flagged = p.list_host_sessions_with_admin(&h(H1)).await.unwrap();
    assert!(flagged.iter().any(|(s, a)| s.id == SessionId(20) && *a));
    assert!(flagged.iter().any(|(s, a)| s.id == SessionId(2) && !*a));

    assert_eq!(
        p.lock(&h(H1), SessionId(2)).await.unwrap(),
        ActionEffect::Done
    );
    assert!(st.sessions(H1)[&2].locked);
    assert_eq!(
        p.unlock(&h(H1), SessionId(2)).await.unwrap(),
        ActionEffect::Done
    );
    assert!(!st.sessions(H1)[&2].locked);
    assert_eq!(
        p.disconnect(&h(H1), SessionId(3)).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(st.sessions(H1)[&3].state, "Disconnected");
    assert!(matches!(
        p.lock(&h(H1), SessionId(21)).await,
        Err(ProviderError::Protected(_))
    ));
    assert!(matches!(
        p.lock(&h(H1), SessionId(88)).await,
        Err(ProviderError::SessionNotFound)
    ));
    assert!(matches!(
        p.send_message(&h(H1), SessionId(2), "t", "b").await,
        Err(ProviderError::Unsupported)
    ));

    assert_eq!(
        p.logoff(&h(H1), SessionId(2), true).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(
        p.logoff(&h(H1), SessionId(2), true).await.unwrap(),
        ActionEffect::AlreadyGone
    );
    assert!(matches!(
        p.logoff(&h(H1), SessionId(21), true).await,
        Err(ProviderError::Protected(_))
    ));

    let many = p
        .logoff_many(
            &h(H1),
            &[SessionId(3), SessionId(0), SessionId(21), SessionId(50)],
        )
        .await;
    let get = |id: u32| many.iter().find(|(s, _)| s.0 == id).unwrap().1.clone();
    assert_eq!(get(3).unwrap(), ActionEffect::Done);
    assert!(matches!(get(0), Err(ProviderError::Protected(_))));
    assert!(matches!(get(21), Err(ProviderError::Protected(_))));
    assert_eq!(get(50).unwrap(), ActionEffect::AlreadyGone);

    // All: the admin's session is skipped unless asked for, the gateway's never closed.
    let all = p.logoff_all(&h(H1), false).await.unwrap();
    let status = |id: u32| all.iter().find(|i| i.id.0 == id).unwrap().status;
    assert_eq!(status(4), BulkLogoffStatus::Closed);
    assert_eq!(status(5), BulkLogoffStatus::Closed);
    assert_eq!(status(20), BulkLogoffStatus::SkippedAdmin);
    assert!(all.iter().find(|i| i.id.0 == 20).unwrap().is_admin);
    assert_eq!(status(21), BulkLogoffStatus::Protected);
    let left: Vec<u32> = st.sessions(H1).keys().copied().collect();
    assert_eq!(left, vec![0, 20, 21]);
    let all = p.logoff_all(&h(H1), true).await.unwrap();
    assert_eq!(
        all.iter().find(|i| i.id.0 == 20).unwrap().status,
        BulkLogoffStatus::Closed
    );
    let left: Vec<u32> = st.sessions(H1).keys().copied().collect();
    assert_eq!(left, vec![0, 21]);
}

#[tokio::test]
async fn wrong_flavour_scripts_fail_cleanly() {
    // An RDS pool pointed at MultiPoint hosts: the host does not know the WTS helper.
    let env = setup(Flavour::MultiPoint, 1, |_| {}).await;
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    assert!(matches!(
        p.list_host_sessions(&h(H1)).await,
        Err(ProviderError::Upstream { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_concurrency_is_bounded() {
    let env = setup(Flavour::Rds, 1, |o| o.command_duration_ms = 300).await;
    let mut cfg = env.cfg.clone();
    cfg.max_concurrency_per_host = 1;
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    let host = h(H1);
    let t = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        p.list_host_sessions(&host),
        p.list_host_sessions(&host),
        p.list_host_sessions(&host)
    );
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    // One command at a time: three 300 ms commands take at least 900 ms.
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        env.emu.state().shells_created(),
        1,
        "one shell serves the serialised commands"
    );
}

#[tokio::test]
async fn injected_server_errors_and_dropped_connections_are_typed() {
    use sessiongate::emulator::common::FaultSettings;
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
    env.emu.faults().set(FaultSettings {
        latency_ms: 0,
        error_rate: 1.0,
        drop_rate: 0.0,
        ..FaultSettings::default()
    });
    assert!(matches!(
        p.list_host_sessions(&h(H1)).await,
        Err(ProviderError::Upstream {
            status: Some(500),
            ..
        })
    ));
    env.emu.faults().set(FaultSettings {
        latency_ms: 0,
        error_rate: 0.0,
        drop_rate: 1.0,
        ..FaultSettings::default()
    });
    assert!(matches!(
        p.list_host_sessions(&h(H1)).await,
        Err(ProviderError::Transport(_))
    ));
    env.emu.faults().set(FaultSettings::default());
    assert_eq!(p.list_host_sessions(&h(H1)).await.unwrap().len(), 3);
}

mod ntlm {
    use super::*;
    use sessiongate::providers::winrm::WinRmAuth;

    #[tokio::test]
    async fn ntlm_pool_runs_actions_on_authenticated_connections() {
        let env = setup(Flavour::Rds, 2, |_| {}).await;
        let st = env.emu.state();
        let mut cfg = env.cfg.clone();
        cfg.auth = WinRmAuth::Ntlm;
        cfg.credential.username = format!("CONTOSO\\{}", env.emu.info().username);
        let p = RdsProvider::from_config("rds", &cfg).unwrap();
        let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
        assert_eq!(all.sessions.len(), 6, "{:?}", all.unreachable_hosts);
        assert_eq!(
            p.logoff(&h(H1), SessionId(2), true).await.unwrap(),
            ActionEffect::Done
        );
        assert!(!st.sessions(H1).contains_key(&2));
        let ok = eventually(|| p.transport_stats().round_trips == st.round_trips()).await;
        assert!(
            ok,
            "client {:?} vs emulator {}",
            p.transport_stats(),
            st.round_trips()
        );
        // Per host: NEGOTIATE leg (401) + Create/Command/Receive/Signal; then a second action on
        // the warm shell and authenticated connection costs Command/Receive/Signal only.
        assert_eq!(st.host_round_trips(H2), 5);
        let before = st.host_round_trips(H2);
        assert_eq!(
            p.disconnect(&h(H2), SessionId(3)).await.unwrap(),
            ActionEffect::Done
        );
        assert!(eventually(|| st.host_round_trips(H2) == before + 3).await);
    }

    #[tokio::test]
    async fn ntlm_wrong_password_is_upstream_auth() {
        let env = setup(Flavour::Rds, 1, |_| {}).await;
        let pw = env.dir.path().join("wrong");
        std::fs::write(&pw, "nope").unwrap();
        let mut cfg = env.cfg.clone();
        cfg.auth = WinRmAuth::Ntlm;
        cfg.credential.password_file = Some(pw);
        let p = RdsProvider::from_config("rds", &cfg).unwrap();
        assert!(matches!(
            p.list_host_sessions(&h(H1)).await,
            Err(ProviderError::UpstreamAuth(_))
        ));
    }

    #[tokio::test]
    async fn ntlm_over_plain_http_is_rejected_at_build() {
        let env = setup(Flavour::Rds, 1, |_| {}).await;
        let mut cfg = env.cfg.clone();
        cfg.auth = WinRmAuth::Ntlm;
        cfg.hosts[0].endpoint = Some("http://127.0.0.1:5985/wsman".into());
        let e = RdsProvider::from_config("rds", &cfg).err().unwrap();
        assert_eq!(e.key, "pools[rds].hosts[0].endpoint", "{e}");
    }
}

#[tokio::test]
async fn idle_shells_expire_and_are_deleted() {
    let env = setup(Flavour::Rds, 1, |_| {}).await;
    let st = env.emu.state();
    let mut cfg = env.cfg.clone();
    cfg.shell_idle_secs = 0;
    let p = RdsProvider::from_config("rds", &cfg).unwrap();
    p.list_host_sessions(&h(H1)).await.unwrap();
    assert!(eventually(|| st.round_trips() == 4).await);
    p.list_host_sessions(&h(H1)).await.unwrap();
    assert_eq!(st.shells_created(), 2, "an expired shell is not reused");
    assert!(eventually(|| p.transport_stats().shells_deleted == 1).await);
    assert!(eventually(|| st.open_shells(H1) == 1).await);
}
