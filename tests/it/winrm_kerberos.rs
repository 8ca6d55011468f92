//! Kerberos to WinRM hosts, end to end over loopback: a real MIT KDC (`tests/it/support/kdc.rs`), the
//! RDS adapter with `auth = "kerberos"`, and the WinRM emulator accepting with the service
//! keys of a keytab (mutual authentication, TLS channel bindings).

use crate::support::app::TestApp;
use crate::support::kdc::{self, Kdc, REALM};
use crate::support::winrm::{Env, host_names, setup};
use sessiongate::domain::{HostName, SessionId};
use sessiongate::emulator::winrm::gss_acceptor;
use sessiongate::emulator::winrm::{CbtHardening, Flavour};
use sessiongate::providers::winrm::{RdsProvider, WinRmAuth, cbt, gssapi};
use sessiongate::providers::{ActionEffect, ProviderError, SessionFilter, SessionProvider};
use std::future::Future;
use std::path::PathBuf;

const PASSWORD: &str = "Emulator-Passw0rd!";

fn h(s: &str) -> HostName {
    HostName::parse(s).unwrap()
}

/// Starts the KDC (before any runtime thread, it sets `KRB5_CONFIG`), then runs `body`.
fn with_kdc<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Kdc) -> Fut,
    Fut: Future<Output = ()>,
{
    if !kdc::available(test) {
        return;
    }
    let kdc = Kdc::start();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body(kdc));
}

/// An RDS emulator whose hosts accept Kerberos with `keytab`, and a pool config using it.
async fn kerberos_env(hosts: usize, keytab: PathBuf, principal: Option<&str>) -> Env {
    let principal = principal.map(str::to_string);
    let mut env = setup(Flavour::Rds, hosts, move |o| {
        o.kerberos_keytab = Some(keytab);
        o.kerberos_principal = principal;
    })
    .await;
    env.cfg.auth = WinRmAuth::Kerberos;
    env.cfg.credential.username = format!("sessiongate@{REALM}");
    env
}

/// The common realm: user `sessiongate` with [`PASSWORD`], `HTTP/<host>` keys for `n` hosts
/// in a keytab the emulated hosts accept with.
async fn realm_with_hosts(kdc: &Kdc, n: usize, principal: Option<&str>) -> (Vec<String>, Env) {
    let hosts = host_names(n);
    kdc.add_user("sessiongate", PASSWORD);
    let kt = kdc.add_services(&hosts, "http.keytab");
    let env = kerberos_env(n, kt, principal).await;
    (hosts, env)
}

#[test]
fn kerberos_lists_and_logs_off_with_mutual_auth_and_reuses_connections() {
    with_kdc("kerberos_lists_and_logs_off", |kdc| async move {
        let (hosts, env) = realm_with_hosts(&kdc, 3, Some(&format!("sessiongate@{REALM}"))).await;
        let st = env.emu.state();
        assert!(env.emu.info().auth.contains(&"kerberos"));
        let p = RdsProvider::from_config("rds", &env.cfg).unwrap();

        let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
        assert_eq!(all.sessions.len(), 9, "{:?}", all.unreachable_hosts);
        assert!(all.unreachable_hosts.is_empty());
        let first = st.kerberos_clients();
        assert!(
            first.len() >= 3,
            "each host authenticated a connection with Kerberos: {first:?}"
        );
        assert!(first.iter().all(|c| c == &format!("sessiongate@{REALM}")));
        let (as_reqs, tgs_reqs) = kdc.issued();
        assert_eq!(
            as_reqs, 1,
            "one AS exchange, tickets shared by the pool's hosts"
        );
        assert_eq!(tgs_reqs, 3, "one service ticket per host");
        assert!(
            st.kerberos_bound().iter().all(|b| *b),
            "every Kerberos context carried matching TLS channel bindings"
        );

        // Actions reuse the authenticated connections: a host never has more authenticated
        // connections than commands in flight (max_concurrency_per_host = 2: an action and
        // the background Signal of the previous one), however many actions run.
        let host = &hosts[0];
        for id in [2, 3] {
            assert_eq!(
                p.logoff(&h(host), SessionId(id), true).await.unwrap(),
                ActionEffect::Done
            );
            for _ in 0..3 {
                p.list_host_sessions(&h(host)).await.unwrap();
            }
        }
        assert_eq!(p.list_host_sessions(&h(host)).await.unwrap().len(), 1);
        assert!(!st.sessions(host).contains_key(&2));
        let after = st.kerberos_clients().len();
        assert!(
            after <= first.len() + 1,
            "8 more commands on one host re-authenticated {} times",
            after - first.len()
        );
        let (as_reqs, tgs_reqs) = kdc.issued();
        assert_eq!(as_reqs, 1);
        assert_eq!(
            tgs_reqs, 3,
            "service tickets stay cached in memory for new connections"
        );
    });
}

