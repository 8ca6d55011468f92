//! What a write-back says: a plain-text summary (ServiceNow journal, service-desk comment) and
//! the same as an Atlassian Document Format comment (Jira).

use super::{WriteBackItem, WriteBackReport};
use serde_json::{Value, json};

/// Items listed at most; the rest are counted in one closing line.
pub const MAX_LISTED_ITEMS: usize = 200;

fn headline(r: &WriteBackReport) -> String {
    match &r.action {
        Some(a) => format!("sessiongate job {} ({a}) finished: {}", r.job_id, r.state),
        None => format!("sessiongate job {} finished: {}", r.job_id, r.state),
    }
}

fn tally(r: &WriteBackReport) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for i in &r.items {
        *counts.entry(i.outcome.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    if parts.is_empty() {
        "No sessions were affected.".to_string()
    } else {
        format!("{} item(s): {}.", r.items.len(), parts.join(", "))
    }
}

fn at(i: &WriteBackItem) -> String {
    i.at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One item on one line: `host session N (user): outcome [code] at TIME`.
fn item_line(i: &WriteBackItem) -> String {
    let mut s = i.host.clone();
    if let Some(n) = i.session {
        s.push_str(&format!(" session {n}"));
    }
    if let Some(u) = &i.user {
        s.push_str(&format!(" ({u})"));
    }
    s.push_str(&format!(": {}", i.outcome));
    if let Some(c) = &i.error_code {
        s.push_str(&format!(" [{c}]"));
    }
    s.push_str(&format!(" at {}", at(i)));
    // One item, one line: nothing an item carries may start another.
    s.replace(['\r', '\n'], " ")
}

fn lines(r: &WriteBackReport) -> (Vec<String>, Option<String>) {
    let listed: Vec<String> = r
        .items
        .iter()
        .take(MAX_LISTED_ITEMS)
        .map(item_line)
        .collect();
    let more = (r.items.len() > MAX_LISTED_ITEMS)
        .then(|| format!("... and {} more", r.items.len() - MAX_LISTED_ITEMS));
    (listed, more)
}

/// The plain-text summary: a headline with the job id, a tally, then one line per item.
pub fn report_text(r: &WriteBackReport) -> String {
    let (listed, more) = lines(r);
    let mut out = format!("{}\n{}\n", headline(r), tally(r));
    for l in listed {
        out.push_str("- ");
        out.push_str(&l);
        out.push('\n');
    }
    if let Some(m) = more {
        out.push_str(&m);
        out.push('\n');
    }
    out
}

fn text_node(t: &str) -> Value {
    json!({"type": "text", "text": t})
}

/// The ADF document: a heading with the job id, a paragraph with the tally, a bullet list
/// with one item per line (and a closing paragraph when items were left out).
pub fn report_adf(r: &WriteBackReport) -> Value {
    let (listed, more) = lines(r);
    let mut content = vec![
        json!({"type": "heading", "attrs": {"level": 3}, "content": [text_node(&headline(r))]}),
        json!({"type": "paragraph", "content": [text_node(&tally(r))]}),
    ];
    if !listed.is_empty() {
        let items: Vec<Value> = listed
            .iter()
            .map(|l| {
                json!({"type": "listItem", "content": [
                    {"type": "paragraph", "content": [text_node(l)]}
                ]})
            })
            .collect();
        content.push(json!({"type": "bulletList", "content": items}));
    }
    if let Some(m) = more {
        content.push(json!({"type": "paragraph", "content": [text_node(&m)]}));
    }
    json!({"type": "doc", "version": 1, "content": content})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(n: usize) -> WriteBackReport {
        WriteBackReport {
            job_id: "job-1".into(),
            action: Some("logoff".into()),
            state: "succeeded".into(),
            items: (0..n)
                .map(|i| WriteBackItem {
                    host: format!("h{i}\nforged line"),
                    session: Some(2),
                    user: Some("alice@contoso.com".into()),
                    outcome: "succeeded".into(),
                    at: time::OffsetDateTime::UNIX_EPOCH,
                    error_code: None,
                })
                .collect(),
        }
    }

    #[test]
    fn text_has_the_job_id_and_one_line_per_item() {
        let t = report_text(&report(2));
        assert!(t.starts_with("sessiongate job job-1 (logoff) finished: succeeded\n"));
        assert_eq!(t.lines().filter(|l| l.starts_with("- ")).count(), 2);
        assert!(t.contains(
            "- h0 forged line session 2 (alice@contoso.com): succeeded at 1970-01-01T00:00:00Z"
        ));
    }

    #[test]
    fn long_reports_are_cut_and_say_so() {
        let t = report_text(&report(MAX_LISTED_ITEMS + 3));
        assert!(t.ends_with("... and 3 more\n"));
        let adf = report_adf(&report(MAX_LISTED_ITEMS + 3));
        crate::emulator::jira::validate_adf(&adf).unwrap();
        assert_eq!(
            adf["content"][2]["content"].as_array().unwrap().len(),
            MAX_LISTED_ITEMS
        );
        crate::emulator::jira::validate_adf(&report_adf(&report(0))).unwrap();
    }
}
