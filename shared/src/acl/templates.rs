//! Consul's built-in templated policies: `builtin/service`, `builtin/node` and
//! `builtin/dns`. A token or role names one with its variables; it stands for the rules the
//! template renders to (`/v1/acl/templated-policy/preview/:name` shows them as a synthetic
//! policy).

use super::{Policy, TemplatedPolicy};

/// One built-in template, as `/v1/acl/templated-policies` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Template {
    pub name: &'static str,
    /// JSON schema of the variables; empty when the template takes none.
    pub schema: &'static str,
    /// HCL with `{{.Name}}` where the `name` variable goes.
    pub template: &'static str,
    pub description: &'static str,
}

const NAME_SCHEMA: &str = "{\n\t\"type\": \"object\",\n\t\"properties\": {\n\t\t\"name\": { \"type\": \"string\", \"minLength\": 1 }\n\t},\n\t\"required\": [\"name\"]\n}";

pub const TEMPLATES: [Template; 3] = [
    Template {
        name: "builtin/dns",
        schema: "",
        template: "\nnode_prefix \"\" {\n\tpolicy = \"read\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}\nquery_prefix \"\" {\n\tpolicy = \"read\"\n}",
        description: "Lets the token read what DNS answers: every node, service and prepared query.",
    },
    Template {
        name: "builtin/node",
        schema: NAME_SCHEMA,
        template: "\nnode \"{{.Name}}\" {\n\tpolicy = \"write\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}",
        description: "Lets an agent register node `name` and read every service.",
    },
    Template {
        name: "builtin/service",
        schema: NAME_SCHEMA,
        template: "\nservice \"{{.Name}}\" {\n\tpolicy = \"write\"\n}\nservice \"{{.Name}}-sidecar-proxy\" {\n\tpolicy = \"write\"\n}\nservice_prefix \"\" {\n\tpolicy = \"read\"\n}\nnode_prefix \"\" {\n\tpolicy = \"read\"\n}",
        description: "Lets the token register service `name` (and its sidecar) and discover every service and node.",
    },
];

pub fn find(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

/// Whether the variables fit the template: a template with a schema needs a name, and
/// `builtin/service` one that is a valid service name.
pub fn validate(t: &Template, tp: &TemplatedPolicy) -> Result<(), String> {
    if t.schema.is_empty() {
        return Ok(());
    }
    let name = tp
        .template_variables
        .as_ref()
        .map_or("", |v| v.name.as_str());
    let problem = if name.is_empty() {
        Some("name is required")
    } else if t.name == "builtin/service" && !valid_service_name(name) {
        Some("name must be lowercase letters, digits, '-' and '_'")
    } else {
        None
    };
    match problem {
        Some(p) => Err(format!(
            "validation error for templated policy: {:?}: {p}",
            t.name
        )),
        None => Ok(()),
    }
}

/// Service names a service identity or `builtin/service` may carry.
pub fn valid_service_name(n: &str) -> bool {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !n.is_empty()
        && n.bytes().all(|b| ok(b) || b == b'-' || b == b'_')
        && n.bytes().next().is_some_and(ok)
        && n.bytes().last().is_some_and(ok)
}

/// The rules a templated policy stands for, or why it is not valid.
pub fn render(tp: &TemplatedPolicy) -> Result<String, String> {
    let t = find(&tp.template_name)
        .ok_or_else(|| format!("acl templated policy does not exist: {}", tp.template_name))?;
    validate(t, tp)?;
    let name = tp
        .template_variables
        .as_ref()
        .map_or("", |v| v.name.as_str());
    Ok(t.template.replace("{{.Name}}", name))
}

/// The policy a templated policy renders to, named after a hash of its rules as Consul
/// names its synthetic policies.
pub fn synthetic_policy(tp: &TemplatedPolicy) -> Result<Policy, String> {
    let rules = render(tp)?;
    let id = format!("{:032x}", fnv1a_128(rules.as_bytes()));
    Ok(Policy {
        name: format!("synthetic-policy-{id}"),
        description: format!(
            "synthetic policy generated from templated policy: {}",
            tp.template_name
        ),
        id,
        rules,
        datacenters: tp.datacenters.clone(),
        ..Policy::default()
    })
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::super::{Access, Authorizer, Resource, TemplateVariables};
    use super::*;

    fn tp(name: &str, var: &str) -> TemplatedPolicy {
        TemplatedPolicy {
            template_name: name.into(),
            template_variables: (!var.is_empty()).then(|| TemplateVariables { name: var.into() }),
            datacenters: Vec::new(),
        }
    }

    #[test]
    fn each_template_renders_rules_that_parse_and_grant_what_it_says() {
        let service = render(&tp("builtin/service", "api")).unwrap();
        let a = Authorizer::from_texts(&[service], false).unwrap();
        assert!(a.allowed(Resource::Service, "api", Access::Write));
        assert!(!a.allowed(Resource::Service, "db", Access::Write));
        assert!(a.allowed(Resource::Node, "n1", Access::Read));
        let node = render(&tp("builtin/node", "n1")).unwrap();
        let a = Authorizer::from_texts(&[node], false).unwrap();
        assert!(a.allowed(Resource::Node, "n1", Access::Write));
        assert!(!a.allowed(Resource::Node, "n2", Access::Write));
        let dns = render(&tp("builtin/dns", "")).unwrap();
        let a = Authorizer::from_texts(&[dns], false).unwrap();
        assert!(a.allowed(Resource::Query, "q", Access::Read));
        assert!(!a.allowed(Resource::Service, "web", Access::Write));
    }

    #[test]
    fn bad_variables_and_unknown_templates_are_refused() {
        let e = render(&tp("builtin/service", "")).unwrap_err();
        assert!(e.contains("name is required"), "{e}");
        assert!(render(&tp("builtin/service", "Bad Name")).is_err());
        let e = render(&tp("builtin/nope", "x")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn the_synthetic_policy_is_named_by_its_rules() {
        let a = synthetic_policy(&tp("builtin/service", "api")).unwrap();
        let b = synthetic_policy(&tp("builtin/service", "api")).unwrap();
        let c = synthetic_policy(&tp("builtin/service", "web")).unwrap();
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.name, format!("synthetic-policy-{}", a.id));
    }
}
