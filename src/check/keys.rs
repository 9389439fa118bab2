//! Server signing keys (`GET /_matrix/key/v2/server`): canonical JSON and the ed25519
//! self-signature, checked the way a remote homeserver checks them before trusting anything
//! the server signs.

use std::fmt::Write as _;

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Serialize;
use serde_json::Value;

/// Matrix "unpadded base64", decoded leniently: the spec asks decoders to accept padding too,
/// and Python's and Go's decoders (Synapse, Dendrite) ignore non-zero trailing bits; even the
/// spec's own test-vector seed has them.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Why a value has no canonical form.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("{0} is not an integer; canonical JSON allows integers only")]
    NotInteger(String),
}

/// Canonical JSON (spec appendix): object keys sorted by code point, no insignificant
/// whitespace, strings in UTF-8 with only the escapes JSON requires, integers only.
///
/// Written out by hand rather than relying on `serde_json::Value`'s map order, which a
/// dependency enabling `preserve_order` anywhere in the build would silently change.
pub fn canonical_json(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                match n.as_f64() {
                    // `1e3` and `-0` are integers written oddly; their canonical form is plain.
                    Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => {
                        let _ = write!(out, "{}", f as i64);
                    }
                    _ => return Err(CanonicalError::NotInteger(n.to_string())),
                }
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Rust orders strings by bytes, which for UTF-8 is code point order.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out)?;
                }
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The bytes a signature covers: the object without `signatures` and `unsigned`.
pub fn signed_bytes(object: &Value) -> Result<String, CanonicalError> {
    let mut stripped = object.clone();
    if let Some(map) = stripped.as_object_mut() {
        map.remove("signatures");
        map.remove("unsigned");
    }
    canonical_json(&stripped)
}

pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

pub fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// The result of checking one key's self-signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    Valid,
    /// No `signatures.<server_name>.<key id>` entry.
    Missing,
    /// Present, well-formed, and wrong for this key and content.
    Invalid,
    /// Not unpadded base64 of 64 bytes.
    Malformed,
    /// The key itself is not 32 bytes of base64.
    BadKey,
    /// The object has no canonical form (a float somewhere).
    NotCanonical,
}

/// One `verify_keys` entry.
#[derive(Clone, Debug, Serialize)]
pub struct KeyCheck {
    pub id: String,
    pub key: String,
    pub signature: Signature,
}

/// What `/_matrix/key/v2/server` said, checked.
#[derive(Clone, Debug, Serialize)]
pub struct ServerKeys {
    pub server_name: Option<String>,
    pub valid_until_ts: Option<u64>,
    /// The ed25519 keys, in id order.
    pub ed25519: Vec<KeyCheck>,
    /// Ids of keys of other algorithms, which homeservers ignore.
    pub other_keys: Vec<String>,
}

