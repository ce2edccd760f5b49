//! Agent path templates that name fields only: text with `{{ .Field }}` actions, the subset of
//! SPIRE's Go `text/template` (`pkg/common/agentpathtemplate`) that attestors' default
//! templates and most written ones use. The fields an attestor offers are fixed when the
//! template is parsed, so a template naming another is refused with the configuration.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// A piece of template text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    /// Text as written.
    Text(&'a str),
    /// The inside of a `{{ ... }}` action, trimmed.
    Action(&'a str),
}

/// `text` cut into text and actions; `None` when an action is not closed or a `}}` has no
/// opening.
pub(super) fn split_template(text: &str) -> Option<Vec<Segment<'_>>> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            segments.push(Segment::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}")?;
        segments.push(Segment::Action(after[..close].trim()));
        rest = &after[close + 2..];
    }
    if rest.contains("}}") {
        return None;
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest));
    }
    Some(segments)
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTemplate {
    pieces: Vec<Piece>,
}

impl FieldTemplate {
    /// Parses `text`, whose actions may name the `fields` only (`{{ .ProjectID }}`).
    ///
    /// # Errors
    /// SPIRE's text for a template that does not parse (`failed to parse agent path template:
    /// "<text>"`), or a sentence naming the action ward does not render.
    pub fn parse(text: &str, fields: &[&str]) -> Result<Self, String> {
        let segments = split_template(text)
            .ok_or_else(|| format!("failed to parse agent path template: {text:?}"))?;
        let pieces = segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Text(t) => Ok(Piece::Text(t.to_owned())),
                Segment::Action(action) => match action.strip_prefix('.') {
                    Some(name) if fields.contains(&name) => Ok(Piece::Field(name.to_owned())),
                    _ => Err(format!(
                        "agent_path_template action {{{{ {action} }}}} is not supported: ward \
                         renders {}",
                        fields.iter().map(|f| format!(".{f}")).collect::<Vec<_>>().join(", ")
                    )),
                },
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { pieces })
    }

    /// The text with each field replaced by its value in `values` (absent: empty).
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(values.get(f.as_str()).map_or("", String::as_str)),
            }
        }
        out
    }
}

/// `spiffe://<td>/spire/agent<path>`, with SPIRE's checks of the path (`idutil.AgentID`).
///
/// # Errors
/// SPIRE's text for a path that is not a SPIFFE ID path.
pub fn agent_id(td: &ward_core::TrustDomain, path: &str) -> Result<ward_core::SpiffeId, String> {
    if !path.starts_with('/') {
        return Err(format!("invalid agent path suffix {path:?}: path must have a leading slash"));
    }
    td.spiffe_id(&format!("/spire/agent{path}"))
        .map_err(|e| format!("invalid agent path suffix {path:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_named_fields_and_refuses_others() {
        let t = FieldTemplate::parse("/{{ .A }}/x/{{.B}}", &["A", "B"]).unwrap();
        let values = BTreeMap::from([("A", "1".to_owned()), ("B", "2".to_owned())]);
        assert_eq!(t.render(&values), "/1/x/2");
        assert!(FieldTemplate::parse("/{{ .C }}", &["A"]).unwrap_err().contains("not supported"));
        assert_eq!(
            FieldTemplate::parse("/{{ .A", &["A"]).unwrap_err(),
            "failed to parse agent path template: \"/{{ .A\""
        );
        let td = ward_core::TrustDomain::new("example.org").unwrap();
        assert_eq!(agent_id(&td, "/a/b").unwrap().as_str(), "spiffe://example.org/spire/agent/a/b");
        assert!(agent_id(&td, "a").is_err());
    }
}
