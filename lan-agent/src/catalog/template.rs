//! Prepared query templates (`Template.Type: name_prefix_match`): a query whose name is a
//! prefix of the names it answers, with its `Service` strings interpolated per lookup.
//!
//! Interpolations are `${...}` with Consul's variables: `name.full` (the name looked up),
//! `name.prefix` (the template's name), `name.suffix` (the rest), `agent.segment`, and
//! `match(N)`, the Nth capture of `Template.Regexp` against the full name ("" when it does
//! not match). `$${` stands for a literal `${`. Anything else is refused when the template
//! is stored, in the words Consul uses, so a bad template never reaches execution.

use std::collections::BTreeMap;

use cairn_shared::api::{PreparedQuery, QuerySource, TEMPLATE_NAME_PREFIX_MATCH};
use regex::Regex;

/// One piece of an interpolated string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    NameFull,
    NamePrefix,
    NameSuffix,
    AgentSegment,
    Match(usize),
}

fn parse_expr(expr: &str) -> Result<Piece, String> {
    let e = expr.trim();
    match e {
        "name.full" => return Ok(Piece::NameFull),
        "name.prefix" => return Ok(Piece::NamePrefix),
        "name.suffix" => return Ok(Piece::NameSuffix),
        "agent.segment" => return Ok(Piece::AgentSegment),
        _ => {}
    }
    if let Some(arg) = e
        .strip_prefix("match")
        .map(str::trim_start)
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.strip_suffix(')'))
    {
        return arg
            .trim()
            .parse::<usize>()
            .map(Piece::Match)
            .map_err(|_| format!("match() takes a whole number, got {:?}", arg.trim()));
    }
    if e.contains('(') {
        return Err(format!("unknown function called: {e}"));
    }
    Err(format!("unknown variable accessed: {e}"))
}

/// Splits a string into text and interpolations.
fn parse(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            text.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| "expected \"}\" but found end of string".to_string())?;
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(parse_expr(&after[..end])?);
            rest = &after[end + 1..];
        } else {
            text.push('$');
            rest = &tail[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

struct Vars<'a> {
    full: &'a str,
    prefix: &'a str,
    segment: &'a str,
    matches: Vec<String>,
}

fn eval(pieces: &[Piece], v: &Vars<'_>) -> String {
    let mut out = String::new();
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(t),
            Piece::NameFull => out.push_str(v.full),
            Piece::NamePrefix => out.push_str(v.prefix),
            Piece::NameSuffix => out.push_str(v.full.strip_prefix(v.prefix).unwrap_or(v.full)),
            Piece::AgentSegment => out.push_str(v.segment),
            Piece::Match(i) => out.push_str(v.matches.get(*i).map_or("", String::as_str)),
        }
    }
    out
}

/// Every interpolated string of the `Service` part, with the path Consul names it by
/// (`.Service`, `.Tags[0]`), for checking and rendering alike.
fn for_each_string(
    q: &mut PreparedQuery,
    f: &mut dyn FnMut(&str, &mut String) -> Result<(), String>,
) -> Result<(), String> {
    let s = &mut q.service;
    f(".Service", &mut s.service)?;
    f(".Near", &mut s.near)?;
    let lists: [(&str, &mut Option<Vec<String>>); 3] = [
        (".Failover.Datacenters", &mut s.failover.datacenters),
        (".IgnoreCheckIDs", &mut s.ignore_check_ids),
        (".Tags", &mut s.tags),
    ];
    for (path, list) in lists {
        for (i, item) in list.iter_mut().flatten().enumerate() {
            f(&format!("{path}[{i}]"), item)?;
        }
    }
    let maps: [(&str, &mut Option<BTreeMap<String, String>>); 2] = [
        (".NodeMeta", &mut s.node_meta),
        (".ServiceMeta", &mut s.service_meta),
    ];
    for (path, map) in maps {
        for (k, v) in map.iter_mut().flatten() {
            f(&format!("{path}[{k}]"), v)?;
        }
    }
    Ok(())
}

