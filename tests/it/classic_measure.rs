//! Rough timings of the classic adapter against the emulator (run on demand:
//! `cargo nextest run --test it classic_measure:: --run-ignored only --no-capture`).

use crate::support::classic::{Env, POOL, host};
use sessiongate::domain::SessionId;
use sessiongate::emulator::wvd_classic::ClassicEmulatorOptions;
use sessiongate::providers::SessionFilter;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn measure_listing_and_actions() {
    let env = Env::start(ClassicEmulatorOptions {
        hosts_per_pool: 50,
        sessions_per_host: 100,
        ..ClassicEmulatorOptions::default()
    })
    .await;
    let p = env.provider();
    p.list_hosts().await.unwrap();

    for page_size in [1000u32, 200] {
        let mut cfg = env.config();
        cfg.page_size = page_size;
        let p = env.provider_with(&cfg);
        p.list_hosts().await.unwrap();
        let t = Instant::now();
        let all = p.list_sessions(&SessionFilter::default()).await.unwrap();
        println!(
            "list {} sessions, page size {page_size}: {:?}",
            all.sessions.len(),
            t.elapsed()
        );
    }

    let hosts = env.state().hosts(POOL);
    let t = Instant::now();
    for h in hosts.iter().take(20) {
        for id in 2..12 {
            p.disconnect(&host(h), SessionId(id)).await.unwrap();
        }
    }
    println!("200 sequential disconnects: {:?}", t.elapsed());

    let t = Instant::now();
    let mut tasks = Vec::new();
    for h in hosts.iter().take(20) {
        for id in 2..12 {
            let p = p.clone();
            let h = host(h);
            tasks.push(tokio::spawn(async move {
                p.send_message(
                    &h,
                    SessionId(id),
                    "Maintenance",
                    "Please save your work & log off",
                )
                .await
            }));
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    println!("200 concurrent messages: {:?}", t.elapsed());
    assert_eq!(env.state().messages().len(), 200);
}
