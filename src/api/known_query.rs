//! Unknown query parameters are refused on every route (400 `invalid_query`), so a misspelt
//! filter never silently widens an answer. What each operation accepts is read from the
//! OpenAPI document (its `in: query` parameters), so the rule and the published contract are
//! one: a route that declares none accepts none.

use super::problem::{ApiError, RequestError};
use axum::{
    extract::{MatchedPath, Request, State},
    http::Method,
    middleware::Next,
    response::{IntoResponse, Response},
};
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};
use utoipa::openapi::{OpenApi, path::ParameterIn};

/// The query parameter names each operation (method, route template) declares.
#[derive(Debug, Default)]
pub struct QueryRules {
    allowed: HashMap<(Method, String), BTreeSet<String>>,
}

impl QueryRules {
    /// Reads every operation's `in: query` parameters (and its path item's) from `doc`.
    pub fn from_openapi(doc: &OpenApi) -> Self {
        let mut allowed = HashMap::new();
        for (path, item) in &doc.paths.paths {
            let shared: Vec<_> = item.parameters.iter().flatten().collect();
            let ops = [
                (Method::GET, &item.get),
                (Method::PUT, &item.put),
                (Method::POST, &item.post),
                (Method::DELETE, &item.delete),
                (Method::OPTIONS, &item.options),
                (Method::HEAD, &item.head),
                (Method::PATCH, &item.patch),
                (Method::TRACE, &item.trace),
            ];
            for (method, op) in ops {
                let Some(op) = op else { continue };
                let names = shared
                    .iter()
                    .copied()
                    .chain(op.parameters.iter().flatten())
                    .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                    .map(|p| p.name.clone())
                    .collect();
                allowed.insert((method, path.clone()), names);
            }
        }
        Self { allowed }
    }

    /// The first query parameter `route` does not declare for `method`; `None` when all are
    /// known, or when the operation is not in the document (404/405 answer those).
    pub fn unknown(&self, method: &Method, route: &str, query: &str) -> Option<String> {
        self.check(method, route, query).map(|(name, _)| name)
    }

    /// [`Self::unknown`], with the names the operation does accept.
    fn check(&self, method: &Method, route: &str, query: &str) -> Option<(String, String)> {
        // HEAD is served by the GET handler.
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let names = self.allowed.get(&(method.clone(), route.to_string()))?;
        url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, _)| k)
            .find(|k| !names.contains(k.as_ref()))
            .map(|k| {
                let accepted = names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                (k.into_owned(), accepted)
            })
    }
}

/// Answers 400 `invalid_query` naming the first undeclared parameter.
pub async fn refuse_unknown(
    State(rules): State<Arc<QueryRules>>,
    req: Request,
    next: Next,
) -> Response {
    let unknown = match (req.uri().query(), req.extensions().get::<MatchedPath>()) {
        (Some(q), Some(route)) if !q.is_empty() => rules.check(req.method(), route.as_str(), q),
        _ => None,
    };
    match unknown {
        Some((name, accepted)) => {
            let shown = crate::domain::truncate_for_display(&name, 64);
            let accepts = if accepted.is_empty() {
                "this route takes no query parameters".to_string()
            } else {
                format!("expected one of {accepted}")
            };
            ApiError::from(RequestError::InvalidQuery(format!(
                "unknown field `{shown}` in the query string: {accepts}"
            )))
            .into_response()
        }
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_parameters_pass_and_others_are_named() {
        let rules = QueryRules::from_openapi(&super::super::router::openapi());
        let sessions = "/hostpools/{pool}/sessions";
        assert_eq!(
            rules.unknown(&Method::GET, sessions, "user=a%40b&state=active"),
            None
        );
        assert_eq!(
            rules.unknown(&Method::GET, sessions, "user=a&usr=b"),
            Some("usr".into())
        );
        assert_eq!(
            rules.unknown(&Method::GET, "/healthz", "x"),
            Some("x".into())
        );
        assert_eq!(
            rules.unknown(&Method::HEAD, "/healthz", "x"),
            Some("x".into())
        );
        // Percent-encoded names are compared decoded.
        assert_eq!(rules.unknown(&Method::GET, sessions, "%75ser=a"), None);
        // An operation the document does not have is left to the 404/405 answers.
        assert_eq!(rules.unknown(&Method::DELETE, "/healthz", "x"), None);
    }
}
