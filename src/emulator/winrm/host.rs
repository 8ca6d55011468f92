//! What an emulated Windows host "runs": sessiongate's own script templates, applied to an
//! in-memory session table (RD Session Host or MultiPoint flavour).

use super::{Flavour, HostState, StateInner};
use crate::providers::winrm::scripts::{self, CloseRow, ScriptResult, SessionRow, Template};
use serde::Serialize;
use std::collections::BTreeMap;

/// One session of the emulated host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmuSession {
    pub user: String,
    pub domain: String,
    /// WTS / WMS state name: `Active`, `Disconnected`, …
    pub state: String,
    pub station: String,
    /// Member of the host's Administrators group (MultiPoint admin rule).
    pub admin: bool,
    pub locked: bool,
}

impl EmuSession {
    pub fn user(user: &str, domain: &str, active: bool) -> Self {
        Self {
            user: user.into(),
            domain: domain.into(),
            state: if active { "Active" } else { "Disconnected" }.into(),
            station: if active {
                "RDP-Tcp#1".into()
            } else {
                String::new()
            },
            admin: false,
            locked: false,
        }
    }
}

/// A message delivered to a session (RDS `WTSSendMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SentMessage {
    pub session: u32,
    pub title: String,
    pub body: String,
}

/// A script the host received, as decoded from the wire (for the injection tests).
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedScript {
    pub host: String,
    /// The full command line (`Command` plus `Arguments`) as received.
    pub command_line: String,
    /// Whether the script arrived on stdin behind the fixed bootstrap.
    pub via_stdin: bool,
    /// The recognised template, `None` when the script was refused.
    pub template: Option<Template>,
    /// Raw slot values.
    pub slots: BTreeMap<String, String>,
    /// Base64 slots decoded as the script decodes them (UTF-8).
    pub texts: BTreeMap<String, String>,
}

fn protected(user: &str, domain: &str, protect: &str) -> bool {
    if protect.is_empty() || user.is_empty() {
        return false;
    }
    let full = format!("{domain}\\{user}");
    protect.eq_ignore_ascii_case(user)
        || protect.eq_ignore_ascii_case(&full)
        || (protect.contains('@')
            && protect
                .split('@')
                .next()
                .is_some_and(|p| p.eq_ignore_ascii_case(user)))
}

fn json(r: &ScriptResult) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into())
}

fn fail(win32: u32, message: &str) -> ScriptResult {
    ScriptResult {
        ok: false,
        win32: Some(win32),
        message: Some(message.into()),
        ..Default::default()
    }
}

fn win32_text(code: u32) -> &'static str {
    match code {
        5 => "Access is denied.",
        1168 => "Element not found.",
        1722 => "The RPC server is unavailable.",
        _ => "The operation failed.",
    }
}

const NOT_RECOGNISED: &str = "The script is not one this host accepts: only sessiongate's fixed script templates run here.\r\n    + CategoryInfo          : ParserError: (:) [], ParentContainsErrorRecordException\r\n    + FullyQualifiedErrorId : UnexpectedToken\r\n";

