//! The adapter at realistic scale: 250 hosts and 1,250 sessions behind 200-item pages (what
//! the real service does), with ARM's default throttling buckets on. Prints timings.

use crate::support::avd::start;
use sessiongate::emulator::arm::{ArmEmulatorOptions, ArmOp, ThrottleSettings};
use sessiongate::providers::SessionFilter;
use std::time::Instant;

#[tokio::test]
async fn large_pool_is_listed_completely() {
    let env = start(ArmEmulatorOptions {
        hosts_per_pool: 250,
        sessions_per_host: 5,
        page_size: 200,
        throttling: Some(ThrottleSettings::default()),
        ..Default::default()
    })
    .await;
    let p = env.provider("hp1");
    let t0 = Instant::now();
    let hosts = p.list_hosts().await.unwrap();
    let t_hosts = t0.elapsed();
    assert_eq!(hosts.len(), 250);
    let t1 = Instant::now();
    let sessions = p
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap()
        .sessions;
    let t_sessions = t1.elapsed();
    assert_eq!(sessions.len(), 1250);
    let mut keys: Vec<_> = sessions.iter().map(|s| (s.host.clone(), s.id)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 1250);
    assert_eq!(env.state.calls(ArmOp::ListHosts), 2);
    assert_eq!(env.state.calls(ArmOp::ListPoolSessions), 7);
    let t2 = Instant::now();
    let one = p
        .list_sessions(&SessionFilter {
            user: Some("user777@contoso.com".into()),
            state: None,
        })
        .await
        .unwrap()
        .sessions;
    let t_filtered = t2.elapsed();
    assert_eq!(one.len(), 1);
    eprintln!(
        "avd scale: 250 hosts in {t_hosts:?} (2 pages), 1250 sessions in {t_sessions:?} (7 pages), filtered lookup in {t_filtered:?}; tokens issued: {}",
        env.state.tokens_issued()
    );
}
