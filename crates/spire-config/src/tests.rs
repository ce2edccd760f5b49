use super::*;

fn list(w: &mut Walk<'_>, path: &str, value: &Value) {
    match value.as_array() {
        Some(items) => {
            let items = items.iter().map(|v| convert(v, Conv::Str)).collect::<Result<Vec<_>, _>>();
            match items {
                Ok(items) => set(&mut w.table, "names", toml::Value::Array(items)),
                Err(why) => w.refused.push(format!("{path} {why}")),
            }
        }
        None => w.refused.push(format!("{path} must be a list")),
    }
}

const SCHEMA: Schema = Schema {
    section: "node",
    settings: &[
        ("node", Rule::Block),
        ("node.port", Rule::Map { to: "port", conv: Conv::Int }),
        ("node.every", Rule::Map { to: "every", conv: Conv::Duration }),
        ("node.names", Rule::Hook(list)),
        ("node.old", Rule::Ignore("node.old is ignored")),
        ("node.risky", Rule::Refuse("node.risky is not supported")),
        ("plugins", Rule::Plugins),
        (
            "plugins.Attestor.plain.plugin_data.deep",
            Rule::Map { to: "plain.deep", conv: Conv::Bool },
        ),
    ],
    plugins: &[
        ("Attestor", "plain", PluginRule::Table("plain")),
        ("Keys", "disk", PluginRule::Ignore("Keys \"disk\" is noted")),
    ],
    plugin_types: &[("Attestor", "only \"plain\" is built in")],
    constraints: &[("Keys", Constraint::ExactlyOne), ("Attestor", Constraint::AtLeastOne)],
    unknown: |path| format!("{path} is unknown"),
    duration: |s| if s.ends_with('s') { Ok(()) } else { Err(format!("{s:?} has no unit")) },
};

fn refused(text: &str) -> Vec<String> {
    match translate(&SCHEMA, text, Format::detect(text)) {
        Err(SpireConfigError::Refused(sentences)) => sentences,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn format_is_json_exactly_when_the_text_opens_an_object() {
    assert_eq!(Format::detect(" \n\t{\"node\": {}}"), Format::Json);
    assert_eq!(Format::detect("node {\n}\n"), Format::Hcl);
    assert_eq!(Format::detect("# {\nnode {}\n"), Format::Hcl);
}

#[test]
fn settings_hooks_and_plugin_tables_become_one_table() {
    let text = r#"
node {
    port = "8081"
    every = "5s"
    names = ["a", 2]
    old = true
}
plugins {
    Keys "disk" {
        plugin_data {
            anything = 1
        }
    }
    Attestor "plain" {
        plugin_data {
            deep = "true"
        }
    }
}
"#;
    let t = translate(&SCHEMA, text, Format::Hcl).unwrap();
    let want: toml::Table = toml::from_str(
        "port = 8081\nevery = \"5s\"\nnames = [\"a\", \"2\"]\n[plain]\ndeep = true\n",
    )
    .unwrap();
    assert_eq!(t.table, want);
    assert_eq!(
        t.notes,
        vec!["node.old is ignored".to_owned(), "Keys \"disk\" is noted".to_owned()]
    );
}

#[test]
fn a_plugin_table_exists_even_without_data() {
    let text = r#"{"node": {}, "plugins": {"Keys": [{"disk": {"plugin_data": null}}],
        "Attestor": [{"plain": {"plugin_data": null}}]}}"#;
    let t = translate(&SCHEMA, text, Format::Json).unwrap();
    assert_eq!(t.table.get("plain"), Some(&toml::Value::Table(toml::Table::new())));
}

#[test]
fn every_problem_is_one_sentence() {
    let text = r#"
node {
    port = "eighty"
    every = "5m"
    names = "a"
    risky = 1
    typo = 1
}
plugins {
    Keys "disk" {}
    Keys "other" {}
    Attestor "plain" {
        plugin_data_file = "/data.hcl"
        plugin_data {
            deep = 1
            shallow = 2
        }
    }
    Attestor "fancy" {}
    Mystery "x" {}
}
"#;
    assert_eq!(
        refused(text),
        vec![
            "node.every is not a duration: \"5m\" has no unit",
            "node.names must be a list",
            "node.port must be an integer, not \"eighty\"",
            "node.risky is not supported",
            "node.typo is unknown",
            "plugin Attestor \"fancy\" is not supported: only \"plain\" is built in",
            "plugin Attestor \"plain\" is not supported with plugin_data_file: write its settings \
             in plugin_data",
            "plugins.Attestor.plain.plugin_data.deep must be true or false, not 1",
            "plugins.Attestor.plain.plugin_data.shallow is unknown",
            "plugin type Keys is unknown (SPIRE refuses it too)",
            "plugin type Mystery is unknown (SPIRE refuses it too)",
            "plugin type \"Keys\" constraint not satisfied: expected exactly 1 but got 2",
        ]
    );
}

#[test]
fn missing_sections_and_plugins_are_named_in_spires_words() {
    assert_eq!(
        refused("{}"),
        vec!["node section must be configured", "plugins section must be configured"]
    );
    assert_eq!(
        refused("node {}\nplugins {\n  Keys \"disk\" {\n    enabled = false\n  }\n}\n"),
        vec![
            "plugin type \"Keys\" constraint not satisfied: expected exactly 1 but got 0",
            "plugin type \"Attestor\" constraint not satisfied: expected at least 1 but got 0",
        ]
    );
}

#[test]
fn external_plugins_are_refused() {
    let text = "node {}\nplugins {\n  Keys \"disk\" { plugin_cmd = \"/bin/km\" }\n  \
                Attestor \"plain\" {}\n}\n";
    assert_eq!(
        refused(text),
        vec![
            "plugin Keys \"disk\" is not supported as an external plugin (plugin_cmd): ward runs \
             no plugin processes"
        ]
    );
}

#[test]
fn undecodable_text_is_a_decode_error() {
    assert!(matches!(translate(&SCHEMA, "node {", Format::Hcl), Err(SpireConfigError::Decode(_))));
    assert_eq!(
        translate(&SCHEMA, "[1]", Format::Json),
        Err(SpireConfigError::Decode("the top level is not an object".into()))
    );
}
