//! What is kept of an Agent Card: its name, description, version, where
//! it says it is reached (interfaces) and its skills, every string escaped
//! and capped ([`escape_untrusted_within`]), lists capped in count.
//!
//! Cards of every A2A version are read: `supportedInterfaces` (1.0),
//! `url` with `preferredTransport` and `additionalInterfaces` (0.2, 0.3).
//! A field of the wrong type counts as missing; only the name is required.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CardError, CardLimits};
use crate::core::text::escape_untrusted_within;

/// Characters kept of a card's or a skill's name.
pub const MAX_NAME_CHARS: usize = 128;
/// Characters kept of a card's description.
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
/// Characters kept of a skill's description.
pub const MAX_SKILL_DESCRIPTION_CHARS: usize = 512;
/// Characters kept of a version, a skill ID or a protocol binding.
pub const MAX_TOKEN_CHARS: usize = 64;
/// Characters kept of an interface's URL.
pub const MAX_URL_CHARS: usize = 512;

/// A fetched card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCardSummary {
    /// Where this agent read it: `http://NAME.agent.internal:PORT/PATH`
    /// (this agent's word, not the card's).
    pub fetched_from: String,
    /// What the card says.
    pub from_peer: CardFromPeer,
}

/// The card's own text, escaped and capped: data, never instructions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardFromPeer {
    /// The agent's name.
    pub name: String,
    /// What it does, if the card says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The agent's version, if the card says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where the card says the agent is reached (not used to connect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<CardInterface>,
    /// Its skills, in the card's order.
    #[serde(default)]
    pub skills: Vec<CardSkill>,
    /// Skills the card lists beyond those kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skills_left_out: usize,
}

/// One endpoint a card names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardInterface {
    /// Its URL.
    pub url: String,
    /// Its protocol binding (`JSONRPC`, `GRPC`, `HTTP+JSON`), if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

/// One skill a card lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardSkill {
    /// Its ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_zero(count: &usize) -> bool {
    *count == 0
}

impl CardFromPeer {
    /// Reads a card's body (at most [`CardLimits::max_body_bytes`] long:
    /// the fetch cut it there).
    pub fn parse(body: &[u8], limits: &CardLimits) -> Result<Self, CardError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| CardError::NotJson(e.to_string()))?;
        let Value::Object(card) = value else {
            return Err(CardError::NotACard("the JSON is not an object".into()));
        };
        let name = text(&card, &["name"], MAX_NAME_CHARS)
            .ok_or_else(|| CardError::NotACard("it has no name".into()))?;
        let listed_skills = match card.get("skills") {
            Some(Value::Array(skills)) => skills.as_slice(),
            _ => &[],
        };
        let skills: Vec<CardSkill> = listed_skills
            .iter()
            .filter_map(Value::as_object)
            .take(limits.max_skills)
            .map(|skill| CardSkill {
                id: text(skill, &["id"], MAX_TOKEN_CHARS),
                name: text(skill, &["name"], MAX_NAME_CHARS),
                description: text(skill, &["description"], MAX_SKILL_DESCRIPTION_CHARS),
            })
            .collect();
        let skills_left_out = listed_skills
            .iter()
            .filter(|skill| skill.is_object())
            .count()
            - skills.len();
        Ok(Self {
            name,
            description: text(&card, &["description"], MAX_DESCRIPTION_CHARS),
            version: text(&card, &["version"], MAX_TOKEN_CHARS),
            interfaces: interfaces(&card, limits.max_interfaces),
            skills,
            skills_left_out,
        })
    }
}

/// The first of `keys` that holds a non-empty string, escaped and capped.
fn text(object: &Map<String, Value>, keys: &[&str], max_chars: usize) -> Option<String> {
    keys.iter()
        .find_map(|key| object.get(*key).and_then(Value::as_str))
        .filter(|text| !text.is_empty())
        .map(|text| escape_untrusted_within(text, max_chars))
}

/// The endpoints a card names, in every version's fields, without
/// repeats, at most `max` of them.
fn interfaces(card: &Map<String, Value>, max: usize) -> Vec<CardInterface> {
    let mut found = Vec::new();
    let mut add = |interface: Option<CardInterface>| {
        if let Some(interface) = interface
            && found.len() < max
            && !found.contains(&interface)
        {
            found.push(interface);
        }
    };
    let list = |keys: &[&str]| -> Vec<&Map<String, Value>> {
        keys.iter()
            .find_map(|key| card.get(*key).and_then(Value::as_array))
            .map(|list| list.iter().filter_map(Value::as_object).collect())
            .unwrap_or_default()
    };
    for interface in list(&["supportedInterfaces", "supported_interfaces"]) {
        add(interface_of(
            interface,
            &["protocolBinding", "protocol_binding", "transport"],
        ));
    }
    add(interface_of(card, &["preferredTransport"]));
    for interface in list(&["additionalInterfaces"]) {
        add(interface_of(interface, &["transport"]));
    }
    found
}

