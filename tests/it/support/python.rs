//! The Python side of the tests: a virtualenv that `scripts/test` creates in `.test-deps/venv`
//! with the reference parsers and validators the tests run against our output.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-deps/venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test, which creates it",
        venv.display()
    );
    venv
}

/// Parses `text` with the Prometheus project's OpenMetrics parser; panics with its complaint.
pub fn check_openmetrics(text: &str) {
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families\nfamilies = list(text_string_to_metric_families(sys.stdin.read()))\nassert families, 'no metric families'\nprint(len(families))\n";
    let mut child = Command::new(python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
}
