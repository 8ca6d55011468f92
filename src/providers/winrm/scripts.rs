//! Fixed PowerShell templates. Nothing the caller typed is ever spliced into script text:
//! only integers (parsed as `u32` before they get here) are inserted, as numbers; every free
//! text travels as base64 of its UTF-8 bytes inside single quotes (the base64 alphabet is inert
//! there) and is decoded by the script itself. Each script writes exactly one JSON document to
//! stdout (`ConvertTo-Json -Compress`).
//!
//! A template is text with slots `%%NAME%%`. [`recognise`] is the inverse used by the emulator:
//! it accepts a script only if it is byte-for-byte one template rendered with valid slot values.

use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;

/// What a slot may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// A u32 in decimal.
    Int,
    /// Comma-separated u32s (at least one).
    IntList,
    /// Standard base64 (possibly empty).
    B64,
}

fn slot_kind(name: &str) -> SlotKind {
    match name {
        "ID" | "ADMIN" => SlotKind::Int,
        "IDS" => SlotKind::IntList,
        _ => SlotKind::B64,
    }
}

fn slot_char_ok(k: SlotKind, c: char) -> bool {
    match k {
        SlotKind::Int => c.is_ascii_digit(),
        SlotKind::IntList => c.is_ascii_digit() || c == ',',
        SlotKind::B64 => c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='),
    }
}

fn slot_value_ok(k: SlotKind, v: &str) -> bool {
    match k {
        SlotKind::Int => v.parse::<u32>().is_ok(),
        SlotKind::IntList => !v.is_empty() && v.split(',').all(|p| p.parse::<u32>().is_ok()),
        SlotKind::B64 => base64::engine::general_purpose::STANDARD.decode(v).is_ok(),
    }
}

/// Base64 of the UTF-8 bytes of a free text, for a `B64` slot.
pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

