//! Percent-encoding for URLs we build by hand (query strings, `nextLink`s) and read back
//! (emulator paths). One definition for the adapters and the emulators alike.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything except RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is escaped: what
/// .NET's `Uri.EscapeDataString` (the RDS PowerShell module) and the Azure SDKs send.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Query keys additionally keep `$` (OData's `$filter`, `$skiptoken` travel unescaped).
const KEY: &AsciiSet = &VALUE.remove(b'$');

/// Decodes `%XX` sequences; malformed ones stay as they are, invalid UTF-8 becomes U+FFFD.
pub fn unescape(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `k1=v1&k2=v2` with keys and values escaped: every byte of the UTF-8 form except RFC 3986
/// unreserved characters (keys also keep `$`).
pub fn query<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    let mut q = String::new();
    for (k, v) in pairs {
        if !q.is_empty() {
            q.push('&');
        }
        q.extend(utf8_percent_encode(k.as_ref(), KEY));
        q.push('=');
        q.extend(utf8_percent_encode(v.as_ref(), VALUE));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_like_escape_data_string() {
        let q = |v: &str| query(&[("k", v)]);
        assert_eq!(q("a b&c=d#e%f+g"), "k=a%20b%26c%3Dd%23e%25f%2Bg");
        assert_eq!(q("é\n"), "k=%C3%A9%0A");
        assert_eq!(q("A-z_0.9~"), "k=A-z_0.9~");
    }

    #[test]
    fn unescaping_leaves_malformed_sequences() {
        assert_eq!(unescape("sh%201.contoso.com"), "sh 1.contoso.com");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%zz"), "%zz");
        assert_eq!(unescape("Gr%C3%BC%C3%9Fe%20%26"), "Grüße &");
    }

    #[test]
    fn query_keeps_dollar_in_keys_only() {
        assert_eq!(
            query(&[("api-version", "2025-10-10"), ("$filter", "a eq '$x'")]),
            "api-version=2025-10-10&$filter=a%20eq%20%27%24x%27"
        );
        assert_eq!(query::<&str, &str>(&[]), "");
    }
}
