//! Scope templates: named scope lists a key is created from (`"template": "read-only"`), so that
//! the common shapes of key are spelt the same way every time. The platform's four are built
//! in; `--scope-templates FILE` (a JSON object of name → scopes) adds more or redefines them.

use anyhow::Context;
use keygate_protocol::scopes::ScopePattern;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Scopes a template may list, as a key may.
const MAX_SCOPES: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeTemplates(BTreeMap<String, Vec<String>>);

impl Default for ScopeTemplates {
    /// The platform's documented templates.
    fn default() -> Self {
        let builtin: [(&str, &[&str]); 4] = [
            ("read-only", &["*:read"]),
            ("full-access", &["*"]),
            (
                "booking-management",
                &["bookings:*", "customers:*", "payments:read"],
            ),
            (
                "product-catalog",
                &["products:*", "inventory:*", "media:*", "drafts:*"],
            ),
        ];
        ScopeTemplates(
            builtin
                .into_iter()
                .map(|(name, scopes)| {
                    (
                        name.to_owned(),
                        scopes.iter().map(|s| s.to_string()).collect(),
                    )
                })
                .collect(),
        )
    }
}

impl ScopeTemplates {
    /// The built-in templates, then `file`'s, which add to them or replace one of the same name.
    pub fn load(file: &Path) -> anyhow::Result<ScopeTemplates> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read the scope templates", file.display()))?;
        let given: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected a JSON object of template name to a list of scopes, \
                 e.g. {{\"support\": [\"tickets:*\", \"customers:read\"]}}",
                    file.display()
                )
            })?;
        let mut templates = ScopeTemplates::default();
        for (name, scopes) in given {
            Self::check(&name, &scopes).with_context(|| format!("{}", file.display()))?;
            templates.0.insert(name, scopes);
        }
        Ok(templates)
    }

    fn check(name: &str, scopes: &[String]) -> anyhow::Result<()> {
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "template {name:?}: a name is 1-64 of A-Z a-z 0-9 - _"
        );
        anyhow::ensure!(
            scopes.len() <= MAX_SCOPES,
            "template {name:?}: at most {MAX_SCOPES} scopes"
        );
        for s in scopes {
            ScopePattern::parse(s).map_err(|e| anyhow::anyhow!("template {name:?}: {e}"))?;
        }
        Ok(())
    }

    /// The scopes of template `name`.
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.0.get(name).map(Vec::as_slice)
    }

    /// Every template's name, for an error that says what is known.
    pub fn names(&self) -> String {
        self.0
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `{"read-only": ["*:read"], …}`, for `GET /v1/scope-templates`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platforms_templates_are_built_in() {
        let t = ScopeTemplates::default();
        assert_eq!(t.get("read-only"), Some(&["*:read".to_owned()][..]));
        assert_eq!(t.get("full-access"), Some(&["*".to_owned()][..]));
        assert_eq!(
            t.get("booking-management").unwrap(),
            ["bookings:*", "customers:*", "payments:read"]
        );
        assert_eq!(
            t.get("product-catalog").unwrap(),
            ["products:*", "inventory:*", "media:*", "drafts:*"]
        );
        assert_eq!(
            t.names(),
            "booking-management, full-access, product-catalog, read-only"
        );
        for scopes in t.0.values() {
            for s in scopes {
                ScopePattern::parse(s).unwrap();
            }
        }
    }

    #[test]
    fn a_file_adds_and_redefines_templates_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("templates.json");
        std::fs::write(
            &file,
            r#"{"support": ["tickets:*", "customers:read"], "read-only": ["products:read"]}"#,
        )
        .unwrap();
        let t = ScopeTemplates::load(&file).unwrap();
        assert_eq!(t.get("support").unwrap(), ["tickets:*", "customers:read"]);
        assert_eq!(t.get("read-only").unwrap(), ["products:read"]);
        assert_eq!(t.get("full-access").unwrap(), ["*"]);
        for (text, says) in [
            (r#"{"bad name": ["a:b"]}"#, "a name is"),
            (r#"{"x": ["not a scope!"]}"#, "template \"x\""),
            (r#"["read-only"]"#, "expected a JSON object"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = format!("{:#}", ScopeTemplates::load(&file).unwrap_err());
            assert!(e.contains(says), "{text}: {e}");
            assert!(e.contains("templates.json"), "{e}");
        }
    }
}