#[test]
fn kerberos_wrong_password_is_an_upstream_auth_error_and_reaches_no_host() {
    with_kdc("kerberos_wrong_password", |kdc| async move {
        let hosts = host_names(1);
        kdc.add_user("sessiongate", "a-different-Passw0rd");
        let kt = kdc.add_services(&hosts, "http.keytab");
        let env = kerberos_env(1, kt, None).await;
        let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
        let e = p.list_host_sessions(&h(&hosts[0])).await.unwrap_err();
        match e {
            ProviderError::UpstreamAuth(m) => {
                assert!(m.contains("Kerberos"), "{m}");
                assert!(!m.contains(PASSWORD), "the password never appears: {m}");
            }
            other => panic!("expected UpstreamAuth, got {other:?}"),
        }
        assert_eq!(
            env.emu.state().round_trips(),
            0,
            "no WS-Man request without a ticket"
        );
    });
}

#[test]
fn kerberos_unknown_service_principal_is_a_typed_error() {
    with_kdc("kerberos_unknown_spn", |kdc| async move {
        let (hosts, mut env) = realm_with_hosts(&kdc, 1, None).await;
        env.cfg.hosts[0].spn = Some("HTTP/not-registered.contoso.test".into());
        let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
        let e = p.list_host_sessions(&h(&hosts[0])).await.unwrap_err();
        match e {
            ProviderError::Upstream { code, message, .. } => {
                assert_eq!(code, "kerberos");
                assert!(
                    message.contains("HTTP/not-registered.contoso.test"),
                    "{message}"
                );
            }
            other => panic!("expected a kerberos upstream error, got {other:?}"),
        }
        assert_eq!(env.emu.state().round_trips(), 0);
    });
}

#[test]
fn kerberos_host_without_the_current_key_refuses_with_401() {
    with_kdc("kerberos_stale_keytab", |kdc| async move {
        let hosts = host_names(1);
        kdc.add_user("sessiongate", PASSWORD);
        let stale = kdc.add_services(&hosts, "old.keytab");
        let _current = kdc.rekey_services(&hosts, "new.keytab");
        let env = kerberos_env(1, stale, None).await;
        let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
        let e = p.list_host_sessions(&h(&hosts[0])).await.unwrap_err();
        assert!(matches!(e, ProviderError::UpstreamAuth(_)), "{e:?}");
        assert!(env.emu.state().kerberos_clients().is_empty());
        assert!(env.emu.state().round_trips() >= 1);
    });
}

#[test]
fn kerberos_other_principal_is_refused_by_the_host() {
    with_kdc("kerberos_other_principal", |kdc| async move {
        // The host only admits svc-other; our (valid) principal is refused.
        let (hosts, env) = realm_with_hosts(&kdc, 1, Some(&format!("svc-other@{REALM}"))).await;
        let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
        let e = p.list_host_sessions(&h(&hosts[0])).await.unwrap_err();
        assert!(matches!(e, ProviderError::UpstreamAuth(_)), "{e:?}");
    });
}

#[test]
fn gssapi_channel_bindings_must_match() {
    with_kdc("gssapi_channel_bindings", |kdc| async move {
        kdc.add_user("sessiongate", PASSWORD);
        let kt = kdc.add_services(&["web.contoso.test".to_string()], "http.keytab");
        tokio::task::spawn_blocking(move || {
            let acceptor = gss_acceptor::acceptor_from_keytab(&kt).unwrap();
            let cred = std::sync::Arc::new(
                gssapi::Credential::with_password(&format!("sessiongate@{REALM}"), PASSWORD)
                    .unwrap(),
            );
            let ours = cbt::tls_server_end_point_application_data(&[0x11; 32]);
            let theirs = cbt::tls_server_end_point_application_data(&[0x22; 32]);

            // Same bindings: accepted, bound, and the reply completes mutual auth.
            let (mut init, token) =
                gssapi::Initiator::start(cred.clone(), "HTTP/web.contoso.test", Some(ours.clone()))
                    .unwrap();
            let ok = gss_acceptor::accept(&acceptor, &token, Some(&ours)).unwrap();
            assert_eq!(ok.client, format!("sessiongate@{REALM}"));
            assert!(ok.channel_bound);
            init.finish(&ok.reply).unwrap();

            // A relayed token (bindings of another TLS channel) is refused.
            let (_, token) =
                gssapi::Initiator::start(cred.clone(), "HTTP/web.contoso.test", Some(theirs))
                    .unwrap();
            assert!(gss_acceptor::accept(&acceptor, &token, Some(&ours)).is_err());

            // No bindings from the initiator: MIT accepts, but not as channel-bound (a host at
            // CbtHardeningLevel=Strict refuses it, see kerberos_strict_channel_binding_host).
            let (_, token) =
                gssapi::Initiator::start(cred.clone(), "HTTP/web.contoso.test", None).unwrap();
            let unbound = gss_acceptor::accept(&acceptor, &token, Some(&ours)).unwrap();
            assert!(!unbound.channel_bound);

            // A reply that is not the acceptor's AP-REP fails mutual authentication.
            let (mut init, _token) =
                gssapi::Initiator::start(cred, "HTTP/web.contoso.test", Some(ours)).unwrap();
            assert!(init.finish(b"\x60\x03\x02\x01\x00").is_err());
        })
        .await
        .unwrap();
    });
}

