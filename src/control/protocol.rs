//! The control protocol's lines: requests parsed from untrusted text, replies and delivered
//! units rendered as JSON. No IO here (see [`super::server`] and [`super::client`]).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::id::{DatabaseId, Physkey};
use crate::ledger::{Receipt, Submission};
use crate::unit::{FileScopes, TransferUnit, UnitKind, Urgency};

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// `{"op":"submit", ...}`: store one unit; answered by its receipt or an error.
    Submit(Submission),
    /// `{"op":"subscribe","from_start":false}`: stream delivered units on this connection.
    Subscribe {
        /// Replay every held unit of other origins from seq 1 (acknowledged ones included)
        /// instead of starting at the first unacknowledged one.
        from_start: bool,
    },
    /// `{"op":"ack","origin":..,"seq":..}`: the application applied every unit of `origin` up
    /// to `seq`.
    Ack {
        /// The origin.
        origin: DatabaseId,
        /// The highest seq applied.
        seq: u64,
    },
    /// `{"op":"status"}`: a fresh status snapshot.
    Status,
}

/// Why a request line was refused; the message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Not JSON at all.
    #[error(
        "request is not JSON ({source}); send one JSON object per line, e.g. {{\"op\":\"status\"}}"
    )]
    NotJson {
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// JSON, but not an object with a string `op`.
    #[error(
        "request has no \"op\"; send {{\"op\":\"submit\"|\"subscribe\"|\"ack\"|\"status\", ...}}"
    )]
    MissingOp,
    /// An `op` this node does not know.
    #[error("unknown op {op:?}; use submit, subscribe, ack or status")]
    UnknownOp {
        /// What was sent.
        op: String,
    },
    /// The fields of a known op do not fit.
    #[error("bad {op} request ({source}); expected {expected}")]
    Fields {
        /// The op.
        op: &'static str,
        /// An example of a good request.
        expected: &'static str,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// An unknown unit kind.
    #[error(transparent)]
    Kind(#[from] crate::unit::UnitKindError),
    /// A malformed physkey.
    #[error("bad physkey: {0}")]
    Physkey(crate::id::IdError),
    /// A malformed origin.
    #[error("bad origin: {0}")]
    Origin(crate::id::IdError),
    /// An unknown file scope.
    #[error("unknown scope {scope:?}: expected all, up, down or across")]
    Scope {
        /// What was sent.
        scope: String,
    },
    /// Both urgent and background.
    #[error("a unit is either urgent or background, not both")]
    UrgentAndBackground,
    /// No payload, or more than one form of it.
    #[error(
        "give the payload exactly once: \"body\" (any JSON), \"payload\" (text) or \"payload_hex\""
    )]
    Payload,
    /// `payload_hex` or `sensitive_hex` is not hex.
    #[error("payload_hex or sensitive_hex is not hex: {0}")]
    Hex(hex::FromHexError),
    /// Both forms of the sensitive part.
    #[error("give the sensitive part at most once: \"sensitive\" (text) or \"sensitive_hex\"")]
    Sensitive,
}

const SUBMIT_EXAMPLE: &str = r#"{"op":"submit","kind":"TUBT","urgent":false,"body":<any JSON>}"#;

/// The fields of a submit request and of a `meshnode submit --jsonl` line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitFields {
    /// `"submit"` in a request (read here so a submit request parses in one typed pass, with
    /// no intermediate `Value`); absent in a `--jsonl` line.
    #[serde(default)]
    op: Option<SubmitOp>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    urgent: bool,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    physkey: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_hex: Option<String>,
    #[serde(default)]
    sensitive: Option<String>,
    #[serde(default)]
    sensitive_hex: Option<String>,
}

