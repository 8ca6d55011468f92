//! WS-Management (SOAP 1.2) envelopes of the Windows Remote Shell protocol: the request
//! builders our client uses, the response readers, and the fault shape. The emulator uses the
//! same constants and readers, so both sides agree on one vocabulary.

use super::xml::{Element, esc};
use std::time::Duration;

pub const NS_SOAP: &str = "http://www.w3.org/2003/05/soap-envelope";
pub const NS_ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub const NS_WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub const NS_WSMAN_MS: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd";
pub const NS_SHELL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";
pub const NS_WSMAN_FAULT: &str = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault";
pub const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

pub const RESOURCE_CMD: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd";

pub const ACTION_CREATE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create";
pub const ACTION_DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
pub const ACTION_COMMAND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command";
pub const ACTION_RECEIVE: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive";
pub const ACTION_SEND: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Send";
pub const ACTION_SIGNAL: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal";
pub const ACTION_FAULT: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";

pub const SIGNAL_TERMINATE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate";
pub const STATE_DONE: &str =
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done";

/// WSManFault code of the `w:TimedOut` fault: no output within OperationTimeout, poll again.
pub const CODE_TIMED_OUT: u64 = 2150858793;
/// WSManFault code for an unknown shell id (e.g. after the server's idle timeout).
pub const CODE_SHELL_NOT_FOUND: u64 = 2150858843;

pub const MAX_ENVELOPE_SIZE: u32 = 512_000;

/// Renders a WS-Man duration (`PT60S`, `PT1.500S`).
pub fn xs_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("PT{}S", ms / 1000)
    } else {
        format!("PT{}.{:03}S", ms / 1000, ms % 1000)
    }
}

/// Parses the subset of xs:duration WS-Man peers send (`PT60S`, `PT1.5S`, `PT2M`, `PT1H`).
pub fn parse_xs_duration(s: &str) -> Option<Duration> {
    let rest = s.trim().strip_prefix("PT")?;
    let mut total = 0f64;
    let mut num = String::new();
    for c in rest.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'H' | 'M' | 'S' => {
                let v: f64 = num.parse().ok()?;
                num.clear();
                total += v * match c {
                    'H' => 3600.0,
                    'M' => 60.0,
                    _ => 1.0,
                };
            }
            _ => return None,
        }
    }
    if !num.is_empty() || !total.is_finite() || total < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// Headers of one request.
pub struct RequestHeader<'a> {
    pub to: &'a str,
    pub action: &'a str,
    pub message_id: &'a str,
    pub operation_timeout: Duration,
    pub shell_id: Option<&'a str>,
    pub options: &'a [(&'a str, &'a str)],
}