const COMMON: &str = r#"$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$ConfirmPreference = 'None'
function Out-SgJson($o) { [Console]::Out.Write((ConvertTo-Json -InputObject $o -Compress -Depth 6)) }
function ConvertFrom-SgB64([string]$b) { [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($b)) }
function Test-SgProtected([string]$user, [string]$domain, [string]$protect) {
  if ([string]::IsNullOrEmpty($protect) -or [string]::IsNullOrEmpty($user)) { return $false }
  if ($protect -eq $user -or $protect -eq ($domain + '\' + $user)) { return $true }
  if ($protect.Contains('@') -and $protect.Split('@')[0] -eq $user) { return $true }
  return $false
}
"#;

const RDS_PRELUDE: &str = r#"if (-not ('SessionGate.Wts' -as [type])) {
Add-Type -TypeDefinition @'
using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
namespace SessionGate {
public static class Wts {
  [StructLayout(LayoutKind.Sequential, CharSet = CharSet.Unicode)]
  struct SessionInfo { public int SessionId; public IntPtr WinStationName; public int State; }
  [DllImport("wtsapi32.dll", SetLastError = true, CharSet = CharSet.Unicode)]
  static extern bool WTSEnumerateSessionsW(IntPtr server, int reserved, int version, out IntPtr info, out int count);
  [DllImport("wtsapi32.dll", SetLastError = true, CharSet = CharSet.Unicode)]
  static extern bool WTSQuerySessionInformationW(IntPtr server, int sessionId, int infoClass, out IntPtr buffer, out int bytes);
  [DllImport("wtsapi32.dll")]
  static extern void WTSFreeMemory(IntPtr memory);
  [DllImport("wtsapi32.dll", SetLastError = true)]
  static extern bool WTSLogoffSession(IntPtr server, int sessionId, bool wait);
  [DllImport("wtsapi32.dll", SetLastError = true)]
  static extern bool WTSDisconnectSession(IntPtr server, int sessionId, bool wait);
  [DllImport("wtsapi32.dll", SetLastError = true, CharSet = CharSet.Unicode)]
  static extern bool WTSSendMessageW(IntPtr server, int sessionId, string title, int titleBytes, string message, int messageBytes, int style, int timeout, out int response, bool wait);
  static readonly string[] States = { "Active", "Connected", "ConnectQuery", "Shadow", "Disconnected", "Idle", "Listen", "Reset", "Down", "Init" };
  static string Query(int id, int infoClass) {
    IntPtr buf; int n;
    if (!WTSQuerySessionInformationW(IntPtr.Zero, id, infoClass, out buf, out n)) { return ""; }
    try { return Marshal.PtrToStringUni(buf) ?? ""; } finally { WTSFreeMemory(buf); }
  }
  public static int Enumerate(List<object[]> rows) {
    IntPtr p; int c;
    if (!WTSEnumerateSessionsW(IntPtr.Zero, 0, 1, out p, out c)) { return Marshal.GetLastWin32Error(); }
    try {
      int size = Marshal.SizeOf(typeof(SessionInfo));
      for (int i = 0; i < c; i++) {
        SessionInfo s = (SessionInfo)Marshal.PtrToStructure(new IntPtr(p.ToInt64() + i * size), typeof(SessionInfo));
        if (s.State == 6 || s.State == 8) { continue; }
        string state = (s.State >= 0 && s.State < States.Length) ? States[s.State] : "Unknown";
        rows.Add(new object[] { s.SessionId, Query(s.SessionId, 5), Query(s.SessionId, 7), state, Marshal.PtrToStringUni(s.WinStationName) ?? "" });
      }
    } finally { WTSFreeMemory(p); }
    return 0;
  }
  public static int Logoff(int id) { return WTSLogoffSession(IntPtr.Zero, id, false) ? 0 : Marshal.GetLastWin32Error(); }
  public static int Disconnect(int id) { return WTSDisconnectSession(IntPtr.Zero, id, false) ? 0 : Marshal.GetLastWin32Error(); }
  public static int Message(int id, string title, string body) {
    int r;
    return WTSSendMessageW(IntPtr.Zero, id, title, title.Length * 2, body, body.Length * 2, 0, 0, out r, false) ? 0 : Marshal.GetLastWin32Error();
  }
}
}
'@
}
function Get-SgRows {
  $rows = New-Object 'System.Collections.Generic.List[object[]]'
  $err = [SessionGate.Wts]::Enumerate($rows)
  if ($err -ne 0) { throw (New-Object ComponentModel.Win32Exception($err)) }
  @(foreach ($r in $rows) { [ordered]@{ id = [uint32]$r[0]; user = [string]$r[1]; domain = [string]$r[2]; state = [string]$r[3]; station = [string]$r[4] } })
}
function Invoke-SgAction([uint32]$id, [string]$protect, [scriptblock]$act) {
  try {
    $row = @(Get-SgRows | Where-Object { $_.id -eq $id }) | Select-Object -First 1
    if ($null -eq $row) { Out-SgJson ([ordered]@{ ok = $false; win32 = 1168; message = 'No session with this id exists on the host.' }); return }
    if (Test-SgProtected $row.user $row.domain $protect) { Out-SgJson ([ordered]@{ ok = $false; protected = $true; message = 'The session belongs to the gateway account.' }); return }
    $err = & $act
    if ($err -ne 0) { Out-SgJson ([ordered]@{ ok = $false; win32 = [int]$err; message = (New-Object ComponentModel.Win32Exception([int]$err)).Message }); return }
    Out-SgJson ([ordered]@{ ok = $true })
  } catch {
    $code = 0; if ($_.Exception -is [ComponentModel.Win32Exception]) { $code = $_.Exception.NativeErrorCode }
    Out-SgJson ([ordered]@{ ok = $false; win32 = $code; message = $_.Exception.Message })
  }
}
"#;

const RDS_LIST: &str = r#"try {
  Out-SgJson ([ordered]@{ ok = $true; sessions = @(Get-SgRows) })
} catch {
  $code = 0; if ($_.Exception -is [ComponentModel.Win32Exception]) { $code = $_.Exception.NativeErrorCode }
  Out-SgJson ([ordered]@{ ok = $false; win32 = $code; message = $_.Exception.Message })
}
"#;

