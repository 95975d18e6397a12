//! Auth methods and logins (`/v1/acl/login`), as Consul's `jwt` type has them.
//!
//! When an auth method is stored its settings are checked ([`JwtMethod::parse`]); when a
//! binding rule is stored, its selector and the names it binds ([`check_rule`]). At login
//! the leader verifies the bearer token: the signature by one of `JWTValidationPubKeys`
//! (RSA, ECDSA or Ed25519), then Consul's time rules (a token needs at least one of `exp`,
//! `nbf`, `iat`; a missing `exp` is filled in from the others plus `ExpirationLeeway`),
//! `BoundIssuer` and `BoundAudiences`. The claims named in `ClaimMappings` and
//! `ListClaimMappings` become `value.<name>` and `list.<name>`, which binding rules select
//! on and interpolate into their `BindName` (`${value.name}`). What the matching rules bind
//! becomes one new token; a login that binds nothing is refused.
//!
//! Keys are taken only from the method's settings: `JWKSURL` and `OIDCDiscoveryURL`, which
//! would have the servers fetch keys over the network, are refused when the method is
//! stored rather than accepted and failing at every login.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_shared::acl::{AuthMethod, BindingRule, TemplatedPolicy, templates};
use cairn_shared::rpc::RpcError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

/// go-jose's default clock-skew leeway.
const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Consul's `claimDefaultLeeway`, for `exp` or `nbf` derived from the other claims.
const DEFAULT_CLAIM_LEEWAY: Duration = Duration::from_secs(150);

/// The auth method types Cairn knows.
const TYPES: &[&str] = &["jwt"];

fn invalid(m: impl std::fmt::Display) -> RpcError {
    RpcError::internal(format!("Invalid Auth Method: {m}"))
}

/// The `Config` of a `jwt` auth method, in Consul's keys.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
struct JwtConfig {
    #[serde(rename = "JWTValidationPubKeys")]
    jwt_validation_pub_keys: Vec<String>,
    #[serde(rename = "JWKSURL")]
    jwks_url: String,
    #[serde(rename = "JWKSCACert")]
    jwks_ca_cert: String,
    #[serde(rename = "OIDCDiscoveryURL")]
    oidc_discovery_url: String,
    #[serde(rename = "OIDCDiscoveryCACert")]
    oidc_discovery_ca_cert: String,
    bound_issuer: String,
    bound_audiences: Vec<String>,
    claim_mappings: BTreeMap<String, String>,
    list_claim_mappings: BTreeMap<String, String>,
    #[serde(rename = "JWTSupportedAlgs")]
    jwt_supported_algs: Vec<String>,
    expiration_leeway: Option<Value>,
    not_before_leeway: Option<Value>,
    clock_skew_leeway: Option<Value>,
}

/// A leeway setting: Consul's zero means "the default", a negative one "none".
fn leeway(key: &str, v: &Option<Value>, default: Duration) -> Result<Duration, RpcError> {
    let nanos: i128 = match v {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .ok_or_else(|| invalid(format!("{key}: not a duration: {n}")))?,
        Some(Value::String(s)) if s.is_empty() => 0,
        Some(Value::String(s)) => {
            cairn_shared::duration::parse_nanos(s).map_err(|e| invalid(format!("{key}: {e}")))?
        }
        Some(other) => return Err(invalid(format!("{key}: not a duration: {other}"))),
    };
    Ok(match nanos {
        0 => default,
        n if n < 0 => Duration::ZERO,
        n => Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX)),
    })
}

/// Which algorithms a key can check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        EdDSA => Some(Family::Ed),
        HS256 | HS384 | HS512 => None,
    }
}

/// A `jwt` auth method, ready to check bearer tokens.
pub(super) struct JwtMethod {
    keys: Vec<(Family, DecodingKey)>,
    algs: Vec<Algorithm>,
    bound_issuer: String,
    bound_audiences: Vec<String>,
    claim_mappings: BTreeMap<String, String>,
    list_claim_mappings: BTreeMap<String, String>,
    expiration_leeway: Duration,
    not_before_leeway: Duration,
    clock_skew: Duration,
}