/// Runs a PowerShell script; returns (stdout, stderr, exit code).
pub(super) fn run_script(
    st: &StateInner,
    host: &HostState,
    command_line: &str,
    via_stdin: bool,
    script: &str,
) -> (String, String, i64) {
    let rec = scripts::recognise(script);
    let mut texts = BTreeMap::new();
    if let Some(r) = &rec {
        for name in r.template.slots() {
            if !matches!(name, "ID" | "IDS" | "ADMIN")
                && let Some(t) = r.text(name)
            {
                texts.insert(name.to_string(), t);
            }
        }
    }
    st.scripts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(ReceivedScript {
            host: host.name.clone(),
            command_line: command_line.to_string(),
            via_stdin,
            template: rec.as_ref().map(|r| r.template),
            slots: rec.as_ref().map(|r| r.slots.clone()).unwrap_or_default(),
            texts,
        });
    let Some(rec) = rec else {
        return (String::new(), NOT_RECOGNISED.to_string(), 1);
    };
    let flavour_ok = matches!(
        (st.flavour, rec.template),
        (
            Flavour::Rds,
            Template::RdsList
                | Template::RdsLogoff
                | Template::RdsDisconnect
                | Template::RdsMessage
        ) | (
            Flavour::MultiPoint,
            Template::MpList
                | Template::MpClose
                | Template::MpCloseAll
                | Template::MpDisconnect
                | Template::MpLock
                | Template::MpUnlock
        )
    );
    if !flavour_ok {
        let msg = "The term is not recognized as the name of a cmdlet, function, script file, or operable program.\r\n    + CategoryInfo          : ObjectNotFound: (:String) [], CommandNotFoundException\r\n";
        return (
            json(&ScriptResult {
                ok: false,
                win32: Some(0),
                message: Some(msg.trim().into()),
                ..Default::default()
            }),
            String::new(),
            0,
        );
    }
    let forced = host
        .mode
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .force_win32;
    if let Some(code) = forced {
        return (json(&fail(code, win32_text(code))), String::new(), 0);
    }
    let protect = rec.text("PROTECT").unwrap_or_default();
    let mut sessions = host.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let rows = |s: &BTreeMap<u32, EmuSession>| -> Vec<SessionRow> {
        s.iter()
            .map(|(id, x)| SessionRow {
                id: *id,
                user: x.user.clone(),
                domain: x.domain.clone(),
                state: x.state.clone(),
                station: x.station.clone(),
                admin: (st.flavour == Flavour::MultiPoint).then_some(x.admin),
            })
            .collect()
    };
    let result = match rec.template {
        Template::RdsList | Template::MpList => ScriptResult {
            ok: true,
            sessions: Some(rows(&sessions)),
            ..Default::default()
        },
        Template::MpClose | Template::MpCloseAll => {
            let (targets, include_admin) = if rec.template == Template::MpClose {
                (rec.ints("IDS"), true)
            } else {
                (
                    sessions.keys().copied().collect(),
                    rec.int("ADMIN").unwrap_or(0) != 0,
                )
            };
            let mut results = Vec::new();
            for id in targets {
                let Some(s) = sessions.get(&id).cloned() else {
                    results.push(CloseRow {
                        id,
                        user: None,
                        domain: None,
                        admin: false,
                        status: "not_found".into(),
                        win32: Some(1168),
                        message: None,
                    });
                    continue;
                };
                let mut row = CloseRow {
                    id,
                    user: Some(s.user.clone()),
                    domain: Some(s.domain.clone()),
                    admin: s.admin,
                    status: "closed".into(),
                    win32: None,
                    message: None,
                };
                // The remoting session runs in session 0 on a real host.
                if id == 0 || protected(&s.user, &s.domain, &protect) {
                    row.status = "protected".into();
                } else if s.admin && !include_admin {
                    row.status = "skipped_admin".into();
                } else {
                    sessions.remove(&id);
                }
                results.push(row);
            }
            ScriptResult {
                ok: true,
                results: Some(results),
                ..Default::default()
            }
        }
        t => {
            let Some(id) = rec.int("ID") else {
                return (String::new(), NOT_RECOGNISED.to_string(), 1);
            };
            match sessions.get_mut(&id) {
                None => fail(1168, "No session with this id exists on the host."),
                Some(s) if protected(&s.user, &s.domain, &protect) => ScriptResult {
                    ok: false,
                    protected: Some(true),
                    message: Some("The session belongs to the gateway account.".into()),
                    ..Default::default()
                },
                Some(s) => {
                    match t {
                        Template::RdsLogoff => {
                            sessions.remove(&id);
                        }
                        Template::RdsDisconnect | Template::MpDisconnect => {
                            s.state = "Disconnected".into();
                            s.station = String::new();
                        }
                        Template::MpLock => s.locked = true,
                        Template::MpUnlock => s.locked = false,
                        Template::RdsMessage => {
                            host.messages
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(SentMessage {
                                    session: id,
                                    title: rec.text("TITLE").unwrap_or_default(),
                                    body: rec.text("BODY").unwrap_or_default(),
                                });
                        }
                        _ => {}
                    }
                    ScriptResult {
                        ok: true,
                        ..Default::default()
                    }
                }
            }
        }
    };
    (json(&result), String::new(), 0)
}
