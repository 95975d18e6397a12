//! Query-string handling with Consul's rules: presence-only flags (`?recurse`, `?stale`),
//! repeatable parameters (`?tag=a&tag=b`), and the blocking and consistency options every
//! read accepts, with Consul's error texts.

use axum::http::HeaderMap;
use cairn_shared::duration;
use cairn_shared::rpc::{Consistency, QueryOptions};

use super::error::ApiError;

/// The decoded query string, in order, duplicates kept.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// Whether the parameter is present at all, with or without a value.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }

    /// The first value of a parameter (`""` for a bare `?name`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value, which is how Go's `Query().Get` is used in Consul.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    pub fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query re-encoded with keys sorted, like Go's `url.Values.Encode`.
    pub fn encode_sorted(&self) -> String {
        let mut pairs = self.0.clone();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }

    /// A `u64` parameter; `err` is Consul's message for a bad one.
    pub fn u64(&self, name: &str, err: &str) -> Result<Option<u64>, ApiError> {
        self.value(name)
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(err)))
            .transpose()
    }

    /// `?dc`, `?index`, `?wait`, `?stale`/`?consistent`/`?leader`/`?max_stale` and the token.
    pub fn query_options(&self, headers: &HeaderMap) -> Result<QueryOptions, ApiError> {
        let mut opts = QueryOptions {
            datacenter: self.value("dc").unwrap_or_default().to_string(),
            token: token(self, headers),
            near: self.value("near").unwrap_or_default().to_string(),
            ..QueryOptions::default()
        };
        if let Some(wait) = self.value("wait") {
            let nanos = duration::parse_nanos(wait)
                .map_err(|_| ApiError::bad_request("Invalid wait time"))?;
            // Go accepts negative waits; the server then uses its default.
            opts.max_wait = (nanos > 0).then(|| std::time::Duration::from_nanos(nanos as u64));
        }
        if let Some(index) = self.u64("index", "Invalid index")? {
            opts.min_index = index;
        }
        opts.consistency = self.consistency()?;
        Ok(opts)
    }

    fn consistency(&self) -> Result<Consistency, ApiError> {
        let mut stale = self.has("stale");
        let consistent = self.has("consistent");
        if let Some(max_stale) = self.value("max_stale") {
            let nanos = duration::parse_nanos(max_stale).map_err(|_| {
                ApiError::bad_request(format!("Invalid max_stale value \"{max_stale}\""))
            })?;
            stale |= nanos > 0;
        }
        if stale && consistent {
            return Err(ApiError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        if self.has("cached") && consistent {
            return Err(ApiError::bad_request(
                "Cannot specify ?cached with ?consistent, conflicting semantics.",
            ));
        }
        Ok(match (stale, consistent) {
            (true, _) => Consistency::Stale,
            (_, true) => Consistency::Consistent,
            _ => Consistency::Default,
        })
    }
}

/// The ACL token: `?token` first, then `X-Consul-Token`, then `Authorization: Bearer`.
pub fn token(params: &Params, headers: &HeaderMap) -> String {
    if let Some(t) = params.value("token") {
        return t.to_string();
    }
    if let Some(t) = headers.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return t.to_string();
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> Result<QueryOptions, ApiError> {
        Params::parse(Some(q)).query_options(&HeaderMap::new())
    }

    #[test]
    fn presence_only_flags() {
        let p = Params::parse(Some("recurse&keys=&tag=a&tag=b&stale=false"));
        assert!(p.has("recurse") && p.has("keys") && !p.has("raw"));
        assert_eq!(p.all("tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(opts("stale=false").unwrap().consistency, Consistency::Stale);
    }

    #[test]
    fn blocking_options_and_errors() {
        let o = opts("index=42&wait=30s").unwrap();
        assert_eq!(o.min_index, 42);
        assert_eq!(o.max_wait, Some(std::time::Duration::from_secs(30)));
        assert_eq!(opts("index=-1").unwrap_err().message, "Invalid index");
        assert_eq!(opts("index=abc").unwrap_err().message, "Invalid index");
        assert_eq!(opts("wait=soon").unwrap_err().message, "Invalid wait time");
        assert_eq!(opts("wait=10").unwrap_err().message, "Invalid wait time");
        assert_eq!(opts("wait=-5s").unwrap().max_wait, None);
    }

    #[test]
    fn conflicting_consistency_is_rejected() {
        assert_eq!(
            opts("stale&consistent").unwrap_err().message,
            "Cannot specify ?stale with ?consistent, conflicting semantics."
        );
        assert_eq!(
            opts("consistent").unwrap().consistency,
            Consistency::Consistent
        );
        assert_eq!(opts("leader").unwrap().consistency, Consistency::Default);
        assert_eq!(
            opts("max_stale=5s").unwrap().consistency,
            Consistency::Stale
        );
    }

    #[test]
    fn token_precedence() {
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(token(&Params::default(), &h), "abc");
        h.insert("x-consul-token", "hdr".parse().unwrap());
        assert_eq!(token(&Params::default(), &h), "hdr");
        assert_eq!(token(&Params::parse(Some("token=q")), &h), "q");
    }
}