/// What a verified bearer token says, as binding rules see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Verified {
    /// `value.<name>`: every `ClaimMappings` target, empty when the token lacks the claim.
    pub(super) values: BTreeMap<String, String>,
    /// `list.<name>`.
    pub(super) lists: BTreeMap<String, Vec<String>>,
}

impl Verified {
    /// What selectors are evaluated against.
    fn selectable(&self) -> Value {
        json!({"value": self.values, "list": self.lists})
    }

    /// What `${...}` in a bind name may use.
    fn projected(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| (format!("value.{k}"), v.clone()))
            .collect()
    }
}

impl JwtMethod {
    /// Checks an auth method's type and settings as Consul does when it is stored.
    pub(super) fn parse(m: &AuthMethod) -> Result<Self, RpcError> {
        if m.kind != "jwt" {
            return Err(invalid(format!("Type should be one of: {TYPES:?}")));
        }
        let config = match &m.config {
            Value::Null => JwtConfig::default(),
            v => JwtConfig::deserialize(v).map_err(|e| invalid(format!("invalid config: {e}")))?,
        };
        let sources = [
            !config.jwt_validation_pub_keys.is_empty(),
            !config.jwks_url.is_empty(),
            !config.oidc_discovery_url.is_empty(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                "exactly one of 'JWKSURL', 'JWTValidationPubKeys', or 'OIDCDiscoveryURL' must be set for type \"jwt\"",
            ));
        }
        if !config.jwks_url.is_empty() || !config.oidc_discovery_url.is_empty() {
            return Err(invalid(
                "Cairn checks JWTs against JWTValidationPubKeys only; JWKSURL and OIDCDiscoveryURL are not supported",
            ));
        }
        if !config.jwks_ca_cert.is_empty() || !config.oidc_discovery_ca_cert.is_empty() {
            return Err(invalid(
                "JWKSCACert and OIDCDiscoveryCACert apply only with JWKSURL or OIDCDiscoveryURL",
            ));
        }
        let mut keys = Vec::new();
        for pem in &config.jwt_validation_pub_keys {
            let pem = pem.as_bytes();
            let key = DecodingKey::from_rsa_pem(pem)
                .map(|k| (Family::Rsa, k))
                .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (Family::Ec, k)))
                .or_else(|_| DecodingKey::from_ed_pem(pem).map(|k| (Family::Ed, k)))
                .map_err(|_| {
                    invalid(
                        "error parsing public key: data does not contain any valid RSA, ECDSA, or ED25519 public keys",
                    )
                })?;
            keys.push(key);
        }
        let mut algs = Vec::new();
        for a in &config.jwt_supported_algs {
            let alg: Algorithm = a
                .parse()
                .ok()
                .filter(|alg| family(*alg).is_some())
                .ok_or_else(|| invalid(format!("invalid JWTSupportedAlgs entry {a:?}")))?;
            algs.push(alg);
        }
        let mut targets: Vec<&String> = config
            .claim_mappings
            .values()
            .chain(config.list_claim_mappings.values())
            .collect();
        targets.sort();
        if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!(
                "ClaimMappings and ListClaimMappings map more than one claim to {:?}",
                w[0]
            )));
        }
        Ok(Self {
            keys,
            algs,
            bound_issuer: config.bound_issuer,
            bound_audiences: config.bound_audiences,
            expiration_leeway: leeway(
                "ExpirationLeeway",
                &config.expiration_leeway,
                DEFAULT_CLAIM_LEEWAY,
            )?,
            not_before_leeway: leeway(
                "NotBeforeLeeway",
                &config.not_before_leeway,
                DEFAULT_CLAIM_LEEWAY,
            )?,
            clock_skew: leeway(
                "ClockSkewLeeway",
                &config.clock_skew_leeway,
                DEFAULT_CLOCK_SKEW,
            )?,
            claim_mappings: config.claim_mappings,
            list_claim_mappings: config.list_claim_mappings,
        })
    }

    /// What a login with no claims yet would show: every mapped name, empty.
    fn empty(&self) -> Verified {
        Verified {
            values: self
                .claim_mappings
                .values()
                .map(|k| (k.clone(), String::new()))
                .collect(),
            lists: self
                .list_claim_mappings
                .values()
                .map(|k| (k.clone(), Vec::new()))
                .collect(),
        }
    }

    /// Verifies `jwt` at wall-clock second `now` and returns its mapped claims. Errors
    /// carry Consul's wording (they answer 500, as Consul's do).
    pub(super) fn verify(&self, jwt: &str, now: u64) -> Result<Verified, RpcError> {
        let fail = |m: String| RpcError::internal(m);
        if jwt.is_empty() {
            return Err(fail("missing jwt".into()));
        }
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| fail(format!("error parsing token: {e}")))?;
        let alg = header.alg;
        if !self.algs.is_empty() && !self.algs.contains(&alg) {
            return Err(fail(format!(
                "error parsing token: unsupported algorithm {alg:?}"
            )));
        }
        let mut validation = Validation::new(alg);
        // The claims are checked below, with Consul's rules rather than the library's.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = family(alg)
            .into_iter()
            .flat_map(|f| self.keys.iter().filter(move |(kf, _)| *kf == f))
            .find_map(|(_, key)| {
                jsonwebtoken::decode::<serde_json::Map<String, Value>>(jwt, key, &validation).ok()
            })
            .map(|d| d.claims)
            .ok_or_else(|| {
                fail("no known key successfully validated the token signature".into())
            })?;
        self.check_claims(&claims, now)
            .map_err(|m| fail(format!("error validating claims: {m}")))?;
        self.extract(&claims).map_err(fail)
    }

    fn check_claims(&self, c: &serde_json::Map<String, Value>, now: u64) -> Result<(), String> {
        let time = |k: &str| {
            c.get(k)
                .and_then(Value::as_f64)
                .map_or(0, |f| f.max(0.0) as u64)
        };
        let (iat, mut exp, mut nbf) = (time("iat"), time("exp"), time("nbf"));
        if iat == 0 && exp == 0 && nbf == 0 {
            return Err("no issue time, notbefore, or expiration time encoded in token".into());
        }
        if exp == 0 {
            exp = iat.max(nbf) + self.expiration_leeway.as_secs();
        }
        if nbf == 0 {
            nbf = if iat != 0 {
                iat
            } else {
                exp.saturating_sub(self.not_before_leeway.as_secs())
            };
        }
        let skew = self.clock_skew.as_secs();
        if !self.bound_issuer.is_empty()
            && c.get("iss").and_then(Value::as_str) != Some(self.bound_issuer.as_str())
        {
            return Err("validation failed, invalid issuer claim (iss)".into());
        }
        if now > exp + skew {
            return Err("validation failed, token is expired (exp)".into());
        }
        if now + skew < nbf {
            return Err("validation failed, token not valid yet (nbf)".into());
        }
        if iat != 0 && now + skew < iat {
            return Err("validation failed, token issued in the future (iat)".into());
        }
        let audiences: Vec<&str> = match c.get("aud") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if self.bound_audiences.is_empty() {
            if !audiences.is_empty() {
                return Err(
                    "audience claim found in JWT but no audiences bound to the role".into(),
                );
            }
        } else if !self
            .bound_audiences
            .iter()
            .any(|b| audiences.contains(&b.as_str()))
        {
            return Err("aud claim does not match any bound audience".into());
        }
        Ok(())
    }

    fn extract(&self, c: &serde_json::Map<String, Value>) -> Result<Verified, String> {
        let all = Value::Object(c.clone());
        // A claim by name, or by JSON pointer for nested ones.
        let claim = |source: &str| {
            if source.starts_with('/') {
                all.pointer(source)
            } else {
                c.get(source)
            }
        };
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let mut out = self.empty();
        for (source, target) in &self.claim_mappings {
            if let Some(v) = claim(source) {
                let s = scalar(v).ok_or(format!("error converting claim '{source}' to string"))?;
                out.values.insert(target.clone(), s);
            }
        }
        for (source, target) in &self.list_claim_mappings {
            let list =
                match claim(source) {
                    None => continue,
                    Some(Value::Array(items)) => items
                        .iter()
                        .map(scalar)
                        .collect::<Option<Vec<_>>>()
                        .ok_or(format!("error converting claim '{source}' to list"))?,
                    Some(v) => vec![
                        scalar(v).ok_or(format!("error converting claim '{source}' to list"))?,
                    ],
                };
            out.lists.insert(target.clone(), list);
        }
        Ok(out)
    }
}

