//! Generic providers declared in config: schema from `fields` / `public_fields`; fields the
//! inject template references are required.

use super::fields::{FieldDef, Rule, Schema};
use crate::providers::config::{template_fields, GenericProvider, InjectTemplate};

pub(crate) fn schema(name: &str, g: &GenericProvider) -> Schema {
    let templates: Vec<&str> = match &g.inject {
        InjectTemplate::Header { value, .. } | InjectTemplate::Query { value, .. } => vec![value],
        InjectTemplate::Basic { user, password } => vec![user, password],
    };
    let required: Vec<&str> = templates.iter().flat_map(|t| template_fields(t).unwrap_or_default()).collect();
    let mut fields: Vec<FieldDef> = g
        .fields
        .iter()
        .map(|f| FieldDef {
            name: f.clone(),
            secret: !g.public_fields.contains(f),
            required: required.contains(&f.as_str()),
            list: false,
            rule: Rule::Opaque,
        })
        .collect();
    if g.fields.iter().any(|f| f == "webhook_secret") && !g.fields.iter().any(|f| f == "webhook_secret_previous") {
        fields.push(FieldDef::secret("webhook_secret_previous", false, Rule::Opaque));
    }
    Schema { provider: name.to_string(), fields, cross: None }
}