/// The regex crate explains over several lines; an HTTP error body wants one.
fn bad_regexp(e: &regex::Error) -> String {
    let text = e.to_string();
    format!(
        "Bad Regexp: {}",
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}

/// Checks a template as Consul does when storing it: its type, its regexp, every
/// interpolation, and a trial render with its own name.
pub(super) fn compile(q: &PreparedQuery) -> Result<(), String> {
    if q.template.kind != TEMPLATE_NAME_PREFIX_MATCH {
        return Err(format!("Bad Template.Type '{}'", q.template.kind));
    }
    if !q.template.regexp.is_empty() {
        Regex::new(&q.template.regexp).map_err(|e| bad_regexp(&e))?;
    }
    let mut copy = q.clone();
    for_each_string(&mut copy, &mut |path, s| {
        parse(s)
            .map(|_| ())
            .map_err(|e| format!("Bad format '{s}' in Service{path}: {e}"))
    })?;
    render(q, &q.name, &QuerySource::default()).map(|_| ())
}

/// The query a template makes of `name`.
pub(super) fn render(
    q: &PreparedQuery,
    name: &str,
    agent: &QuerySource,
) -> Result<PreparedQuery, String> {
    let matches = if q.template.regexp.is_empty() {
        Vec::new()
    } else {
        let re = Regex::new(&q.template.regexp).map_err(|e| bad_regexp(&e))?;
        re.captures(name)
            .map(|c| {
                c.iter()
                    .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let vars = Vars {
        full: name,
        prefix: &q.name,
        segment: &agent.segment,
        matches,
    };
    let mut out = q.clone();
    for_each_string(&mut out, &mut |path, s| {
        let pieces = parse(s).map_err(|e| format!("Bad format '{s}' in Service{path}: {e}"))?;
        *s = eval(&pieces, &vars);
        Ok(())
    })?;
    if q.template.remove_empty_tags
        && let Some(tags) = out.service.tags.as_mut()
    {
        tags.retain(|t| !t.is_empty());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(name: &str, service: &str, regexp: &str) -> PreparedQuery {
        let mut q = PreparedQuery {
            name: name.into(),
            ..PreparedQuery::default()
        };
        q.template.kind = TEMPLATE_NAME_PREFIX_MATCH.into();
        q.template.regexp = regexp.into();
        q.service.service = service.into();
        q
    }

    #[test]
    fn name_variables_and_regexp_matches() {
        let q = template("geo-", "${name.suffix}", "");
        assert_eq!(
            render(&q, "geo-web", &QuerySource::default())
                .unwrap()
                .service
                .service,
            "web"
        );
        let mut q = template(
            "geo-db-",
            "${match(1)}-${match(2)}",
            r"^geo-db-(.*?)-([^\-]+?)$",
        );
        q.service.tags = Some(vec!["${match(2)}".into(), "x-${name.prefix}".into()]);
        let r = render(&q, "geo-db-mysql-primary", &QuerySource::default()).unwrap();
        assert_eq!(r.service.service, "mysql-primary");
        assert_eq!(r.service.tags.unwrap(), ["primary", "x-geo-db-"]);
        // No match: captures are empty, the rest still renders.
        let r = render(&q, "geo-db-x", &QuerySource::default()).unwrap();
        assert_eq!(r.service.service, "-");
        let q = template("", "${name.full} $${literal} ${ agent.segment }", "");
        let agent = QuerySource {
            segment: "alpha".into(),
            ..QuerySource::default()
        };
        assert_eq!(
            render(&q, "anything", &agent).unwrap().service.service,
            "anything ${literal} alpha"
        );
    }

    #[test]
    fn empty_tags_are_removed_when_asked() {
        let mut q = template("t-", "web", "^t-(x)?");
        q.service.tags = Some(vec!["${match(1)}".into(), "keep".into()]);
        let r = render(&q, "t-", &QuerySource::default()).unwrap();
        assert_eq!(r.service.tags.clone().unwrap(), ["", "keep"]);
        q.template.remove_empty_tags = true;
        let r = render(&q, "t-", &QuerySource::default()).unwrap();
        assert_eq!(r.service.tags.unwrap(), ["keep"]);
    }

    #[test]
    fn bad_templates_are_refused_in_consuls_words() {
        let mut bad_type = template("a", "web", "");
        bad_type.template.kind = "glob".into();
        assert_eq!(compile(&bad_type).unwrap_err(), "Bad Template.Type 'glob'");
        let e = compile(&template("a", "web", "([a-z")).unwrap_err();
        assert!(e.starts_with("Bad Regexp: "), "{e}");
        let e = compile(&template("a", "${nope}", "")).unwrap_err();
        assert_eq!(
            e,
            "Bad format '${nope}' in Service.Service: unknown variable accessed: nope"
        );
        let e = compile(&template("a", "${name.full", "")).unwrap_err();
        assert!(e.contains("expected \"}\""), "{e}");
        let e = compile(&template("a", "${frob(1)}", "")).unwrap_err();
        assert!(e.contains("unknown function called"), "{e}");
        assert!(compile(&template("a", "${match(1)}", "^a(.*)$")).is_ok());
    }
}
