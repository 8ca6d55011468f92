//! `demo`'s ticketing webhooks, run as a user would: the printed curl of each source kind
//! (servicenow, jira, generic) logs its ticket's user off as a job, the emulated ticket then
//! shows the job's result (a ServiceNow work note, a Jira comment), and the same delivery sent
//! again is answered with the same job and does nothing new. Also the banner's fleet
//! examples (bulk, user everywhere, whole host, a job and its polling, an idempotent retry),
//! pasted as printed.
//! Run: `cargo nextest run --test it demo_webhooks::`

use crate::support::process::DemoProcess;
use serde_json::Value;
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// One printed command and the comment line above it.
struct Printed {
    comment: String,
    command: String,
}

/// (comment, command) pairs of a part of the banner: consecutive comment lines are one
/// comment; a command keeps its `\` line continuations, so `sh -c` runs it exactly as pasted.
fn printed(part: &[String]) -> Vec<Printed> {
    let mut out: Vec<Printed> = Vec::new();
    for l in part {
        let t = l.trim();
        if let Some(c) = t.strip_prefix("# ") {
            match out.last_mut() {
                Some(p) if p.command.is_empty() => {
                    p.comment.push(' ');
                    p.comment.push_str(c);
                }
                _ => out.push(Printed {
                    comment: c.to_string(),
                    command: String::new(),
                }),
            }
        } else if let Some(p) = out.last_mut()
            && !t.is_empty()
        {
            if !p.command.is_empty() {
                p.command.push('\n');
            }
            p.command.push_str(t);
        }
    }
    out
}

/// The banner's ticketing part.
fn webhook_commands(lines: &[String]) -> Vec<Printed> {
    let start = lines
        .iter()
        .position(|l| l.starts_with("Ticketing webhooks"))
        .expect("the banner has a ticketing part");
    let end = lines[start..]
        .iter()
        .position(|l| l.starts_with("Stop with"))
        .map_or(lines.len(), |i| start + i);
    printed(&lines[start..end])
}

fn sh(cmd: &str, sg: &str) -> String {
    sh_key(cmd, sg, "")
}

/// A `curl -i` answer: status, headers (lowercase names) and the JSON body.
fn http_answer(raw: &str) -> (u16, Vec<(String, String)>, Value) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer: {raw}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {raw}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body ({e}): {raw}"));
    (status, headers, body)
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The notes of the ticket as its notes command prints them: ServiceNow's journal entries
/// (`result`) or Jira's comments (`comments`), each as JSON text.
fn notes(cmd: &str, sg: &str) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&sh(cmd, sg)).unwrap_or_else(|e| panic!("{cmd} prints JSON: {e}"));
    v.get("result")
        .or_else(|| v.get("comments"))
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("notes in {v}"))
        .iter()
        .map(Value::to_string)
        .collect()
}