impl ServerKeys {
    pub fn all_signatures_valid(&self) -> bool {
        !self.ed25519.is_empty() && self.ed25519.iter().all(|k| k.signature == Signature::Valid)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is JSON but not an object")]
    NotObject,
}

/// Parses the key response and checks every ed25519 key's signature under the server name the
/// response itself claims (whether that is the right name is the caller's check).
pub fn check_server_keys(body: &[u8]) -> Result<ServerKeys, KeysError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| KeysError::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or(KeysError::NotObject)?;
    let server_name = object
        .get("server_name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let valid_until_ts = object.get("valid_until_ts").and_then(Value::as_u64);
    let signed = signed_bytes(&value);
    let mut ed25519 = Vec::new();
    let mut other_keys = Vec::new();
    if let Some(keys) = object.get("verify_keys").and_then(Value::as_object) {
        let mut ids: Vec<&String> = keys.keys().collect();
        ids.sort();
        for id in ids {
            if !id.starts_with("ed25519:") {
                other_keys.push(id.clone());
                continue;
            }
            let key = keys
                .get(id)
                .and_then(|k| k.get("key"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let signature = match &signed {
                Err(_) => Signature::NotCanonical,
                Ok(bytes) => {
                    let sig = server_name.as_deref().and_then(|name| {
                        object
                            .get("signatures")
                            .and_then(|s| s.get(name))
                            .and_then(|s| s.get(id.as_str()))
                            .and_then(Value::as_str)
                    });
                    verify(bytes.as_bytes(), &key, sig)
                }
            };
            ed25519.push(KeyCheck {
                id: id.clone(),
                key,
                signature,
            });
        }
    }
    Ok(ServerKeys {
        server_name,
        valid_until_ts,
        ed25519,
        other_keys,
    })
}

/// Verifies an ed25519 signature (base64) by a public key (base64) over `message`.
pub fn verify(message: &[u8], key: &str, signature: Option<&str>) -> Signature {
    let Some(key) = decode_base64(key).filter(|k| k.len() == 32) else {
        return Signature::BadKey;
    };
    let Some(signature) = signature else {
        return Signature::Missing;
    };
    let Some(signature) = decode_base64(signature).filter(|s| s.len() == 64) else {
        return Signature::Malformed;
    };
    match UnparsedPublicKey::new(&ED25519, key).verify(message, &signature) {
        Ok(()) => Signature::Valid,
        Err(_) => Signature::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use serde_json::json;

    /// The spec's signing test vectors (appendices, "Cryptographic test vectors").
    const SEED: &str = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1";

    fn spec_key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&decode_base64(SEED).unwrap()).unwrap()
    }

    #[test]
    fn canonical_json_matches_the_spec_examples() {
        let cases = [
            (json!({}), "{}"),
            (json!({"one": 1, "two": "Two"}), r#"{"one":1,"two":"Two"}"#),
            (json!({"b": "2", "a": "1"}), r#"{"a":"1","b":"2"}"#),
            (json!({"a": "日本語"}), r#"{"a":"日本語"}"#),
            (json!({"本": 2, "日": 1}), r#"{"日":1,"本":2}"#),
            (json!({"a": "\u{65E5}"}), r#"{"a":"日"}"#),
            (json!({"a": null}), r#"{"a":null}"#),
            (
                json!({"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}),
                r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
            ),
            (json!({"a": "\n\u{1}\"\\"}), r#"{"a":"\n\u0001\"\\"}"#),
        ];
        for (value, expected) in cases {
            assert_eq!(canonical_json(&value).unwrap(), expected);
        }
        let parsed: Value = serde_json::from_str(r#"{"a": -0, "b": 1e10}"#).unwrap();
        assert_eq!(
            canonical_json(&parsed).unwrap(),
            r#"{"a":0,"b":10000000000}"#
        );
        let float: Value = serde_json::from_str(r#"{"a": 1.5}"#).unwrap();
        assert!(canonical_json(&float).is_err());
    }

    #[test]
    fn spec_signing_vectors_verify() {
        let key = spec_key();
        let public = encode_base64(key.public_key().as_ref());
        for (object, sig) in [
            (
                json!({}),
                "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ",
            ),
            (
                json!({"one": 1, "two": "Two", "unsigned": {"age": 3}}),
                "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw",
            ),
        ] {
            let bytes = signed_bytes(&object).unwrap();
            assert_eq!(
                verify(bytes.as_bytes(), &public, Some(sig)),
                Signature::Valid
            );
            assert_eq!(
                encode_base64(key.sign(bytes.as_bytes()).as_ref()),
                sig,
                "our canonical form is the spec's"
            );
        }
    }

    fn signed_keys(name: &str, mutate: impl FnOnce(&mut Value)) -> Vec<u8> {
        let key = spec_key();
        let mut object = json!({
            "server_name": name,
            "valid_until_ts": 4_000_000_000_000u64,
            "verify_keys": {"ed25519:a_1": {"key": encode_base64(key.public_key().as_ref())}},
            "old_verify_keys": {},
        });
        let sig = key.sign(signed_bytes(&object).unwrap().as_bytes());
        object["signatures"] = json!({name: {"ed25519:a_1": encode_base64(sig.as_ref())}});
        mutate(&mut object);
        serde_json::to_vec(&object).unwrap()
    }

    #[test]
    fn server_keys_checked() {
        let keys = check_server_keys(&signed_keys("example.org", |_| {})).unwrap();
        assert_eq!(keys.server_name.as_deref(), Some("example.org"));
        assert!(keys.all_signatures_valid());

        let tampered = check_server_keys(&signed_keys("example.org", |o| {
            o["valid_until_ts"] = json!(4_000_000_000_001u64)
        }))
        .unwrap();
        assert_eq!(tampered.ed25519[0].signature, Signature::Invalid);

        // Extra `unsigned` content does not break the signature.
        let unsigned = check_server_keys(&signed_keys("example.org", |o| {
            o["unsigned"] = json!({"x": 1})
        }))
        .unwrap();
        assert!(unsigned.all_signatures_valid());

        let unsigned_name = check_server_keys(&signed_keys("example.org", |o| {
            o["signatures"] = json!({"other.org": o["signatures"]["example.org"].clone()})
        }))
        .unwrap();
        assert_eq!(unsigned_name.ed25519[0].signature, Signature::Missing);

        let bad_key = check_server_keys(&signed_keys("example.org", |o| {
            o["verify_keys"]["ed25519:a_1"]["key"] = json!("AAAA")
        }))
        .unwrap();
        assert_eq!(bad_key.ed25519[0].signature, Signature::BadKey);

        assert!(matches!(
            check_server_keys(b"<html>"),
            Err(KeysError::NotJson(_))
        ));
    }
}