/// `${var}` in `template` filled in from `vars`; an unknown variable is an error.
fn interpolate(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {template:?}"))?;
        let name = after[..end].trim();
        let value = vars
            .get(name)
            .ok_or_else(|| format!("unknown variable accessed: {name}"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The bind types Consul knows.
const BIND_TYPES: &[&str] = &["service", "node", "role", "policy", "templated-policy"];

/// Whether `name` is valid for `bind_type` once filled in.
fn check_bound(
    bind_type: &str,
    name: &str,
    vars: &Option<cairn_shared::acl::TemplateVariables>,
) -> Result<(), String> {
    match bind_type {
        "service" if !templates::valid_service_name(name) => Err(format!(
            "{name:?} is not a valid service name: only lowercase alphanumeric characters, '-' and '_' are allowed"
        )),
        "node" if !valid_node_name(name) => Err(format!("{name:?} is not a valid node name")),
        "role" | "policy" if !cairn_shared::acl::valid_name(name) => Err(format!(
            "{name:?} is not a valid {bind_type} name: only alphanumeric characters, '-' and '_' are allowed"
        )),
        "templated-policy" => {
            let tp = TemplatedPolicy {
                template_name: name.to_string(),
                template_variables: vars.clone(),
                datacenters: Vec::new(),
            };
            templates::render(&tp).map(|_| ())
        }
        _ => Ok(()),
    }
}

fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Fills `${...}` in the rule's bind variables too (templated policies).
fn bind_vars(
    rule: &BindingRule,
    vars: &BTreeMap<String, String>,
) -> Result<Option<cairn_shared::acl::TemplateVariables>, String> {
    rule.bind_vars
        .as_ref()
        .map(|v| {
            Ok(cairn_shared::acl::TemplateVariables {
                name: interpolate(&v.name, vars)?,
            })
        })
        .transpose()
}

/// Checks a binding rule as Consul does when it is stored, against its method's settings:
/// a known bind type, a selector that parses, a bind name that is valid for its type with
/// every claim variable filled in.
pub(super) fn check_rule(rule: &BindingRule, method: &AuthMethod) -> Result<(), RpcError> {
    let bad = |m: String| RpcError::internal(format!("Invalid Binding Rule: {m}"));
    if rule.bind_type.is_empty() {
        return Err(bad("no BindType is set".into()));
    }
    if !BIND_TYPES.contains(&rule.bind_type.as_str()) {
        return Err(bad(format!("unknown BindType {:?}", rule.bind_type)));
    }
    if rule.bind_name.is_empty() {
        return Err(bad("no BindName is set".into()));
    }
    let jwt = JwtMethod::parse(method)?;
    if !rule.selector.is_empty() {
        crate::filter::parse(&rule.selector)
            .map_err(|e| bad(format!("Selector is invalid: {}", e.message())))?;
    }
    // Every variable with a stand-in value, as Consul checks a name before any login.
    let vars: BTreeMap<String, String> = jwt
        .empty()
        .projected()
        .into_keys()
        .map(|k| (k, "fake".to_string()))
        .collect();
    let name =
        interpolate(&rule.bind_name, &vars).map_err(|e| bad(format!("invalid BindName: {e}")))?;
    let bound_vars = bind_vars(rule, &vars).map_err(|e| bad(format!("invalid BindVars: {e}")))?;
    check_bound(&rule.bind_type, &name, &bound_vars)
        .map_err(|e| bad(format!("invalid BindName: {e}")))
}

/// What the matching rules of a login bind.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Bindings {
    pub(super) services: Vec<String>,
    pub(super) nodes: Vec<String>,
    pub(super) roles: Vec<String>,
    pub(super) policies: Vec<String>,
    pub(super) templated: Vec<TemplatedPolicy>,
}

/// Runs `verified` through `rules`: each whose selector matches binds its name, filled in.
/// A rule whose name no longer comes out valid binds nothing.
pub(super) fn bind<'a>(
    rules: impl Iterator<Item = &'a BindingRule>,
    verified: &Verified,
) -> Bindings {
    let selectable = verified.selectable();
    let vars = verified.projected();
    let mut out = Bindings::default();
    for rule in rules {
        let matches = rule.selector.is_empty()
            || crate::filter::parse(&rule.selector).is_ok_and(|f| f.matches(&selectable));
        if !matches {
            continue;
        }
        let Ok(name) = interpolate(&rule.bind_name, &vars) else {
            continue;
        };
        let Ok(template_vars) = bind_vars(rule, &vars) else {
            continue;
        };
        if check_bound(&rule.bind_type, &name, &template_vars).is_err() {
            continue;
        }
        let list = match rule.bind_type.as_str() {
            "service" => &mut out.services,
            "node" => &mut out.nodes,
            "role" => &mut out.roles,
            "policy" => &mut out.policies,
            _ => {
                out.templated.push(TemplatedPolicy {
                    template_name: name,
                    template_variables: template_vars,
                    datacenters: Vec::new(),
                });
                continue;
            }
        };
        if !list.contains(&name) {
            list.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> (jsonwebtoken::EncodingKey, String) {
        let pair = rcgen::KeyPair::generate().unwrap();
        let private =
            jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (private, pair.public_key_pem())
    }

    fn method(public: &str, extra: Value) -> AuthMethod {
        let mut config = json!({
            "JWTValidationPubKeys": [public],
            "BoundIssuer": "https://issuer.test",
            "BoundAudiences": ["cairn"],
            "ClaimMappings": {"service": "service", "/team/name": "team"},
            "ListClaimMappings": {"groups": "groups"},
        });
        if let (Value::Object(c), Value::Object(e)) = (&mut config, extra) {
            c.extend(e);
        }
        AuthMethod {
            name: "jwt-test".into(),
            kind: "jwt".into(),
            config,
            ..AuthMethod::default()
        }
    }

    fn sign(key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::ES256), &claims, key).unwrap()
    }

    fn good_claims() -> Value {
        json!({"iss": "https://issuer.test", "aud": "cairn", "iat": NOW - 10, "exp": NOW + 600,
               "service": "web", "team": {"name": "ops"}, "groups": ["admins", "dev"]})
    }

    #[test]
    fn a_good_token_gives_its_mapped_claims() {
        let (private, public) = keys();
        let m = JwtMethod::parse(&method(&public, json!({}))).unwrap();
        let v = m.verify(&sign(&private, good_claims()), NOW).unwrap();
        assert_eq!(v.values["service"], "web");
        assert_eq!(v.values["team"], "ops");
        assert_eq!(v.lists["groups"], ["admins", "dev"]);
    }

    #[test]
    fn bad_tokens_are_refused_with_consuls_reasons() {
        let (private, public) = keys();
        let m = JwtMethod::parse(&method(&public, json!({}))).unwrap();
        let with = |patch: Value| {
            let mut c = good_claims();
            if let (Value::Object(c), Value::Object(p)) = (&mut c, patch) {
                for (k, v) in p {
                    if v.is_null() {
                        c.remove(&k);
                    } else {
                        c.insert(k, v);
                    }
                }
            }
            m.verify(&sign(&private, c), NOW).unwrap_err().message
        };
        assert!(with(json!({"exp": NOW - 3600})).contains("token is expired"));
        assert!(with(json!({"iss": "other"})).contains("invalid issuer"));
        assert!(with(json!({"aud": "someone-else"})).contains("bound audience"));
        assert!(with(json!({"exp": null, "iat": null})).contains("no issue time"));
        // Only exp: Consul takes nbf as NotBeforeLeeway before it.
        assert!(with(json!({"iat": null})).contains("not valid yet"));
        assert!(with(json!({"nbf": NOW + 3600})).contains("not valid yet"));
        // Signed by another key.
        let (other, _) = keys();
        let err = m.verify(&sign(&other, good_claims()), NOW).unwrap_err();
        assert!(err.message.contains("no known key"), "{}", err.message);
        let err = m.verify("not.a.jwt", NOW).unwrap_err();
        assert!(
            err.message.contains("error parsing token"),
            "{}",
            err.message
        );
        // Only iat: valid for ExpirationLeeway after it.
        assert!(
            m.verify(
                &sign(
                    &private,
                    json!({"iss": "https://issuer.test", "aud": "cairn", "iat": NOW - 100})
                ),
                NOW
            )
            .is_ok()
        );
        assert!(
            m.verify(
                &sign(
                    &private,
                    json!({"iss": "https://issuer.test", "aud": "cairn", "iat": NOW - 1000})
                ),
                NOW
            )
            .is_err()
        );
    }

    #[test]
    fn settings_are_checked_when_stored() {
        let (_, public) = keys();
        let err = |m: AuthMethod| JwtMethod::parse(&m).err().unwrap().message;
        assert!(
            err(AuthMethod {
                kind: "kubernetes".into(),
                ..method(&public, json!({}))
            })
            .contains("Type should be one of")
        );
        assert!(err(method("not a key", json!({}))).contains("error parsing public key"));
        assert!(err(method(&public, json!({"JWKSURL": "https://x"}))).contains("exactly one of"));
        assert!(err(method(&public, json!({"Bogus": 1}))).contains("invalid config"));
        assert!(
            err(method(&public, json!({"JWTSupportedAlgs": ["HS256"]})))
                .contains("JWTSupportedAlgs")
        );
    }

    #[test]
    fn rules_bind_what_their_selectors_match() {
        let (_, public) = keys();
        let m = method(&public, json!({}));
        let rule = |selector: &str, bind_type: &str, name: &str| BindingRule {
            id: name.into(),
            auth_method: m.name.clone(),
            selector: selector.into(),
            bind_type: bind_type.into(),
            bind_name: name.into(),
            ..BindingRule::default()
        };
        let rules = vec![
            rule("value.team == \"ops\"", "service", "${value.service}"),
            rule("\"admins\" in list.groups", "role", "admin-role"),
            rule("value.team == \"dev\"", "policy", "dev-only"),
        ];
        for r in &rules {
            check_rule(r, &m).unwrap();
        }
        let verified = Verified {
            values: [
                ("service".into(), "web".into()),
                ("team".into(), "ops".into()),
            ]
            .into(),
            lists: [("groups".into(), vec!["admins".into()])].into(),
        };
        let b = bind(rules.iter(), &verified);
        assert_eq!(b.services, ["web"]);
        assert_eq!(b.roles, ["admin-role"]);
        assert!(b.policies.is_empty());
        let nobody = bind(rules.iter().skip(2), &verified);
        assert_eq!(nobody, Bindings::default());
        // Stored rules are checked.
        let err = |r: BindingRule| check_rule(&r, &m).unwrap_err().message;
        assert!(err(rule("", "", "x")).contains("no BindType"));
        assert!(err(rule("", "bogus", "x")).contains("unknown BindType"));
        assert!(err(rule("", "service", "${value.nope}")).contains("unknown variable"));
        assert!(err(rule("value.team ==", "service", "x")).contains("Selector is invalid"));
        assert!(err(rule("", "service", "Not_Valid!")).contains("invalid BindName"));
    }
}