/// The one op [`SubmitFields`] accepts.
#[derive(Debug, Deserialize)]
enum SubmitOp {
    #[serde(rename = "submit")]
    Submit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeFields {
    #[serde(default)]
    from_start: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFields {
    origin: String,
    seq: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

/// Parses one request line (without its newline).
pub fn parse_request(line: &str) -> Result<Request, RequestError> {
    // The hot path (an application streaming sales): a well-formed submit in one typed pass.
    // Anything else, including every malformed submit, takes the general path below, which
    // names the problem.
    if let Ok(f @ SubmitFields { op: Some(SubmitOp::Submit), .. }) = serde_json::from_str(line) {
        return Ok(Request::Submit(submission(f)?));
    }
    let value: Value =
        serde_json::from_str(line).map_err(|source| RequestError::NotJson { source })?;
    let Value::Object(mut map) = value else { return Err(RequestError::MissingOp) };
    let Some(Value::String(op)) = map.remove("op") else { return Err(RequestError::MissingOp) };
    let rest = Value::Object(map);
    let fields = |op: &'static str| {
        let expected = match op {
            "submit" => SUBMIT_EXAMPLE,
            "subscribe" => r#"{"op":"subscribe","from_start":false}"#,
            "ack" => r#"{"op":"ack","origin":"<dbid>","seq":<n>}"#,
            _ => r#"{"op":"status"}"#,
        };
        move |source| RequestError::Fields { op, expected, source }
    };
    match op.as_str() {
        "submit" => {
            let f: SubmitFields = serde_json::from_value(rest).map_err(fields("submit"))?;
            Ok(Request::Submit(submission(f)?))
        }
        "subscribe" => {
            let f: SubscribeFields = serde_json::from_value(rest).map_err(fields("subscribe"))?;
            Ok(Request::Subscribe { from_start: f.from_start })
        }
        "ack" => {
            let f: AckFields = serde_json::from_value(rest).map_err(fields("ack"))?;
            let origin = f.origin.parse().map_err(RequestError::Origin)?;
            Ok(Request::Ack { origin, seq: f.seq })
        }
        "status" => {
            let _: NoFields = serde_json::from_value(rest).map_err(fields("status"))?;
            Ok(Request::Status)
        }
        _ => Err(RequestError::UnknownOp { op }),
    }
}

/// Parses a `meshnode submit --jsonl` line: the fields of a submit request, without `op`.
pub fn parse_submit_line(line: &str) -> Result<Submission, RequestError> {
    let fields = |source| RequestError::Fields { op: "submit", expected: SUBMIT_EXAMPLE, source };
    let f: SubmitFields = serde_json::from_str(line).map_err(fields)?;
    if f.op.is_some() {
        return Err(fields(serde::de::Error::custom("unknown field `op` in a --jsonl line")));
    }
    submission(f)
}

fn submission(f: SubmitFields) -> Result<Submission, RequestError> {
    let kind: UnitKind = f.kind.as_deref().unwrap_or("TUBT").parse()?;
    if f.urgent && f.background {
        return Err(RequestError::UrgentAndBackground);
    }
    let physkey = match f.physkey {
        Some(k) => Some(k.parse::<Physkey>().map_err(RequestError::Physkey)?),
        None => None,
    };
    let mut scopes = FileScopes::NONE;
    for s in &f.scopes {
        scopes =
            scopes.union(parse_scope(s).ok_or_else(|| RequestError::Scope { scope: s.clone() })?);
    }
    let payload = match (f.body, f.payload, f.payload_hex) {
        (Some(body), None, None) => body.to_string().into_bytes(),
        (None, Some(text), None) => text.into_bytes(),
        (None, None, Some(h)) => hex::decode(h).map_err(RequestError::Hex)?,
        _ => return Err(RequestError::Payload),
    };
    let urgency = match (f.urgent, f.background) {
        (true, _) => Urgency::Urgent,
        (false, true) => Urgency::Background,
        _ => Urgency::Normal,
    };
    let sensitive = match (f.sensitive, f.sensitive_hex) {
        (None, None) => Vec::new(),
        (Some(text), None) => text.into_bytes(),
        (None, Some(h)) => hex::decode(h).map_err(RequestError::Hex)?,
        _ => return Err(RequestError::Sensitive),
    };
    Ok(Submission { kind, urgency, scopes, physkey, payload, sensitive })
}

/// A TUBT file scope by name (`all`, `up`, `down`, `across`, any case).
pub fn parse_scope(s: &str) -> Option<FileScopes> {
    match s.to_ascii_lowercase().as_str() {
        "all" => Some(FileScopes::ALL),
        "up" => Some(FileScopes::UP),
        "down" => Some(FileScopes::DOWN),
        "across" => Some(FileScopes::ACROSS),
        _ => None,
    }
}

/// The submit request line for `sub` (payload as text when it is UTF-8, else as hex).
pub fn submit_request(sub: &Submission) -> String {
    let mut v = json!({
        "op": "submit",
        "kind": sub.kind.as_str(),
        "urgent": sub.urgency == Urgency::Urgent,
        "background": sub.urgency == Urgency::Background,
        "scopes": sub.scopes.names(),
    });
    if let Some(k) = &sub.physkey {
        v["physkey"] = json!(k.as_str());
    }
    match std::str::from_utf8(&sub.payload) {
        Ok(text) => v["payload"] = json!(text),
        Err(_) => v["payload_hex"] = json!(hex::encode(&sub.payload)),
    }
    if !sub.sensitive.is_empty() {
        match std::str::from_utf8(&sub.sensitive) {
            Ok(text) => v["sensitive"] = json!(text),
            Err(_) => v["sensitive_hex"] = json!(hex::encode(&sub.sensitive)),
        }
    }
    v.to_string()
}

/// The reply to an accepted submit: the receipt, exactly as `meshnode submit` prints it.
pub fn receipt_line(receipt: &Receipt) -> String {
    // A Receipt always serializes (ids and integers only).
    serde_json::to_string(receipt).unwrap_or_default()
}

/// An error reply.
pub fn error_line(message: &str) -> String {
    json!({ "error": message }).to_string()
}

/// The `code` of the error reply to a subscribe while another subscriber is connected (it may
/// be one that just died and whose end the node has not seen yet: retry briefly).
pub const SUBSCRIBER_BUSY: &str = "subscriber_busy";

/// An error reply with a machine-readable `code`.
pub fn error_line_with_code(message: &str, code: &str) -> String {
    json!({ "error": message, "code": code }).to_string()
}

/// The first line of a subscription.
pub fn subscribed_line(from_start: bool) -> String {
    json!({ "subscribed": { "from_start": from_start } }).to_string()
}

/// The reply to an ack.
pub fn acked_line(origin: &DatabaseId, seq: u64) -> String {
    json!({ "acked": { "origin": origin.as_str(), "seq": seq } }).to_string()
}

/// A delivered unit: origin, seq, physkey, kind, urgency, created_ms, scopes, and the payload
/// as `payload` (text, when it is UTF-8) or `payload_hex`; a sensitive part likewise as
/// `sensitive` or `sensitive_hex` (absent when there is none).
pub fn unit_line(unit: &TransferUnit) -> String {
    #[derive(Serialize)]
    struct UnitLine<'a> {
        origin: &'a str,
        seq: u64,
        physkey: &'a str,
        kind: &'static str,
        urgency: &'static str,
        created_ms: u64,
        scopes: Vec<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_hex: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sensitive: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sensitive_hex: Option<String>,
    }
    let text = std::str::from_utf8(&unit.payload).ok();
    let secret = (!unit.sensitive.is_empty()).then(|| std::str::from_utf8(&unit.sensitive).ok());
    let line = UnitLine {
        origin: unit.origin.as_str(),
        seq: unit.seq,
        physkey: unit.physkey.as_str(),
        kind: unit.kind.as_str(),
        urgency: unit.urgency.as_str(),
        created_ms: unit.created_ms,
        scopes: unit.scopes.names(),
        payload: text,
        payload_hex: text.is_none().then(|| hex::encode(&unit.payload)),
        sensitive: secret.flatten(),
        sensitive_hex: (secret == Some(None)).then(|| hex::encode(&unit.sensitive)),
    };
    // Strings and integers only: serializing cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_named() {
        assert_eq!(parse_request(r#"{"op":"status"}"#).unwrap(), Request::Status);
        assert_eq!(
            parse_request(r#"{"op":"subscribe","from_start":true}"#).unwrap(),
            Request::Subscribe { from_start: true }
        );
        assert_eq!(
            parse_request(r#"{"op":"subscribe"}"#).unwrap(),
            Request::Subscribe { from_start: false }
        );
        let Request::Submit(sub) =
            parse_request(r#"{"op":"submit","urgent":true,"body":{"sale":1}}"#).unwrap()
        else {
            panic!("not a submit")
        };
        assert_eq!(sub.payload, br#"{"sale":1}"#);
        assert_eq!(sub.urgency, Urgency::Urgent);
        assert_eq!(sub.kind, UnitKind::Tubt);
        let e = parse_request("garbage").unwrap_err();
        assert!(matches!(e, RequestError::NotJson { .. }), "{e}");
        assert!(matches!(parse_request("[1]"), Err(RequestError::MissingOp)));
        assert!(matches!(parse_request(r#"{"op":"x"}"#), Err(RequestError::UnknownOp { .. })));
        assert!(matches!(
            parse_request(r#"{"op":"status","extra":1}"#),
            Err(RequestError::Fields { op: "status", .. })
        ));
        assert!(matches!(
            parse_request(r#"{"op":"ack","origin":"nope","seq":1}"#),
            Err(RequestError::Origin(_))
        ));
        assert!(matches!(
            parse_request(r#"{"op":"submit","body":1,"payload":"x"}"#),
            Err(RequestError::Payload)
        ));
        assert!(matches!(
            parse_request(r#"{"op":"submit","kind":"TUXX","body":1}"#),
            Err(RequestError::Kind(_))
        ));
    }

    #[test]
    fn submit_requests_round_trip_text_and_binary_payloads() {
        let secrets = [Vec::new(), b"hunter2".to_vec(), vec![0xfe, 0x01]];
        for (payload, sensitive) in [b"door opened".to_vec(), vec![0xff, 0x00, 0x80]]
            .into_iter()
            .zip(secrets.into_iter().cycle())
        {
            let sub = Submission {
                kind: UnitKind::Tuev,
                urgency: Urgency::Background,
                scopes: FileScopes::UP.union(FileScopes::DOWN),
                physkey: Some("CUSTOMER-00000000000000000000042".parse().unwrap()),
                payload,
                sensitive,
            };
            assert_eq!(parse_request(&submit_request(&sub)).unwrap(), Request::Submit(sub));
        }
    }

    #[test]
    fn a_sensitive_part_is_parsed_and_shown_apart_from_the_payload() {
        let Request::Submit(sub) =
            parse_request(r#"{"op":"submit","payload":"pw change","sensitive":"hunter2"}"#)
                .unwrap()
        else {
            panic!("a submit")
        };
        assert_eq!(sub.sensitive, b"hunter2");
        assert!(matches!(
            parse_request(r#"{"op":"submit","payload":"x","sensitive":"a","sensitive_hex":"00"}"#),
            Err(RequestError::Sensitive)
        ));
        let mut unit = crate::unit::tests::sample_unit(3, b"pw change");
        assert!(!unit_line(&unit).contains("sensitive"));
        unit.sensitive = b"hunter2".to_vec();
        assert!(unit_line(&unit).contains(r#""sensitive":"hunter2""#), "{}", unit_line(&unit));
        unit.sensitive = vec![0xff];
        assert!(unit_line(&unit).contains(r#""sensitive_hex":"ff""#), "{}", unit_line(&unit));
    }
}