const RDS_LOGOFF: &str = r#"$id = %%ID%%
$protect = ConvertFrom-SgB64 '%%PROTECT%%'
Invoke-SgAction $id $protect { [SessionGate.Wts]::Logoff($id) }
"#;

const RDS_DISCONNECT: &str = r#"$id = %%ID%%
$protect = ConvertFrom-SgB64 '%%PROTECT%%'
Invoke-SgAction $id $protect { [SessionGate.Wts]::Disconnect($id) }
"#;

const RDS_MESSAGE: &str = r#"$id = %%ID%%
$title = ConvertFrom-SgB64 '%%TITLE%%'
$body = ConvertFrom-SgB64 '%%BODY%%'
Invoke-SgAction $id '' { [SessionGate.Wts]::Message($id, $title, $body) }
"#;

const MP_PRELUDE: &str = r#"function Get-SgAdmins {
  $set = @{}
  try { foreach ($m in @(Get-LocalGroupMember -SID 'S-1-5-32-544')) { $set[[string]$m.Name] = $true } } catch { }
  $set
}
function Get-SgRows {
  $admins = Get-SgAdmins
  @(Get-WmsSession | ForEach-Object {
    $full = [string]$_.DomainName + '\' + [string]$_.UserName
    [ordered]@{ id = [uint32]$_.SessionId; user = [string]$_.UserName; domain = [string]$_.DomainName; state = [string]$_.State; station = [string]$_.StationId; admin = [bool]$admins.ContainsKey($full) }
  })
}
function Get-SgWin32($e) {
  if ($e.Exception -is [Management.Automation.ItemNotFoundException]) { return 1168 }
  if ($e.Exception -is [UnauthorizedAccessException]) { return 5 }
  if ($e.Exception -is [ComponentModel.Win32Exception]) { return $e.Exception.NativeErrorCode }
  return 0
}
function Close-SgSessions($targets, $rows, [string]$protect, [bool]$includeAdmin) {
  $own = (Get-Process -Id $PID).SessionId
  @(foreach ($id in $targets) {
    $row = @($rows | Where-Object { $_.id -eq $id }) | Select-Object -First 1
    if ($null -eq $row) { [ordered]@{ id = [uint32]$id; status = 'not_found'; win32 = 1168 }; continue }
    $r = [ordered]@{ id = [uint32]$id; user = $row.user; domain = $row.domain; admin = $row.admin; status = 'closed' }
    if ($id -eq 0 -or $id -eq $own -or (Test-SgProtected $row.user $row.domain $protect)) { $r.status = 'protected'; $r; continue }
    if ($row.admin -and -not $includeAdmin) { $r.status = 'skipped_admin'; $r; continue }
    try { Close-WmsSession -SessionId $id } catch { $r.win32 = Get-SgWin32 $_; $r.status = 'error'; $r.message = $_.Exception.Message }
    $r
  })
}
function Invoke-SgAction([uint32]$id, [string]$protect, [scriptblock]$act) {
  try {
    $row = @(Get-SgRows | Where-Object { $_.id -eq $id }) | Select-Object -First 1
    if ($null -eq $row) { Out-SgJson ([ordered]@{ ok = $false; win32 = 1168; message = 'No session with this id exists on the host.' }); return }
    if (Test-SgProtected $row.user $row.domain $protect) { Out-SgJson ([ordered]@{ ok = $false; protected = $true; message = 'The session belongs to the gateway account.' }); return }
    & $act
    Out-SgJson ([ordered]@{ ok = $true })
  } catch {
    Out-SgJson ([ordered]@{ ok = $false; win32 = (Get-SgWin32 $_); message = $_.Exception.Message })
  }
}
"#;

const MP_LIST: &str = r#"try {
  Out-SgJson ([ordered]@{ ok = $true; sessions = @(Get-SgRows) })
} catch {
  Out-SgJson ([ordered]@{ ok = $false; win32 = (Get-SgWin32 $_); message = $_.Exception.Message })
}
"#;

