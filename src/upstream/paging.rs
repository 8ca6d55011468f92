//! Following paged lists (`nextLink` in ARM bodies, the classic broker's `next` header).

use super::UpstreamError;
use std::{collections::HashSet, future::Future};
use url::Url;

/// Pages read at most for one list (a guard against a service that never stops paging).
const MAX_PAGES: usize = 10_000;

/// One page of a list: its items and the raw link to the next page, if any.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Reads every page starting at `first`. `next` links may be absolute or relative to the page
/// they came with, and must stay on `first`'s origin (our bearer token goes with them). A link
/// repeating a page already read, or more than 10 000 pages, ends the list with an error.
pub async fn follow_pages<T, E, F, Fut>(first: Url, mut fetch: F) -> Result<Vec<T>, E>
where
    F: FnMut(Url) -> Fut,
    Fut: Future<Output = Result<Page<T>, E>>,
    E: From<UpstreamError>,
{
    let origin = first.origin();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut url = first;
    for _ in 0..MAX_PAGES {
        seen.insert(url.to_string());
        let page = fetch(url.clone()).await?;
        out.extend(page.items);
        let Some(raw) = page
            .next
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        else {
            return Ok(out);
        };
        let next = url
            .join(raw)
            .map_err(|e| bad_link("InvalidNextLink", format!("is not a URL: {e}")))?;
        if next.origin() != origin {
            return Err(bad_link(
                "InvalidNextLink",
                format!(
                    "points to another origin ({}); not following it with our token",
                    next.origin().ascii_serialization()
                ),
            )
            .into());
        }
        if seen.contains(next.as_str()) {
            return Err(bad_link("PagingLoop", "repeats a page already read".into()).into());
        }
        url = next;
    }
    Err(bad_link(
        "PagingLoop",
        format!("did not end within {MAX_PAGES} pages"),
    )
    .into())
}

fn bad_link(code: &'static str, why: String) -> UpstreamError {
    UpstreamError::Paging {
        code,
        message: format!("the link to the next page {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves pages from a fixed table: `(url, next)`.
    async fn walk(
        first: &str,
        table: &[(&str, Option<&str>)],
    ) -> Result<Vec<String>, UpstreamError> {
        follow_pages(Url::parse(first).unwrap(), |u| {
            let next = table
                .iter()
                .find(|(k, _)| *k == u.as_str())
                .map(|(_, n)| n.map(str::to_string));
            async move {
                match next {
                    Some(next) => Ok(Page {
                        items: vec![u.to_string()],
                        next,
                    }),
                    None => Err(UpstreamError::Transport(format!("no page {u}"))),
                }
            }
        })
        .await
    }

    #[tokio::test]
    async fn relative_and_absolute_links_on_the_same_origin_are_followed() {
        let b = "https://rdbroker.example/RdsManagement/V1/p/Sessions";
        let got = walk(
            &format!("{b}?InitialSkip=0"),
            &[
                (
                    &format!("{b}?InitialSkip=0"),
                    Some("Sessions?InitialSkip=2"),
                ),
                (
                    &format!("{b}?InitialSkip=2"),
                    Some("https://rdbroker.example/RdsManagement/V1/p/Sessions?InitialSkip=4"),
                ),
                (&format!("{b}?InitialSkip=4"), Some("  ")),
            ],
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn other_origins_and_loops_are_refused() {
        let first = "https://arm.example/list";
        for (next, code) in [
            ("https://evil.example/steal", "InvalidNextLink"),
            ("http://arm.example/list?page=2", "InvalidNextLink"),
            ("/list", "PagingLoop"),
        ] {
            match walk(first, &[(first, Some(next))]).await {
                Err(UpstreamError::Paging { code: c, .. }) => assert_eq!(c, code, "{next}"),
                other => panic!("{next}: {other:?}"),
            }
        }
    }
}