/// Builds a request envelope.
pub fn request(h: &RequestHeader<'_>, body: &str) -> String {
    let mut s = String::with_capacity(1600 + body.len());
    s.push_str(r#"<?xml version="1.0" encoding="utf-8"?>"#);
    s.push_str(&format!(
        r#"<s:Envelope xmlns:s="{NS_SOAP}" xmlns:a="{NS_ADDRESSING}" xmlns:w="{NS_WSMAN}" xmlns:p="{NS_WSMAN_MS}" xmlns:rsp="{NS_SHELL}"><s:Header>"#
    ));
    s.push_str(&format!("<a:To>{}</a:To>", esc(h.to)));
    s.push_str(&format!(
        r#"<a:ReplyTo><a:Address s:mustUnderstand="true">{ANONYMOUS}</a:Address></a:ReplyTo>"#
    ));
    s.push_str(&format!(
        r#"<w:MaxEnvelopeSize s:mustUnderstand="true">{MAX_ENVELOPE_SIZE}</w:MaxEnvelopeSize>"#
    ));
    s.push_str(&format!("<a:MessageID>{}</a:MessageID>", esc(h.message_id)));
    s.push_str(r#"<w:Locale xml:lang="en-US" s:mustUnderstand="false"/>"#);
    s.push_str(r#"<p:DataLocale xml:lang="en-US" s:mustUnderstand="false"/>"#);
    s.push_str(&format!(
        "<w:OperationTimeout>{}</w:OperationTimeout>",
        xs_duration(h.operation_timeout)
    ));
    s.push_str(&format!(
        r#"<w:ResourceURI s:mustUnderstand="true">{RESOURCE_CMD}</w:ResourceURI>"#
    ));
    s.push_str(&format!(
        r#"<a:Action s:mustUnderstand="true">{}</a:Action>"#,
        esc(h.action)
    ));
    if let Some(id) = h.shell_id {
        s.push_str(&format!(
            r#"<w:SelectorSet><w:Selector Name="ShellId">{}</w:Selector></w:SelectorSet>"#,
            esc(id)
        ));
    }
    if !h.options.is_empty() {
        s.push_str("<w:OptionSet>");
        for (k, v) in h.options {
            s.push_str(&format!(
                r#"<w:Option Name="{}">{}</w:Option>"#,
                esc(k),
                esc(v)
            ));
        }
        s.push_str("</w:OptionSet>");
    }
    s.push_str("</s:Header><s:Body>");
    s.push_str(body);
    s.push_str("</s:Body></s:Envelope>");
    s
}

pub fn create_shell_body() -> String {
    "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>".to_string()
}

pub fn command_body(command: &str, args: &[&str]) -> String {
    let mut s = format!(
        "<rsp:CommandLine><rsp:Command>{}</rsp:Command>",
        esc(command)
    );
    for a in args {
        s.push_str(&format!("<rsp:Arguments>{}</rsp:Arguments>", esc(a)));
    }
    s.push_str("</rsp:CommandLine>");
    s
}

pub fn send_body(command_id: &str, stdin_b64: &str, end: bool) -> String {
    format!(
        r#"<rsp:Send><rsp:Stream Name="stdin" CommandId="{}"{}>{}</rsp:Stream></rsp:Send>"#,
        esc(command_id),
        if end { r#" End="true""# } else { "" },
        stdin_b64
    )
}

pub fn receive_body(command_id: &str) -> String {
    format!(
        r#"<rsp:Receive><rsp:DesiredStream CommandId="{}">stdout stderr</rsp:DesiredStream></rsp:Receive>"#,
        esc(command_id)
    )
}

pub fn signal_body(command_id: &str, code: &str) -> String {
    format!(
        r#"<rsp:Signal CommandId="{}"><rsp:Code>{}</rsp:Code></rsp:Signal>"#,
        esc(command_id),
        esc(code)
    )
}

/// A SOAP fault with its WS-Man detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsManFault {
    /// `s:Code/s:Value`, e.g. `s:Receiver`.
    pub code: String,
    /// `s:Code/s:Subcode/s:Value`, e.g. `w:TimedOut`.
    pub subcode: String,
    /// `s:Reason/s:Text`.
    pub reason: String,
    /// `f:WSManFault/@Code`, a Win32 or WinRM error number.
    pub wsman_code: Option<u64>,
    /// `f:WSManFault/f:Message` (provider fault text included).
    pub message: String,
}

impl WsManFault {
    pub fn is_timed_out(&self) -> bool {
        self.wsman_code == Some(CODE_TIMED_OUT) || self.subcode.ends_with(":TimedOut")
    }
    pub fn is_access_denied(&self) -> bool {
        self.wsman_code == Some(5) || self.subcode.ends_with(":AccessDenied")
    }
}

impl std::fmt::Display for WsManFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WS-Man fault {} / {}", self.code, self.subcode)?;
        if let Some(c) = self.wsman_code {
            write!(f, " (code {c})")?;
        }
        let msg = if self.message.trim().is_empty() {
            self.reason.trim()
        } else {
            self.message.trim()
        };
        if !msg.is_empty() {
            write!(f, ": {}", crate::domain::truncate_for_display(msg, 300))?;
        }
        Ok(())
    }
}

/// Reads the fault from an envelope, if it holds one.
pub fn parse_fault(env: &Element) -> Option<WsManFault> {
    let body = env.child("Body")?;
    let fault = body.child("Fault")?;
    let code_el = fault.child("Code");
    let code = code_el
        .and_then(|c| c.child("Value"))
        .map(|v| v.trimmed_text().to_string())
        .unwrap_or_default();
    let subcode = code_el
        .and_then(|c| c.child("Subcode"))
        .and_then(|c| c.child("Value"))
        .map(|v| v.trimmed_text().to_string())
        .unwrap_or_default();
    let reason = fault
        .child("Reason")
        .and_then(|r| r.child("Text"))
        .map(|t| t.trimmed_text().to_string())
        .unwrap_or_default();
    let wf = fault.find("WSManFault");
    let wsman_code = wf
        .and_then(|w| w.attr("Code"))
        .and_then(|c| c.trim().parse().ok());
    let message = wf
        .and_then(|w| w.child("Message"))
        .map(|m| m.deep_text().trim().to_string())
        .unwrap_or_default();
    Some(WsManFault {
        code,
        subcode,
        reason,
        wsman_code,
        message,
    })
}

/// The `a:Action` of an envelope.
pub fn action_of(env: &Element) -> Option<&str> {
    env.child("Header")
        .and_then(|h| h.child("Action"))
        .map(|a| a.trimmed_text())
}

/// The shell id from a CreateResponse (selector form, or the `rsp:Shell/rsp:ShellId` form).
pub fn shell_id_of_create(env: &Element) -> Option<String> {
    let body = env.child("Body")?;
    let mut sels = Vec::new();
    body.find_all("Selector", &mut sels);
    if let Some(s) = sels.iter().find(|s| s.attr("Name") == Some("ShellId")) {
        return Some(s.trimmed_text().to_string()).filter(|s| !s.is_empty());
    }
    body.find("ShellId")
        .map(|s| s.trimmed_text().to_string())
        .filter(|s| !s.is_empty())
}

pub fn command_id_of(env: &Element) -> Option<String> {
    env.child("Body")?
        .find("CommandId")
        .map(|c| c.trimmed_text().to_string())
        .filter(|s| !s.is_empty())
}

/// What one ReceiveResponse carried.
#[derive(Debug, Default)]
pub struct ReceiveChunk {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub done: bool,
    pub exit_code: Option<i64>,
}

pub fn parse_receive(env: &Element) -> Result<ReceiveChunk, String> {
    use base64::Engine;
    let body = env.child("Body").ok_or("response has no Body")?;
    let resp = body
        .child("ReceiveResponse")
        .ok_or("response has no ReceiveResponse")?;
    let mut out = ReceiveChunk::default();
    for st in resp.children_named("Stream") {
        let t = st.trimmed_text();
        if t.is_empty() {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t)
            .map_err(|e| format!("stream is not base64: {e}"))?;
        match st.attr("Name") {
            Some("stdout") => out.stdout.extend_from_slice(&bytes),
            Some("stderr") => out.stderr.extend_from_slice(&bytes),
            _ => {}
        }
    }
    if let Some(cs) = resp.child("CommandState") {
        if cs.attr("State").is_some_and(|s| s.ends_with("/Done")) {
            out.done = true;
        }
        out.exit_code = cs
            .child("ExitCode")
            .and_then(|e| e.trimmed_text().parse().ok());
    }
    Ok(out)
}

/// The value of a header selector (`ShellId`).
pub fn selector(env: &Element, name: &str) -> Option<String> {
    let header = env.child("Header")?;
    let set = header.child("SelectorSet")?;
    set.children_named("Selector")
        .find(|s| s.attr("Name") == Some(name))
        .map(|s| s.trimmed_text().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::winrm::xml::parse;

    #[test]
    fn durations_round_trip() {
        assert_eq!(xs_duration(Duration::from_secs(60)), "PT60S");
        assert_eq!(xs_duration(Duration::from_millis(1500)), "PT1.500S");
        assert_eq!(parse_xs_duration("PT60S"), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_xs_duration("PT1.5S"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_xs_duration("PT2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_xs_duration("60"), None);
    }

    #[test]
    fn reads_the_timed_out_fault() {
        let x = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Header><a:Action xmlns:a="x">http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action></s:Header><s:Body><s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:TimedOut</s:Value></s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">The WS-Management service cannot complete the operation within the time specified in OperationTimeout.</s:Text></s:Reason><s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="2150858793" Machine="h"><f:Message>timed out</f:Message></f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>"#;
        let env = parse(x).unwrap();
        let f = parse_fault(&env).unwrap();
        assert!(f.is_timed_out());
        assert_eq!(f.code, "s:Receiver");
        assert_eq!(f.wsman_code, Some(CODE_TIMED_OUT));
        assert_eq!(f.message, "timed out");
        assert_eq!(action_of(&env), Some(ACTION_FAULT));
    }

    #[test]
    fn request_carries_the_headers() {
        let x = request(
            &RequestHeader {
                to: "https://h:5986/wsman",
                action: ACTION_COMMAND,
                message_id: "uuid:1",
                operation_timeout: Duration::from_secs(20),
                shell_id: Some("S1"),
                options: &[("WINRS_SKIP_CMD_SHELL", "TRUE")],
            },
            &command_body("powershell.exe", &["-NoLogo"]),
        );
        let env = parse(&x).unwrap();
        assert_eq!(action_of(&env), Some(ACTION_COMMAND));
        assert_eq!(selector(&env, "ShellId").as_deref(), Some("S1"));
        let h = env.child("Header").unwrap();
        assert_eq!(h.child("OperationTimeout").unwrap().text, "PT20S");
        assert_eq!(h.child("ResourceURI").unwrap().text, RESOURCE_CMD);
        assert_eq!(env.find("Arguments").unwrap().text, "-NoLogo");
    }
}