const MP_CLOSE: &str = r#"$ids = @(%%IDS%%)
$protect = ConvertFrom-SgB64 '%%PROTECT%%'
try {
  Out-SgJson ([ordered]@{ ok = $true; results = @(Close-SgSessions $ids (Get-SgRows) $protect $true) })
} catch {
  Out-SgJson ([ordered]@{ ok = $false; win32 = (Get-SgWin32 $_); message = $_.Exception.Message })
}
"#;

const MP_CLOSE_ALL: &str = r#"$includeAdmin = (%%ADMIN%% -ne 0)
$protect = ConvertFrom-SgB64 '%%PROTECT%%'
try {
  $rows = Get-SgRows
  $ids = @($rows | ForEach-Object { $_.id })
  Out-SgJson ([ordered]@{ ok = $true; results = @(Close-SgSessions $ids $rows $protect $includeAdmin) })
} catch {
  Out-SgJson ([ordered]@{ ok = $false; win32 = (Get-SgWin32 $_); message = $_.Exception.Message })
}
"#;

const MP_DISCONNECT: &str = r#"$id = %%ID%%
$protect = ConvertFrom-SgB64 '%%PROTECT%%'
Invoke-SgAction $id $protect { Disconnect-WmsSession -SessionId $id }
"#;

const MP_LOCK: &str = r#"$id = %%ID%%
$protect = ConvertFrom-SgB64 '%%PROTECT%%'
Invoke-SgAction $id $protect { Lock-WmsSession -SessionId $id }
"#;

const MP_UNLOCK: &str = r#"$id = %%ID%%
Invoke-SgAction $id '' { Unlock-WmsSession -SessionId $id }
"#;

/// The templates sessiongate sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    RdsList,
    RdsLogoff,
    RdsDisconnect,
    RdsMessage,
    MpList,
    /// Close-WmsSession for a list of ids.
    MpClose,
    /// Close-WmsSession -All semantics (never the gateway's own session).
    MpCloseAll,
    MpDisconnect,
    MpLock,
    MpUnlock,
}

impl Template {
    pub const ALL: [Template; 10] = [
        Template::RdsList,
        Template::RdsLogoff,
        Template::RdsDisconnect,
        Template::RdsMessage,
        Template::MpList,
        Template::MpClose,
        Template::MpCloseAll,
        Template::MpDisconnect,
        Template::MpLock,
        Template::MpUnlock,
    ];

    fn parts(self) -> [&'static str; 3] {
        match self {
            Template::RdsList => [COMMON, RDS_PRELUDE, RDS_LIST],
            Template::RdsLogoff => [COMMON, RDS_PRELUDE, RDS_LOGOFF],
            Template::RdsDisconnect => [COMMON, RDS_PRELUDE, RDS_DISCONNECT],
            Template::RdsMessage => [COMMON, RDS_PRELUDE, RDS_MESSAGE],
            Template::MpList => [COMMON, MP_PRELUDE, MP_LIST],
            Template::MpClose => [COMMON, MP_PRELUDE, MP_CLOSE],
            Template::MpCloseAll => [COMMON, MP_PRELUDE, MP_CLOSE_ALL],
            Template::MpDisconnect => [COMMON, MP_PRELUDE, MP_DISCONNECT],
            Template::MpLock => [COMMON, MP_PRELUDE, MP_LOCK],
            Template::MpUnlock => [COMMON, MP_PRELUDE, MP_UNLOCK],
        }
    }

    fn text(self) -> String {
        self.parts().concat()
    }

    /// Slot names in order of appearance.
    pub fn slots(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        for part in self.parts() {
            let mut rest = part;
            while let Some(i) = rest.find("%%") {
                let after = &rest[i + 2..];
                let Some(j) = after.find("%%") else { break };
                out.push(&after[..j]);
                rest = &after[j + 2..];
            }
        }
        out
    }
}

/// A rendered script.
#[derive(Debug, Clone)]
pub struct Script {
    pub template: Template,
    pub text: String,
}

fn render(t: Template, values: &[(&str, String)]) -> Script {
    let mut text = t.text();
    for (k, v) in values {
        text = text.replace(&format!("%%{k}%%"), v);
    }
    Script { template: t, text }
}

