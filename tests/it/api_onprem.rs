//! On-premises RD Session Host and MultiPoint pools through the same HTTP API, over WinRM to
//! the emulated Windows hosts (NTLM over HTTPS, as configured in the demo).

use crate::support::app::{TestApp, problem};
use serde_json::{Value, json};
use sessiongate::{
    demo::{MPS_HOST, RDS_HOSTS},
    emulator::winrm::{EmuSession, HostMode},
};

const RDS: &str = "rds-demo";
const MPS: &str = "multipoint-demo";

fn first_session(app: &TestApp, host: &str, mp: bool) -> (u32, EmuSession) {
    let emu = if mp {
        &app.backends.multipoint
    } else {
        &app.backends.rds
    };
    emu.state()
        .sessions(host)
        .into_iter()
        .find(|(id, s)| *id != 0 && !s.admin && !s.user.is_empty())
        .expect("a user session")
}

#[tokio::test]
async fn rds_pool_lists_every_host_and_reports_unreachable_ones() {
    let app = TestApp::start().await;
    let total = app.backends.rds.state().total_sessions();
    let v: Value = app
        .get(&app.keys.reader, &format!("/hostpools/{RDS}/sessions"))
        .await
        .json()
        .await
        .unwrap();
    let n = v["sessions"].as_array().unwrap().len();
    assert!(n > 0 && n <= total, "{n} of {total}");
    assert!(v["unreachable_hosts"].as_array().unwrap().is_empty());
    let per_host = |v: &Value, h: &str| {
        v["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["host"] == h)
            .count()
    };
    assert!(
        RDS_HOSTS.iter().all(|h| per_host(&v, h) > 0),
        "every host asked: {v}"
    );

    app.backends.rds.state().set_mode(
        RDS_HOSTS[2],
        HostMode {
            force_win32: Some(1722),
            ..HostMode::default()
        },
    );
    let v: Value = app
        .get(&app.keys.reader, &format!("/hostpools/{RDS}/sessions"))
        .await
        .json()
        .await
        .unwrap();
    let unreachable = v["unreachable_hosts"].as_array().unwrap();
    assert_eq!(unreachable.len(), 1, "{v}");
    assert_eq!(unreachable[0]["host"], RDS_HOSTS[2]);
    assert_eq!(per_host(&v, RDS_HOSTS[2]), 0);
    assert!(
        per_host(&v, RDS_HOSTS[0]) > 0,
        "the other hosts still answer"
    );

    let v: Value = app
        .get(&app.keys.reader, &format!("/hostpools/{RDS}/sessionhosts"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), RDS_HOSTS.len());
}

#[tokio::test]
async fn hosts_outside_inventory_are_404() {
    let app = TestApp::start().await;
    let r = app
        .get(
            &app.keys.reader,
            &format!("/hostpools/{RDS}/sessionhosts/evil.attacker.example/sessions"),
        )
        .await;
    problem(r, 404, "host_not_found").await;
    let url = format!("{}/logoff", app.session_url(RDS, "127.0.0.1", 2));
    problem(
        app.post(&app.keys.operator, &url, None).await,
        404,
        "host_not_found",
    )
    .await;
}

#[tokio::test]
async fn rds_logoff_disconnect_message() {
    let app = TestApp::start().await;
    let host = RDS_HOSTS[0];
    let (id, s) = first_session(&app, host, false);
    let base = app.session_url(RDS, host, id);

    let r = app
        .post(&app.keys.operator, &format!("{base}/disconnect"), None)
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.backends.rds.state().sessions(host)[&id].state,
        "Disconnected"
    );

    let body = "It's 5 o'clock; save now & log off | \"quoted\" `tick` $(whoami) ‘curly’\nline 2";
    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/message"),
            Some(json!({"title": "IT; $env:X", "body": body})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let m = app.backends.rds.state().messages(host);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].body, body, "free text reaches the host as inert data");
    assert_eq!(m[0].title, "IT; $env:X");

    let expected = format!("{}\\{}", s.domain, s.user);
    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/logoff"),
            Some(json!({"expected_user": expected})),
        )
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    assert!(!app.backends.rds.state().sessions(host).contains_key(&id));
    let v: Value = app
        .post(&app.keys.operator, &format!("{base}/logoff"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["outcome"], "already_gone");
}

#[tokio::test]
async fn multipoint_lock_unlock_and_capabilities() {
    let app = TestApp::start().await;
    let v: Value = app
        .get(&app.keys.reader, "/hostpools")
        .await
        .json()
        .await
        .unwrap();
    let mp = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == MPS)
        .unwrap()
        .clone();
    let actions: Vec<&str> = mp["capabilities"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"lock") && actions.contains(&"unlock"),
        "{actions:?}"
    );
    assert!(!actions.contains(&"message"));

    let (id, _) = first_session(&app, MPS_HOST, true);
    let base = app.session_url(MPS, MPS_HOST, id);
    let r = app
        .post(&app.keys.operator, &format!("{base}/lock"), None)
        .await;
    assert_eq!(r.status(), 200);
    assert!(app.backends.multipoint.state().sessions(MPS_HOST)[&id].locked);
    let r = app
        .post(&app.keys.operator, &format!("{base}/unlock"), None)
        .await;
    assert_eq!(r.status(), 200);
    assert!(!app.backends.multipoint.state().sessions(MPS_HOST)[&id].locked);

    // Not advertised, not allowed.
    let r = app
        .post(
            &app.keys.operator,
            &format!("{base}/message"),
            Some(json!({"title": "t", "body": "b"})),
        )
        .await;
    problem(r, 409, "action_not_supported").await;
    let (host, aid, _) = app.avd_target();
    let r = app
        .post(
            &app.keys.operator,
            &format!("{}/lock", app.session_url("avd-demo", &host, aid)),
            None,
        )
        .await;
    problem(r, 409, "action_not_supported").await;
}

#[tokio::test]
async fn multipoint_admin_sessions_need_the_admin_role() {
    let app = TestApp::start().await;
    let mut s = EmuSession::user("localadmin", "MPS01", true);
    s.admin = true;
    app.backends.multipoint.state().add_session(MPS_HOST, 9, s);
    let url = format!("{}/logoff", app.session_url(MPS, MPS_HOST, 9));
    let b = problem(
        app.post(&app.keys.operator, &url, None).await,
        403,
        "session_protected",
    )
    .await;
    assert_eq!(b["missing_permission"], "sessions.admin");
    assert!(
        app.backends
            .multipoint
            .state()
            .sessions(MPS_HOST)
            .contains_key(&9)
    );
    let v: Value = app
        .post(&app.keys.admin, &url, None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    assert!(
        !app.backends
            .multipoint
            .state()
            .sessions(MPS_HOST)
            .contains_key(&9)
    );
}

/// Hosts with `CbtHardeningLevel=Strict`: the gateway's NTLM sign-ins carry the TLS channel
/// binding, so every host answers and none refused a binding.
#[tokio::test]
async fn strict_channel_binding_hosts_serve_the_api() {
    let app = TestApp::start().await;
    let st = app.backends.rds.state();
    st.set_cbt_hardening(sessiongate::emulator::winrm::CbtHardening::Strict);
    let v: Value = app
        .get(&app.keys.reader, &format!("/hostpools/{RDS}/sessions"))
        .await
        .json()
        .await
        .unwrap();
    assert!(v["unreachable_hosts"].as_array().unwrap().is_empty(), "{v}");
    for h in RDS_HOSTS {
        assert!(
            v["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["host"] == h),
            "{h} answered: {v}"
        );
    }
    assert_eq!(st.cbt_refusals(), 0);
}