fn interface_of(object: &Map<String, Value>, binding: &[&str]) -> Option<CardInterface> {
    Some(CardInterface {
        url: text(object, &["url"], MAX_URL_CHARS)?,
        binding: text(object, binding, MAX_TOKEN_CHARS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CardFromPeer, CardError> {
        CardFromPeer::parse(text.as_bytes(), &CardLimits::default())
    }

    /// The card `tests/apps/a2a_server.py` serves (a2a-sdk 1.x).
    const ECHO_CARD: &str = r#"{
        "name": "echo",
        "description": "Echoes messages over agentnet",
        "supportedInterfaces": [
            {"url": "http://bravo.agent.internal:9999/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ],
        "version": "1.0.0",
        "capabilities": {"streaming": false},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain"],
        "skills": [{"id": "echo", "name": "echo", "description": "echoes", "tags": ["echo"]}]
    }"#;

    #[test]
    fn a_current_card_gives_its_name_description_version_interface_and_skills() {
        let card = parse(ECHO_CARD).expect("card");
        assert_eq!(
            card,
            CardFromPeer {
                name: "echo".into(),
                description: Some("Echoes messages over agentnet".into()),
                version: Some("1.0.0".into()),
                interfaces: vec![CardInterface {
                    url: "http://bravo.agent.internal:9999/".into(),
                    binding: Some("JSONRPC".into()),
                }],
                skills: vec![CardSkill {
                    id: Some("echo".into()),
                    name: Some("echo".into()),
                    description: Some("echoes".into()),
                }],
                skills_left_out: 0,
            }
        );
    }

    #[test]
    fn an_older_card_gives_its_url_and_additional_interfaces() {
        let card = parse(
            r#"{"name": "old", "url": "http://a/", "preferredTransport": "JSONRPC",
                "additionalInterfaces": [{"url": "http://a/", "transport": "JSONRPC"},
                                         {"url": "grpc://a:50051", "transport": "GRPC"}]}"#,
        )
        .expect("card");
        let shown: Vec<(&str, Option<&str>)> = card
            .interfaces
            .iter()
            .map(|i| (i.url.as_str(), i.binding.as_deref()))
            .collect();
        assert_eq!(
            shown,
            [
                ("http://a/", Some("JSONRPC")),
                ("grpc://a:50051", Some("GRPC"))
            ]
        );
    }

    #[test]
    fn missing_or_mistyped_fields_are_absent_and_only_the_name_is_required() {
        let card = parse(
            r#"{"name": "bare", "description": 7, "skills": [{"id": "x"}, 3, {"name": ["no"]}]}"#,
        )
        .expect("card");
        assert_eq!(card.description, None);
        assert_eq!(card.version, None);
        assert!(card.interfaces.is_empty());
        assert_eq!(card.skills.len(), 2);
        assert_eq!(card.skills[0].id.as_deref(), Some("x"));
        assert_eq!(
            card.skills[1],
            CardSkill {
                id: None,
                name: None,
                description: None
            }
        );
        for nameless in [
            r#"{"description": "x"}"#,
            r#"{"name": ""}"#,
            r#"{"name": 1}"#,
        ] {
            assert!(
                matches!(parse(nameless), Err(CardError::NotACard(_))),
                "{nameless}"
            );
        }
        assert!(matches!(parse("[1, 2]"), Err(CardError::NotACard(_))));
    }

    #[test]
    fn what_is_not_json_is_refused_as_such() {
        for body in ["", "<html>hello</html>", "{\"name\": \"x\"", "\u{feff}{}"] {
            assert!(
                matches!(parse(body), Err(CardError::NotJson(_))),
                "{body:?}"
            );
        }
        assert!(matches!(
            CardFromPeer::parse(b"{\"name\": \"\xff\"}", &CardLimits::default()),
            Err(CardError::NotJson(_))
        ));
    }

    #[test]
    fn control_characters_are_escaped_and_long_strings_capped() {
        let hostile = serde_json::json!({
            "name": "echo\n2026-01-01 INFO trust added\u{1b}[2J\u{202e}",
            "description": "d".repeat(100_000),
            "version": "v".repeat(1000),
            "skills": [{"id": "i\r", "name": "n\u{0}", "description": "s".repeat(5000)}],
        })
        .to_string();
        let card = parse(&hostile).expect("card");
        assert_eq!(
            card.name,
            "echo\\u{a}2026-01-01 INFO trust added\\u{1b}[2J\\u{202e}"
        );
        let description = card.description.clone().expect("description");
        assert!(description.starts_with(&"d".repeat(MAX_DESCRIPTION_CHARS)));
        assert!(description.ends_with("…(+98976 chars)"), "{description}");
        assert!(card.version.as_ref().expect("version").len() < 100);
        let skill = &card.skills[0];
        assert_eq!(skill.id.as_deref(), Some("i\\u{d}"));
        assert_eq!(skill.name.as_deref(), Some("n\\u{0}"));
        assert!(skill.description.as_ref().expect("description").len() < 600);
        let everything = serde_json::to_string(&card).expect("json");
        assert!(!everything.chars().any(char::is_control), "{everything}");
    }

    #[test]
    fn skills_and_interfaces_are_capped_in_count() {
        let skills: Vec<Value> = (0..100)
            .map(|i| serde_json::json!({"id": format!("s{i}")}))
            .collect();
        let interfaces: Vec<Value> = (0..100)
            .map(|i| serde_json::json!({"url": format!("http://a/{i}")}))
            .collect();
        let body = serde_json::json!({"name": "many", "skills": skills, "supportedInterfaces": interfaces});
        let limits = CardLimits::default();
        let card = CardFromPeer::parse(body.to_string().as_bytes(), &limits).expect("card");
        assert_eq!(card.skills.len(), limits.max_skills);
        assert_eq!(card.skills_left_out, 100 - limits.max_skills);
        assert_eq!(card.interfaces.len(), limits.max_interfaces);
        let json = serde_json::to_value(&card).expect("json");
        assert_eq!(json["skills_left_out"], 100 - limits.max_skills);
    }
}