pub fn rds_list() -> Script {
    render(Template::RdsList, &[])
}
pub fn rds_logoff(id: u32, protect: &str) -> Script {
    render(
        Template::RdsLogoff,
        &[("ID", id.to_string()), ("PROTECT", b64(protect))],
    )
}
pub fn rds_disconnect(id: u32, protect: &str) -> Script {
    render(
        Template::RdsDisconnect,
        &[("ID", id.to_string()), ("PROTECT", b64(protect))],
    )
}
pub fn rds_message(id: u32, title: &str, body: &str) -> Script {
    render(
        Template::RdsMessage,
        &[
            ("ID", id.to_string()),
            ("TITLE", b64(title)),
            ("BODY", b64(body)),
        ],
    )
}
pub fn mp_list() -> Script {
    render(Template::MpList, &[])
}
/// `ids` must be non-empty.
pub fn mp_close(ids: &[u32], protect: &str) -> Script {
    let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    render(
        Template::MpClose,
        &[("IDS", list), ("PROTECT", b64(protect))],
    )
}
pub fn mp_close_all(include_admin: bool, protect: &str) -> Script {
    render(
        Template::MpCloseAll,
        &[
            ("ADMIN", u32::from(include_admin).to_string()),
            ("PROTECT", b64(protect)),
        ],
    )
}
pub fn mp_disconnect(id: u32, protect: &str) -> Script {
    render(
        Template::MpDisconnect,
        &[("ID", id.to_string()), ("PROTECT", b64(protect))],
    )
}
pub fn mp_lock(id: u32, protect: &str) -> Script {
    render(
        Template::MpLock,
        &[("ID", id.to_string()), ("PROTECT", b64(protect))],
    )
}
pub fn mp_unlock(id: u32) -> Script {
    render(Template::MpUnlock, &[("ID", id.to_string())])
}

/// A script recognised as one of our templates, with its slot values (raw as sent).
#[derive(Debug, Clone)]
pub struct Recognised {
    pub template: Template,
    pub slots: BTreeMap<String, String>,
}

