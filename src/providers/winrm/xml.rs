//! A tiny namespace-agnostic XML tree on top of quick-xml, enough for WS-Man envelopes.
//! Element and attribute names are kept as local names (prefixes dropped): WS-Man peers use
//! varying prefixes (`s:`/`env:`), and the names we read are unambiguous without them.

use quick_xml::events::Event;

/// Deepest nesting accepted; WS-Man envelopes are shallow.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// First descendant (depth-first, self excluded) with this local name.
    pub fn find(&self, name: &str) -> Option<&Element> {
        for c in &self.children {
            if c.name == name {
                return Some(c);
            }
            if let Some(f) = c.find(name) {
                return Some(f);
            }
        }
        None
    }

    /// Every descendant with this local name, in document order.
    pub fn find_all<'a>(&'a self, name: &str, out: &mut Vec<&'a Element>) {
        for c in &self.children {
            if c.name == name {
                out.push(c);
            }
            c.find_all(name, out);
        }
    }

    /// Text of this element and all descendants, concatenated.
    pub fn deep_text(&self) -> String {
        let mut s = self.text.clone();
        for c in &self.children {
            s.push_str(&c.deep_text());
        }
        s
    }

    pub fn trimmed_text(&self) -> &str {
        self.text.trim()
    }
}

fn local(name: &str) -> String {
    match name.split_once(':') {
        Some((_, n)) => n.to_owned(),
        None => name.to_owned(),
    }
}

fn start_elem(e: &quick_xml::events::BytesStart<'_>) -> Result<Element, String> {
    let mut el = Element {
        name: local(e.name().as_ref()),
        ..Default::default()
    };
    for a in e.attributes() {
        let a = a.map_err(|e| format!("bad attribute: {e}"))?;
        let key = local(a.key.as_ref());
        if key == "xmlns" || a.key.as_ref().starts_with("xmlns:") {
            continue;
        }
        let v = a
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| format!("bad attribute value: {e}"))?;
        el.attrs.push((key, v.into_owned()));
    }
    Ok(el)
}

/// Parses a document into its root element.
pub fn parse(xml: &str) -> Result<Element, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("XML error at {}: {e}", reader.buffer_position()))?;
        match ev {
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err("XML nested too deeply".into());
                }
                stack.push(start_elem(&e)?);
            }
            Event::Empty(e) => {
                let el = start_elem(&e)?;
                match stack.last_mut() {
                    Some(p) => p.children.push(el),
                    None => {
                        root = Some(el);
                    }
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or("unbalanced end tag")?;
                match stack.last_mut() {
                    Some(p) => p.children.push(el),
                    None => {
                        root = Some(el);
                    }
                }
            }
            Event::Text(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if let Some(cur) = stack.last_mut() {
                    cur.text.push_str(&t);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(cur) = stack.last_mut() {
                    if let Some(c) = r
                        .resolve_char_ref()
                        .map_err(|e| format!("bad character reference: {e}"))?
                    {
                        cur.text.push(c);
                    } else {
                        let c = match &*r.xml10_content() {
                            "amp" => '&',
                            "lt" => '<',
                            "gt" => '>',
                            "quot" => '"',
                            "apos" => '\'',
                            other => return Err(format!("unknown entity &{other};")),
                        };
                        cur.text.push(c);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !stack.is_empty() {
        return Err("unexpected end of document".into());
    }
    root.ok_or_else(|| "empty document".to_string())
}

/// Escapes text for an element body or attribute value.
pub fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefixed_names_entities_and_attributes() {
        let x = r#"<?xml version="1.0"?><s:Envelope xmlns:s="u"><s:Body><a:X Name="n&amp;m">a &lt; b &#65;</a:X><Y/></s:Body></s:Envelope>"#;
        let e = parse(x).unwrap();
        assert_eq!(e.name, "Envelope");
        let x = e.find("X").unwrap();
        assert_eq!(x.attr("Name"), Some("n&m"));
        assert_eq!(x.text, "a < b A");
        assert!(e.find("Y").is_some());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("").is_err());
        assert!(parse("<a>&foo;</a>").is_err());
    }
}