#[test]
fn kerberos_strict_channel_binding_host_accepts_our_bound_tickets() {
    with_kdc("kerberos_strict_cbt", |kdc| async move {
        let (hosts, env) = realm_with_hosts(&kdc, 1, None).await;
        let st = env.emu.state();
        st.set_cbt_hardening(CbtHardening::Strict);
        let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
        assert_eq!(p.list_host_sessions(&h(&hosts[0])).await.unwrap().len(), 3);
        assert_eq!(st.kerberos_bound(), vec![true]);
        assert_eq!(st.cbt_refusals(), 0);
    });
}

#[test]
fn kerberos_unknown_principal_is_upstream_auth_and_unreachable_kdc_is_not() {
    with_kdc(
        "kerberos_unknown_principal_and_kdc_down",
        |mut kdc| async move {
            let hosts = host_names(1);
            let kt = kdc.add_services(&hosts, "http.keytab");
            // No user principal "sessiongate" in the realm.
            let env = kerberos_env(1, kt, None).await;
            let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
            let e = p.list_host_sessions(&h(&hosts[0])).await.unwrap_err();
            assert!(
                matches!(&e, ProviderError::UpstreamAuth(m) if m.contains("Kerberos")),
                "{e:?}"
            );

            // The KDC goes away: not a credentials problem, and still no WS-Man request.
            kdc.stop();
            let p = RdsProvider::from_config("rds", &env.cfg).unwrap();
            let e = p.list_host_sessions(&h(&hosts[0])).await.unwrap_err();
            match e {
                ProviderError::Upstream { code, message, .. } => {
                    assert_eq!(code, "kerberos");
                    assert!(
                        message.contains("cannot obtain Kerberos tickets"),
                        "{message}"
                    );
                }
                other => panic!("expected a kerberos upstream error, got {other:?}"),
            }
            assert_eq!(env.emu.state().round_trips(), 0);
        },
    );
}

#[test]
fn kerberos_pool_answers_the_same_http_api_through_the_gateway() {
    with_kdc("kerberos_pool_http_api", |kdc| async move {
        let (hosts, env) = realm_with_hosts(&kdc, 2, None).await;
        let pool_cfg = env.cfg.clone();
        let app = TestApp::start_with(move |c| {
            c.pools.push(sessiongate::config::PoolConfig {
                name: sessiongate::domain::PoolName::parse("rds-kerberos").unwrap(),
                provider: sessiongate::config::ProviderConfig::Rds(Box::new(pool_cfg)),
            });
        })
        .await;
        let v: serde_json::Value = app
            .get(&app.keys.reader, "/hostpools/rds-kerberos/sessions")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["sessions"].as_array().unwrap().len(), 6, "{v}");
        assert!(v["unreachable_hosts"].as_array().unwrap().is_empty());

        let resp = app
            .post(
                &app.keys.operator,
                &format!(
                    "{}/hostpools/rds-kerberos/sessionhosts/{}/sessions/2/logoff",
                    app.url, hosts[1]
                ),
                Some(serde_json::json!({"reason": "kerberos e2e", "ticket": "INC-1"})),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let r: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(r["outcome"], "done", "{r}");
        assert!(!env.emu.state().sessions(&hosts[1]).contains_key(&2));
        assert!(
            env.emu
                .state()
                .kerberos_clients()
                .iter()
                .all(|c| c == &format!("sessiongate@{REALM}"))
        );
    });
}