impl Recognised {
    /// An integer slot.
    pub fn int(&self, name: &str) -> Option<u32> {
        self.slots.get(name).and_then(|v| v.parse().ok())
    }
    /// An integer-list slot.
    pub fn ints(&self, name: &str) -> Vec<u32> {
        self.slots
            .get(name)
            .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
    /// A base64 text slot, decoded as the script would decode it.
    pub fn text(&self, name: &str) -> Option<String> {
        let raw = self.slots.get(name)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

fn match_template(t: Template, script: &str) -> Option<Recognised> {
    let text = t.text();
    let mut slots = BTreeMap::new();
    let mut pat = text.as_str();
    let mut s = script;
    loop {
        match pat.find("%%") {
            None => {
                if pat != s {
                    return None;
                }
                break;
            }
            Some(i) => {
                let lit = &pat[..i];
                s = s.strip_prefix(lit)?;
                let after = &pat[i + 2..];
                let j = after.find("%%")?;
                let name = &after[..j];
                pat = &after[j + 2..];
                let kind = slot_kind(name);
                let end = s
                    .char_indices()
                    .find(|(_, c)| !slot_char_ok(kind, *c))
                    .map(|(k, _)| k)
                    .unwrap_or(s.len());
                let value = &s[..end];
                if !slot_value_ok(kind, value) {
                    return None;
                }
                if let Some(prev) = slots.insert(name.to_string(), value.to_string())
                    && prev != value
                {
                    return None;
                }
                s = &s[end..];
            }
        }
    }
    // Exact re-render check: the script is precisely the template with these values.
    let values: Vec<(&str, String)> = slots.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    if render(t, &values).text != script {
        return None;
    }
    Some(Recognised { template: t, slots })
}

/// Recognises a script as one of our templates (exact match with valid slot values).
pub fn recognise(script: &str) -> Option<Recognised> {
    Template::ALL
        .iter()
        .find_map(|t| match_template(*t, script))
}

/// One session as a list script reports it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct SessionRow {
    pub id: u32,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub station: String,
    /// MultiPoint only: the user is a member of the host's Administrators group
    /// (absent where the script does not report it).
    #[serde(default)]
    pub admin: Option<bool>,
}

/// One entry of a MultiPoint close result.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub struct CloseRow {
    pub id: u32,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// `closed`, `not_found`, `protected`, `skipped_admin` or `error`.
    pub status: String,
    #[serde(default)]
    pub win32: Option<u32>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The one JSON document every script prints.
#[derive(Debug, Clone, Deserialize, serde::Serialize, Default)]
pub struct ScriptResult {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub win32: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<SessionRow>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<CloseRow>>,
}

/// Parses a script's stdout (the JSON document, surrounded by optional whitespace/BOM).
pub fn parse_result(stdout: &str) -> Result<ScriptResult, String> {
    let t = stdout.trim().trim_start_matches('\u{feff}');
    serde_json::from_str(t).map_err(|e| {
        format!(
            "script output is not the expected JSON ({e}): {}",
            crate::domain::truncate_for_display(t, 200)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_round_trips_through_recognise() {
        let nasty = "a'b\"c\u{2018}\u{2019}\u{201A}\u{201B};&|`$(x)${y}\r\n\u{7}";
        let scripts = [
            rds_list(),
            rds_logoff(7, nasty),
            rds_disconnect(0, ""),
            rds_message(u32::MAX, nasty, nasty),
            mp_list(),
            mp_close(&[1, 2, 3], "CONTOSO\\svc"),
            mp_close_all(true, ""),
            mp_disconnect(4, ""),
            mp_lock(5, ""),
            mp_unlock(6),
        ];
        for s in scripts {
            let r = recognise(&s.text).unwrap_or_else(|| panic!("{:?} not recognised", s.template));
            assert_eq!(r.template, s.template);
        }
        let r = recognise(&rds_message(9, nasty, "body").text).unwrap();
        assert_eq!(r.int("ID"), Some(9));
        assert_eq!(r.text("TITLE").as_deref(), Some(nasty));
        assert_eq!(r.text("BODY").as_deref(), Some("body"));
        let r = recognise(&mp_close(&[3, 4], "").text).unwrap();
        assert_eq!(r.ints("IDS"), vec![3, 4]);
    }

    #[test]
    fn free_text_never_appears_in_the_script() {
        let s = rds_message(1, "'; Remove-Item C:\\ -Recurse; '", "$(calc)");
        assert!(!s.text.contains("Remove-Item"));
        assert!(!s.text.contains("$(calc)"));
    }

    #[test]
    fn tampered_scripts_are_not_recognised() {
        let s = rds_logoff(3, "").text;
        assert!(recognise(&s.replace("$id = 3", "$id = 3; calc")).is_none());
        assert!(recognise(&format!("{s} ")).is_none());
        assert!(recognise(&s.replace("Logoff($id)", "Logoff($id); calc")).is_none());
        // Swapping the verb gives exactly another template, recognised as that one.
        let swapped = recognise(&s.replace("Logoff($id)", "Disconnect($id)")).unwrap();
        assert_eq!(swapped.template, Template::RdsDisconnect);
        assert!(recognise("Get-Process").is_none());
        assert!(
            recognise(
                &rds_logoff(3, "")
                    .text
                    .replace("$id = 3", "$id = 99999999999")
            )
            .is_none()
        );
    }

    #[test]
    fn ordinary_scripts_fit_on_the_command_line() {
        use crate::providers::winrm::transport::{MAX_ENCODED_COMMAND_LINE, encode_command};
        for s in [
            rds_list(),
            rds_message(1, "Maintenance", &"x".repeat(1000)),
            mp_close_all(true, "CONTOSO\\svc-gateway"),
            mp_close(&(1..=50).collect::<Vec<_>>(), "CONTOSO\\svc-gateway"),
        ] {
            let n = encode_command(&s.text).len();
            assert!(n < MAX_ENCODED_COMMAND_LINE, "{:?}: {n}", s.template);
        }
    }

    #[test]
    fn slots_are_listed() {
        assert_eq!(Template::RdsMessage.slots(), vec!["ID", "TITLE", "BODY"]);
        assert!(Template::RdsList.slots().is_empty());
    }
}