async fn get(http: &reqwest::Client, key: &str, url: &str) -> Value {
    let r = http.get(url).bearer_auth(key).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

async fn sessions_of(http: &reqwest::Client, key: &str, sg: &str, user: &str) -> usize {
    get(
        http,
        key,
        &format!("{sg}/hostpools/avd-demo/sessions?user={user}"),
    )
    .await["sessions"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_else(|| panic!("sessions of {user}"))
}

/// The number of logoff outcomes the audit log holds for `user`.
async fn logoffs_of(http: &reqwest::Client, auditor: &str, sg: &str, user: &str) -> usize {
    let v = get(
        http,
        auditor,
        &format!("{sg}/audit?user={user}&action=logoff&outcome=done&limit=1000"),
    )
    .await;
    v["events"]
        .as_array()
        .unwrap_or_else(|| panic!("audit events: {v}"))
        .len()
}

#[tokio::test]
async fn demo_webhook_commands_log_off_write_back_and_replay_nothing() {
    let k = DemoProcess::start();
    let (port, dir, lines) = (k.port, k.dir.path().to_path_buf(), k.lines.clone());
    let key_of = |role: &str| k.key(role.trim());
    let (op, admin, auditor) = (key_of("operator "), key_of("admin "), key_of("auditor "));
    let sg = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let printed = webhook_commands(&lines);
    // The sources' secrets are private files the written config names, never their contents.
    let cfg = std::fs::read_to_string(dir.as_path().join("sessiongate.toml")).unwrap();
    for f in [
        "servicenow-password",
        "jira-api-token",
        "webhook-servicenow-hmac",
        "webhook-jira-secret",
        "webhook-generic-secret",
    ] {
        let path = dir.as_path().join(f);
        let secret = std::fs::read_to_string(&path).unwrap();
        assert!(
            !secret.trim().is_empty() && !cfg.contains(secret.trim()),
            "{f}"
        );
        assert!(cfg.contains(f), "{f} is referenced");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
    }

    for source in ["servicenow", "jira", "generic"] {
        let i = printed
            .iter()
            .position(|p| p.comment.starts_with(&format!("{source}:")))
            .unwrap_or_else(|| panic!("a {source} command is printed"));
        let (send, show) = (&printed[i], &printed[i + 1]);
        assert!(
            send.command.contains(&format!("/webhooks/{source}")),
            "{}",
            send.command
        );
        assert!(show.comment.contains("notes"), "{}", show.comment);
        let user = send
            .comment
            .split("log off ")
            .nth(1)
            .and_then(|r| r.split([';', ' ']).next())
            .unwrap_or_else(|| panic!("the {source} comment names the user: {}", send.comment))
            .to_string();
        assert_eq!(
            sessions_of(&http, &op, &sg, &user).await,
            1,
            "{user} has a session"
        );
        assert!(notes(&show.command, &sg).is_empty(), "no note yet");

        // The delivery, as printed: a job.
        let (status, _, first) = http_answer(&sh(&send.command, &sg));
        assert_eq!(status, 202, "{source}: {first}");
        let job_id = first["job_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{source}: a job id in {first}"))
            .to_string();
        let t0 = Instant::now();
        let job = loop {
            let j = get(&http, &admin, &format!("{sg}/jobs/{job_id}")).await;
            if !matches!(j["state"].as_str(), Some("queued" | "running")) {
                break j;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "job ended: {j}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(job["state"], "succeeded", "{source}: {job}");
        assert_eq!(job["created_by"], format!("webhook:{source}"), "{job}");
        assert_eq!(
            sessions_of(&http, &op, &sg, &user).await,
            0,
            "{source}: {user} was logged off"
        );
        assert_eq!(logoffs_of(&http, &auditor, &sg, &user).await, 1);

        // The ticket shows the job's result.
        let t0 = Instant::now();
        let written = loop {
            let n = notes(&show.command, &sg);
            if !n.is_empty() {
                break n;
            }
            let j = get(&http, &admin, &format!("{sg}/jobs/{job_id}")).await;
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{source}: the ticket shows a note within 30 s; the job's write_back: {}",
                j["write_back"]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(
            written[0].contains(&job_id) && written[0].contains("succeeded"),
            "{source}: the note names the job and its state: {}",
            written[0]
        );
        let t0 = Instant::now();
        loop {
            let j = get(&http, &admin, &format!("{sg}/jobs/{job_id}")).await;
            if j["write_back"]["state"] == "done" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "write_back done: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The same delivery again: the first answer, nothing new.
        let (status, headers, again) = http_answer(&sh(&send.command, &sg));
        assert_eq!(status, 202, "{source}: {again}");
        assert_eq!(again["job_id"], job_id.as_str(), "{again}");
        assert_eq!(header(&headers, "webhook-replayed"), Some("true"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            notes(&show.command, &sg).len(),
            1,
            "{source}: no second note"
        );
        assert_eq!(
            logoffs_of(&http, &auditor, &sg, &user).await,
            1,
            "{source}: no second logoff"
        );
    }
    let jobs = get(&http, &admin, &format!("{sg}/jobs?limit=100")).await;
    let webhook_jobs = jobs["jobs"]
        .as_array()
        .unwrap_or_else(|| panic!("jobs: {jobs}"))
        .iter()
        .filter(|j| {
            j["created_by"]
                .as_str()
                .is_some_and(|c| c.starts_with("webhook:"))
        })
        .count();
    assert_eq!(webhook_jobs, 3, "one job per source: {jobs}");
}

/// The banner's "Try:" part (up to the next unindented line).
fn try_commands(lines: &[String]) -> Vec<Printed> {
    let start = lines
        .iter()
        .position(|l| l.trim() == "Try:")
        .expect("the banner has a Try: part")
        + 1;
    let end = lines[start..]
        .iter()
        .position(|l| !l.is_empty() && !l.starts_with(' '))
        .map_or(lines.len(), |i| start + i);
    printed(&lines[start..end])
}

/// Runs `cmd` with `$SG` and `$KEY` set as the banner's `export` line sets them.
fn sh_key(cmd: &str, sg: &str, key: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SG", sg)
        .env("KEY", key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}\nexit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("JSON ({e}): {out}"))
}

/// The fleet examples of the banner, pasted as printed: a bulk dry run (one result per
/// target), one user everywhere (lookup, then a dry-run logoff), a whole-host dry run with the
/// admin key, a user logoff as a job with `Location` and its polling, and a retry with an
/// `Idempotency-Key` that is answered from the first call.
#[tokio::test]
async fn demo_fleet_commands_work_as_printed() {
    let demo = DemoProcess::start();
    let (port, lines) = (demo.port, demo.lines.clone());
    let printed = try_commands(&lines);
    let export = printed
        .first()
        .map(|p| p.command.clone())
        .filter(|c| c.starts_with("export SG="))
        .or_else(|| {
            lines
                .iter()
                .map(|l| l.trim().to_string())
                .find(|l| l.starts_with("export SG="))
        })
        .expect("the export line");
    let key = export
        .split("KEY=")
        .nth(1)
        .and_then(|k| k.split_whitespace().next())
        .expect("KEY in the export line")
        .to_string();
    let sg = format!("http://127.0.0.1:{port}");
    let find = |prefix: &str| {
        printed
            .iter()
            .find(|p| p.comment.starts_with(prefix))
            .unwrap_or_else(|| panic!("a '{prefix}' example is printed"))
    };
    let run = |cmd: &str| sh_key(cmd, &sg, &key);

    // A bulk dry run: one result per target, in order; the unknown id is not a 500.
    let bulk = json_of(&run(&find("fleet: a bulk call").command));
    let results = bulk["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{bulk}"));
    assert_eq!(results.len(), 2, "{bulk}");
    assert_eq!(results[0]["outcome"], "would_do", "{bulk}");
    assert_eq!(bulk["summary"]["would_do"], 1, "{bulk}");

    // One user everywhere: the lookup finds sessions; the dry-run logoff would act on each.
    let user = find("fleet: one user everywhere");
    let mut cmds = user.command.split("\ncurl");
    let lookup = json_of(&run(cmds.next().unwrap()));
    let found = lookup["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{lookup}"))
        .len();
    assert!(found >= 1, "{lookup}");
    let dry = json_of(&run(&format!(
        "curl{}",
        cmds.next().expect("the logoff command")
    )));
    assert_eq!(dry["summary"]["would_do"], found, "{dry}");

    // Every session of one host (admin key printed in the command), dry run.
    let host = json_of(&run(&find("fleet: every session of one host").command));
    let n = host["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{host}"))
        .len();
    assert!(n >= 1, "{host}");
    assert_eq!(host["summary"]["failed"], 0, "{host}");

    // A job: 202 with Location, listed, and polled to its end with the printed command.
    let job = find("fleet as a durable job");
    let cmds: Vec<&str> = job.command.split('\n').collect();
    assert_eq!(cmds.len(), 3, "{}", job.command);
    let (status, headers, body) = http_answer(&run(cmds[0]));
    assert_eq!(status, 202, "{body}");
    let location = header(&headers, "location").expect("Location").to_string();
    let id = location.trim_start_matches("/jobs/").to_string();
    let listed = json_of(&run(cmds[1]));
    assert_eq!(listed["jobs"][0]["id"], id.as_str(), "{listed}");
    let poll = cmds[2].replace("<id from Location>", &id);
    let t0 = Instant::now();
    let ended = loop {
        let j = json_of(&run(&poll));
        if !matches!(j["state"].as_str(), Some("queued" | "running")) {
            break j;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "job ended: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ended["state"], "succeeded", "{ended}");
    assert!(
        ended["counts"]["done"].as_u64().unwrap_or(0) >= 1,
        "{ended}"
    );

    // The same call with the same Idempotency-Key twice: the first answer, replayed.
    let retry = find("retry safely");
    let (s1, h1, b1) = http_answer(&run(&retry.command));
    let (s2, h2, b2) = http_answer(&run(&retry.command));
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    assert_eq!(b1, b2, "the same answer");
    assert_eq!(header(&h1, "idempotency-replayed"), None);
    assert_eq!(header(&h2, "idempotency-replayed"), Some("true"));
}
