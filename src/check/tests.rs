use super::client::validate_support;
use super::*;

fn report(statuses: &[(CheckId, Status)]) -> Report {
    let checks = statuses
        .iter()
        .map(|(id, status)| Check {
            id: *id,
            status: *status,
            subject: None,
            message: "m".into(),
            hint: (*status != Status::Ok).then(|| "h".into()),
        })
        .collect();
    Report::assemble(
        &ServerName::parse("example.com").unwrap(),
        DiscoveryReport::default(),
        Vec::new(),
        client::ClientReport::default(),
        checks,
    )
}

#[test]
fn exit_code_follows_failures_only() {
    let r = report(&[(CheckId::Connect, Status::Ok)]);
    assert_eq!((r.verdict, r.exit_code()), (Verdict::Ok, 0));
    let r = report(&[
        (CheckId::Connect, Status::Ok),
        (CheckId::Srv, Status::Warning),
    ]);
    assert_eq!((r.verdict, r.exit_code()), (Verdict::Warnings, 0));
    let r = report(&[(CheckId::CertificateName, Status::Failure)]);
    assert_eq!((r.verdict, r.exit_code()), (Verdict::Failed, 1));
    assert!(!r.federation_ok && r.client_ok);
    let r = report(&[(CheckId::ClientCors, Status::Failure)]);
    assert_eq!(r.exit_code(), 1);
    assert!(r.federation_ok && !r.client_ok);
    assert!(render::summary(&r).contains("client discovery fails"));
}

#[test]
fn json_schema_names_are_stable() {
    let r = report(&[(CheckId::PathIntegrity, Status::Failure)]);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["verdict"], "failed");
    assert_eq!(v["checks"][0]["id"], "path_integrity");
    assert_eq!(v["checks"][0]["status"], "failure");
    assert_eq!(v["counts"]["failure"], 1);
    for id in [
        CheckId::WellKnownServer,
        CheckId::KeysSignature,
        CheckId::ClientBaseUrl,
    ] {
        assert_eq!(serde_json::to_value(id).unwrap(), id.as_str());
    }
}

#[test]
fn text_has_one_line_per_check_and_hints() {
    let r = report(&[
        (CheckId::Connect, Status::Ok),
        (CheckId::CertificateExpiry, Status::Failure),
    ]);
    let text = render::text(&r);
    assert!(text.contains("  ok       connect"), "{text}");
    assert!(text.contains("  failure  certificate_expiry"), "{text}");
    assert!(text.contains("hint: h"), "{text}");
    assert!(text.ends_with("ok)\n"), "{text}");
}

#[test]
fn support_file_rules() {
    assert!(validate_support(br#"{"support_page": "https://example.com/help"}"#).is_ok());
    assert!(
        validate_support(
            br#"{"contacts": [{"role": "m.role.admin", "matrix_id": "@a:example.com"}]}"#
        )
        .is_ok()
    );
    for bad in [
        &br#"{}"#[..],
        br#"{"contacts": []}"#,
        br#"{"contacts": [{"matrix_id": "@a:example.com"}]}"#,
        br#"{"contacts": [{"role": "m.role.admin"}]}"#,
        br#"{"contacts": [{"role": "m.role.admin", "matrix_id": "a:example.com"}]}"#,
        br#"not json"#,
    ] {
        assert!(
            validate_support(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
