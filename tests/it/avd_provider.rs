//! The AVD adapter against the ARM emulator over loopback HTTPS, configured as an operator
//! would (custom cloud, CA bundle, client secret from a file).

use crate::support::avd::{opts, start};
use sessiongate::domain::{HostName, SessionId, SessionState, StateFilter};
use sessiongate::emulator::arm::{ArmOp, MissingLogoffStatus, NameStyle, ThrottleSettings};
use sessiongate::providers::avd::build;
use sessiongate::providers::{ActionEffect, ProviderError, SessionFilter};
use std::time::{Duration, Instant};

fn host(s: &str) -> HostName {
    HostName::parse(s).unwrap()
}

#[tokio::test]
async fn lists_follow_next_link_in_both_name_styles() {
    let env = start(opts(5, 2, 2)).await;
    let p = env.provider("hp1");
    for style in [NameStyle::Real, NameStyle::Spec] {
        env.state.set_name_style(style);
        let hosts = p.list_hosts().await.unwrap();
        assert_eq!(hosts.len(), 5, "{style:?}");
        assert_eq!(hosts[0].name, "sh-hp1-0.contoso.com");
        assert_eq!(hosts[0].session_count, 2);
        assert_eq!(hosts[0].status, "available");
        assert!(!hosts[0].drain);

        let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
        assert_eq!(all.sessions.len(), 10, "{style:?}");
        let mut keys: Vec<_> = all
            .sessions
            .iter()
            .map(|s| (s.host.clone(), s.id))
            .collect();
        keys.dedup();
        assert_eq!(keys.len(), 10);
        assert!(all.sessions.iter().all(|s| {
            s.user
                .as_deref()
                .is_some_and(|u| u.ends_with("@contoso.com"))
        }));
        assert_eq!(all.sessions[0].application_type.as_deref(), Some("Desktop"));
        assert!(all.sessions[0].created_at.is_some());

        let on_host = p
            .list_host_sessions(&host("sh-hp1-4.contoso.com"))
            .await
            .unwrap();
        assert_eq!(
            on_host.iter().map(|s| s.id.0).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(on_host.iter().all(|s| s.host == "sh-hp1-4.contoso.com"));
    }
    // 5 hosts at 2 per page = 3 pages, per style.
    assert_eq!(env.state.calls(ArmOp::ListHosts), 6);
}

#[tokio::test]
async fn logoff_done_then_already_gone_in_both_modes() {
    let env = start(opts(1, 3, 10)).await;
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    assert_eq!(
        p.logoff(&h, SessionId(2), false).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(
        p.logoff(&h, SessionId(2), false).await.unwrap(),
        ActionEffect::AlreadyGone
    );
    env.state
        .set_missing_logoff_status(MissingLogoffStatus::NoContent);
    assert_eq!(
        p.logoff(&h, SessionId(3), true).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(
        p.logoff(&h, SessionId(3), true).await.unwrap(),
        ActionEffect::AlreadyGone
    );
    assert_eq!(env.state.sessions("hp1").len(), 1);
    // A missing session on get is SessionNotFound, not AlreadyGone.
    assert!(matches!(
        p.get_session(&h, SessionId(3)).await,
        Err(ProviderError::SessionNotFound)
    ));
}

#[tokio::test]
async fn disconnect_changes_state_and_get_session_sees_it() {
    let env = start(opts(1, 2, 10)).await;
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    let before = p.get_session(&h, SessionId(3)).await.unwrap();
    assert_eq!(before.state, SessionState::Active);
    assert_eq!(
        p.disconnect(&h, SessionId(3)).await.unwrap(),
        ActionEffect::Done
    );
    let after = p.get_session(&h, SessionId(3)).await.unwrap();
    assert_eq!(
        (after.state, after.raw_state.as_str()),
        (SessionState::Disconnected, "Disconnected")
    );
    let active = p
        .list_sessions(&SessionFilter {
            user: None,
            state: Some(StateFilter::Active),
        })
        .await
        .unwrap();
    assert_eq!(active.sessions.len(), 1);
    assert!(matches!(
        p.disconnect(&h, SessionId(42)).await,
        Err(ProviderError::SessionNotFound)
    ));
    // Open enums: an unknown state is kept raw.
    env.state
        .set_session_state("hp1", h.as_str(), 2, "UserProfileDiskMounted");
    let s = p.get_session(&h, SessionId(2)).await.unwrap();
    assert_eq!(
        (s.state, s.raw_state.as_str()),
        (SessionState::Unknown, "UserProfileDiskMounted")
    );
}

#[tokio::test]
async fn send_message_is_delivered_once_even_when_the_answer_is_lost() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    p.send_message(&h, SessionId(2), "Maintenance", "Save your work")
        .await
        .unwrap();
    let m = env.state.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].title.as_str(), m[0].body.as_str(), m[0].user.as_str()),
        ("Maintenance", "Save your work", "user1@contoso.com")
    );

    // The request arrives and is carried out, then the connection drops without an answer:
    // the adapter must report the failure and NOT send the message again.
    env.state.drop_after_handling(ArmOp::SendMessage, 1);
    let err = p
        .send_message(&h, SessionId(2), "Second", "once only")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert_eq!(env.state.calls(ArmOp::SendMessage), 2);
    assert_eq!(env.state.messages().len(), 2);

    // A 5xx on sendMessage is not retried either.
    env.state.fail_next(1, 503);
    let err = p
        .send_message(&h, SessionId(2), "Third", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Upstream {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(env.state.calls(ArmOp::SendMessage), 3);

    // Whereas disconnect (idempotent) is retried after a lost answer and succeeds.
    env.state.drop_after_handling(ArmOp::Disconnect, 1);
    assert_eq!(
        p.disconnect(&h, SessionId(2)).await.unwrap(),
        ActionEffect::Done
    );
    assert_eq!(env.state.calls(ArmOp::Disconnect), 2);
}

#[tokio::test]
async fn send_message_is_retried_after_429() {
    let env = start(opts(1, 1, 10)).await;
    env.state.set_throttling(Some(ThrottleSettings {
        write_capacity: 1,
        write_refill_per_sec: 1,
        ..Default::default()
    }));
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    p.send_message(&h, SessionId(2), "a", "1").await.unwrap();
    p.send_message(&h, SessionId(2), "b", "2").await.unwrap();
    assert_eq!(env.state.messages().len(), 2);
    assert_eq!(env.state.calls(ArmOp::SendMessage), 3);
}

#[tokio::test]
async fn throttling_is_waited_out_within_budget() {
    let env = start(opts(1, 1, 10)).await;
    env.state.set_throttling(Some(ThrottleSettings {
        read_capacity: 1,
        read_refill_per_sec: 1,
        ..Default::default()
    }));
    let p = env.provider("hp1");
    p.list_hosts().await.unwrap();
    let t0 = Instant::now();
    let hosts = p.list_hosts().await.unwrap();
    assert_eq!(hosts.len(), 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "waited {:?}",
        t0.elapsed()
    );
    assert_eq!(env.state.calls(ArmOp::ListHosts), 3);
}

#[tokio::test]
async fn throttling_beyond_budget_is_reported() {
    let env = start(opts(1, 1, 10)).await;
    env.state.set_throttling(Some(ThrottleSettings {
        delete_capacity: 1,
        delete_refill_per_sec: 1,
        ..Default::default()
    }));
    let mut cfg = env.config("hp1");
    cfg.retry_budget_secs = 0;
    let p = build("hp1", &cfg).unwrap();
    let h = host(&env.state.hosts("hp1")[0]);
    assert_eq!(
        p.logoff(&h, SessionId(2), false).await.unwrap(),
        ActionEffect::Done
    );
    let t0 = Instant::now();
    match p.logoff(&h, SessionId(2), false).await {
        Err(ProviderError::Throttled { retry_after }) => {
            assert_eq!(retry_after, Duration::from_secs(1))
        }
        other => panic!("{other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn server_errors_are_retried_for_reads() {
    let env = start(opts(2, 1, 10)).await;
    let p = env.provider("hp1");
    env.state.fail_next(2, 500);
    assert_eq!(p.list_hosts().await.unwrap().len(), 2);
    assert_eq!(env.state.calls(ArmOp::ListHosts), 3);
    // Beyond max_retries (3): the error surfaces with what ARM said.
    env.state.fail_next(10, 503);
    match p.list_hosts().await {
        Err(ProviderError::Upstream {
            status: Some(503),
            code,
            ..
        }) => assert_eq!(code, "ServiceUnavailable"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.state.calls(ArmOp::ListHosts), 3 + 4);
}

#[tokio::test]
async fn invalid_client_secret_is_upstream_auth() {
    let env = start(opts(1, 1, 10)).await;
    std::fs::write(&env.secret_path, "wrong-secret").unwrap();
    let p = env.provider("hp1");
    let err = p.list_hosts().await.unwrap_err();
    match &err {
        ProviderError::UpstreamAuth(m) => {
            assert!(m.contains("7000215"), "{m}");
            assert!(!m.contains("wrong-secret"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.state.calls(ArmOp::ListHosts), 0);
    assert_eq!(env.state.tokens_issued(), 0);
}

#[tokio::test]
async fn revoked_token_is_replaced_once_then_upstream_auth() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    p.list_hosts().await.unwrap();
    assert_eq!(env.state.tokens_issued(), 1);
    // Revocation: the adapter fetches a new token and carries on.
    env.state.revoke_tokens();
    assert_eq!(p.list_hosts().await.unwrap().len(), 1);
    assert_eq!(env.state.tokens_issued(), 2);
    // (Requests refused at authentication never reach the operation counters.)
    assert_eq!(env.state.calls(ArmOp::ListHosts), 2);
    // Revoked again while the secret was rotated to a wrong one: auth failure, no loop.
    std::fs::write(&env.secret_path, "rotated-wrong").unwrap();
    env.state.revoke_tokens();
    let err = p.list_hosts().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::UpstreamAuth(ref m) if m.contains("7000215")),
        "{err:?}"
    );
    assert_eq!(env.state.calls(ArmOp::ListHosts), 2);
    assert_eq!(env.state.tokens_issued(), 2);
}

#[tokio::test]
async fn tokens_are_cached_across_calls() {
    let env = start(opts(3, 2, 2)).await;
    let p = env.provider("hp1");
    for _ in 0..3 {
        p.list_hosts().await.unwrap();
        p.list_sessions(&SessionFilter::default()).await.unwrap();
    }
    assert!(env.state.calls(ArmOp::ListHosts) >= 6);
    assert_eq!(env.state.tokens_issued(), 1);
}

#[tokio::test]
async fn unknown_host_pool_and_resource_group() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    let nope = host("nope.contoso.com");
    assert!(matches!(
        p.list_host_sessions(&nope).await,
        Err(ProviderError::HostNotFound)
    ));
    assert!(matches!(
        p.get_session(&nope, SessionId(2)).await,
        Err(ProviderError::HostNotFound)
    ));
    assert!(matches!(
        p.logoff(&nope, SessionId(2), false).await,
        Err(ProviderError::HostNotFound)
    ));
    assert!(matches!(
        p.send_message(&nope, SessionId(2), "t", "b").await,
        Err(ProviderError::HostNotFound)
    ));
    let other = env.provider("hp-missing");
    assert!(matches!(
        other.list_hosts().await,
        Err(ProviderError::PoolNotFound)
    ));
    let mut cfg = env.config("hp1");
    cfg.resource_group = "rg-other".into();
    let p = build("hp1", &cfg).unwrap();
    assert!(matches!(
        p.list_sessions(&SessionFilter::default()).await,
        Err(ProviderError::PoolNotFound)
    ));
}

#[tokio::test]
async fn user_filter_with_a_quote_is_pushed_upstream() {
    let env = start(opts(2, 2, 2)).await;
    let p = env.provider("hp1");
    let h = env.state.hosts("hp1")[1].clone();
    env.state
        .add_session("hp1", &h, "o'brien@contoso.com")
        .unwrap();
    let got = p
        .list_sessions(&SessionFilter {
            user: Some("O'Brien@contoso.com".into()),
            state: Some(StateFilter::Active),
        })
        .await
        .unwrap();
    assert_eq!(got.sessions.len(), 1);
    assert_eq!(got.sessions[0].user.as_deref(), Some("o'brien@contoso.com"));
    assert_eq!(
        (got.sessions[0].host.as_str(), got.sessions[0].id),
        (h.as_str(), SessionId(4))
    );
    // Filtered upstream: one page, one call.
    assert_eq!(env.state.calls(ArmOp::ListPoolSessions), 1);
}

#[tokio::test]
async fn per_call_timeout_and_unreachable_endpoint() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    p.list_hosts().await.unwrap(); // token cached
    let mut cfg = env.config("hp1");
    cfg.timeout_secs = 1;
    cfg.max_retries = 0;
    let slow = build("hp1", &cfg).unwrap();
    slow.list_hosts().await.unwrap();
    env.state
        .set_faults(sessiongate::emulator::common::FaultSettings {
            latency_ms: 1500,
            ..Default::default()
        });
    assert!(matches!(
        slow.list_hosts().await,
        Err(ProviderError::Timeout(_))
    ));
    env.state.set_faults(Default::default());

    // Nothing listens on the ARM endpoint (the token endpoint works).
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    env.state
        .allow_scope(&format!("https://127.0.0.1:{port}/.default"));
    let mut cfg = env.config("hp1");
    cfg.cloud =
        sessiongate::providers::avd::AvdCloud::Custom(sessiongate::providers::avd::CustomCloud {
            arm_endpoint: format!("https://127.0.0.1:{port}"),
            authority_host: env.emu.info().authority_host,
        });
    cfg.retry_budget_secs = 1;
    let dead = build("hp1", &cfg).unwrap();
    let t0 = Instant::now();
    let err = dead.list_hosts().await.unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "retries stay within the budget"
    );
}

#[tokio::test]
async fn capabilities_and_session_id_reuse_is_visible() {
    let env = start(opts(1, 2, 10)).await;
    let p = env.provider("hp1");
    let c = p.capabilities();
    assert!(c.force_logoff && !c.classic);
    assert_eq!(c.service, "Azure Virtual Desktop (ARM)");
    let h = host(&env.state.hosts("hp1")[0]);
    let first = p.get_session(&h, SessionId(2)).await.unwrap();
    p.logoff(&h, SessionId(2), false).await.unwrap();
    assert_eq!(
        env.state.add_session("hp1", h.as_str(), "eve@contoso.com"),
        Some(2)
    );
    let again = p.get_session(&h, SessionId(2)).await.unwrap();
    assert!(first.user_matches("user1@contoso.com"));
    assert!(!again.user_matches("user1@contoso.com"));
}

#[tokio::test]
async fn down_level_user_names_are_matched_locally() {
    let env = start(opts(2, 2, 2)).await;
    let p = env.provider("hp1");
    let got = p
        .list_sessions(&SessionFilter {
            user: Some("contoso\\USER3".into()),
            state: None,
        })
        .await
        .unwrap();
    assert_eq!(got.sessions.len(), 1);
    assert_eq!(got.sessions[0].user.as_deref(), Some("user3@contoso.com"));
    assert_eq!(got.sessions[0].ad_user.as_deref(), Some("CONTOSO\\user3"));
}

#[tokio::test]
async fn dropped_connections_surface_as_transport_errors() {
    let env = start(opts(1, 1, 10)).await;
    let mut cfg = env.config("hp1");
    cfg.max_retries = 1;
    let p = build("hp1", &cfg).unwrap();
    let h = host(&env.state.hosts("hp1")[0]);
    p.list_hosts().await.unwrap(); // token cached before the faults start
    env.state
        .set_faults(sessiongate::emulator::common::FaultSettings {
            drop_rate: 1.0,
            ..Default::default()
        });
    let err = p
        .send_message(&h, SessionId(2), "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    let err = p.list_hosts().await.unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    env.state.set_faults(Default::default());
    assert!(env.state.messages().is_empty());
    assert_eq!(p.list_hosts().await.unwrap().len(), 1);
}

#[tokio::test]
async fn drop_after_rate_acts_then_cuts_the_connection_unanswered() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    p.list_hosts().await.unwrap(); // token cached before the faults start
    env.state
        .set_faults(sessiongate::emulator::common::FaultSettings {
            drop_after_rate: 1.0,
            ..Default::default()
        });
    // A message is never sent twice, so exactly one request reached the emulator: it was
    // delivered, yet the caller got no answer.
    let err = p
        .send_message(&h, SessionId(2), "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Transport(_)), "{err:?}");
    assert_eq!(env.state.messages().len(), 1, "the emulator acted");
    assert_eq!(env.state.calls(ArmOp::SendMessage), 1);
    env.state.set_faults(Default::default());
    assert_eq!(p.list_hosts().await.unwrap().len(), 1);
}

/// `error_after_rate`: the backend acts, then the caller is told 5xx. A message is never
/// re-sent once it may have arrived, so exactly one was delivered.
#[tokio::test]
async fn error_after_rate_acts_then_answers_5xx() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    p.list_hosts().await.unwrap(); // token cached before the faults start
    env.state
        .set_faults(sessiongate::emulator::common::FaultSettings {
            error_after_rate: 1.0,
            ..Default::default()
        });
    let err = p
        .send_message(&h, SessionId(2), "t", "b")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ProviderError::Upstream {
                status: Some(500),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(env.state.messages().len(), 1, "the emulator acted");
    assert_eq!(env.state.calls(ArmOp::SendMessage), 1);
    // A logoff is retried after a 5xx: the retry finds the session gone.
    let r = p.logoff(&h, SessionId(2), false).await;
    assert!(
        env.state.sessions("hp1").is_empty(),
        "the first attempt logged off: {r:?}"
    );
    env.state.set_faults(Default::default());
}

/// `throttle_rate`: 429 with `Retry-After: 1` before the handler runs; the adapter waits and
/// retries within its budget, and gives up typed (`Throttled`) beyond it, having done nothing.
#[tokio::test]
async fn throttle_rate_answers_429_with_retry_after_before_acting() {
    let env = start(opts(1, 1, 10)).await;
    let mut cfg = env.config("hp1");
    cfg.retry_budget_secs = 3;
    cfg.max_retries = 1;
    let p = build("hp1", &cfg).unwrap();
    let h = host(&env.state.hosts("hp1")[0]);
    p.list_hosts().await.unwrap(); // token cached before the faults start
    env.state
        .set_faults(sessiongate::emulator::common::FaultSettings {
            throttle_rate: 1.0,
            ..Default::default()
        });
    let t0 = Instant::now();
    let err = p
        .send_message(&h, SessionId(2), "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Throttled { .. }), "{err:?}");
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "waited Retry-After once"
    );
    assert!(env.state.messages().is_empty(), "never reached the handler");
    assert_eq!(env.state.calls(ArmOp::SendMessage), 0);
    env.state.set_faults(Default::default());
    p.send_message(&h, SessionId(2), "t", "b").await.unwrap();
    assert_eq!(env.state.messages().len(), 1);
}

/// `slow_rate`/`slow_ms`: the slow request outlives the adapter's timeout, yet the backend
/// still acts, late.
#[tokio::test]
async fn slow_rate_times_out_the_caller_and_acts_late() {
    let env = start(opts(1, 1, 10)).await;
    let mut cfg = env.config("hp1");
    cfg.timeout_secs = 1;
    let p = build("hp1", &cfg).unwrap();
    let h = host(&env.state.hosts("hp1")[0]);
    p.list_hosts().await.unwrap(); // token cached before the faults start
    env.state
        .set_faults(sessiongate::emulator::common::FaultSettings {
            slow_rate: 1.0,
            slow_ms: 1300,
            ..Default::default()
        });
    let err = p
        .send_message(&h, SessionId(2), "t", "b")
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(env.state.messages().len(), 1, "delivered after the timeout");
    env.state.set_faults(Default::default());
}

#[tokio::test]
async fn missing_role_is_upstream_forbidden() {
    let env = start(opts(1, 1, 10)).await;
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    env.state.set_forbidden(&[ArmOp::Logoff]);
    match p.logoff(&h, SessionId(2), false).await {
        Err(ProviderError::UpstreamForbidden(m)) => {
            assert!(m.starts_with("AuthorizationFailed: "), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.state.calls(ArmOp::Logoff), 1, "403 is not retried");
    assert_eq!(p.list_host_sessions(&h).await.unwrap().len(), 1);
    env.state.set_forbidden(&[]);
    assert_eq!(
        p.logoff(&h, SessionId(2), false).await.unwrap(),
        ActionEffect::Done
    );
}

#[tokio::test]
async fn rejected_state_filter_falls_back_to_user_only() {
    let env = start(opts(2, 2, 10)).await;
    let p = env.provider("hp1");
    let h = env.state.hosts("hp1")[0].clone();
    env.state.set_session_state("hp1", &h, 2, "Disconnected");
    env.state.set_reject_state_filter(true);
    let f = SessionFilter {
        user: Some("user1@contoso.com".into()),
        state: Some(StateFilter::Disconnected),
    };
    let got = p.list_sessions(&f).await.unwrap().sessions;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].state, SessionState::Disconnected);
    assert_eq!(env.state.calls(ArmOp::ListPoolSessions), 2);
    let f = SessionFilter {
        user: Some("user1@contoso.com".into()),
        state: Some(StateFilter::Active),
    };
    assert!(p.list_sessions(&f).await.unwrap().sessions.is_empty());
}

#[tokio::test]
async fn answers_over_the_size_cap_fail_typed_and_are_not_read_to_the_end() {
    let env = start(opts(40, 1, 100)).await;
    // A declared (Content-Length) body over a small cap: one page of 40 hosts is ~20 KiB.
    let mut cfg = env.config("hp1");
    cfg.max_response_bytes = 4096;
    let small = build("hp1", &cfg).unwrap();
    match small.list_hosts().await {
        Err(ProviderError::Upstream {
            status: Some(200),
            code,
            ..
        }) => assert_eq!(code, "response_too_large"),
        other => panic!("{other:?}"),
    }
    assert_eq!(env.state.calls(ArmOp::ListHosts), 1, "never retried");

    // An endless chunked body against the default cap (16 MiB): reading stops there.
    let p = env.provider("hp1");
    let h = host(&env.state.hosts("hp1")[0]);
    p.list_hosts().await.unwrap(); // token cached before the fault starts
    env.state.faults().set_oversized_body(1 << 40);
    let t0 = Instant::now();
    for res in [
        p.list_hosts().await.map(|_| ()),
        p.get_session(&h, SessionId(2)).await.map(|_| ()),
        p.send_message(&h, SessionId(2), "t", "b").await,
    ] {
        match res {
            Err(ProviderError::Upstream { code, .. }) => assert_eq!(code, "response_too_large"),
            other => panic!("{other:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    env.state.faults().set_oversized_body(0);
    assert_eq!(p.list_hosts().await.unwrap().len(), 40);
}
