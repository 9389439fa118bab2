//! The human-readable report: the discovery trace, then one line per check with its hint.

use std::fmt::Write as _;

use super::{Report, Status, Verdict};
use crate::discovery::StepKind;

/// The whole report as text, ending with a newline.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "matrix-edge check {}", report.server_name);
    let _ = writeln!(out);
    if !report.discovery.steps.is_empty() {
        let _ = writeln!(out, "discovery");
        for (i, step) in report.discovery.steps.iter().enumerate() {
            let kind = match step.kind {
                StepKind::ServerName => "server name",
                StepKind::WellKnown => "well-known",
                StepKind::Srv => "SRV",
                StepKind::Address => "address",
            };
            let _ = writeln!(out, "  {}. {kind}", i + 1);
            let _ = writeln!(out, "     asked   {}", step.asked);
            let _ = writeln!(out, "     answer  {}", step.answer);
            for (j, choice) in step.chose.split("; ").enumerate() {
                let label = if j == 0 { "chose" } else { "" };
                let _ = writeln!(out, "     {label:<7} {choice}");
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "checks");
    let width = report
        .checks
        .iter()
        .map(|c| c.id.as_str().len())
        .max()
        .unwrap_or(0);
    for check in &report.checks {
        let subject = check
            .subject
            .as_deref()
            .map(|s| format!("{s}: "))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<8} {:<width$}  {subject}{}",
            check.status.as_str(),
            check.id.as_str(),
            check.message
        );
        if let Some(hint) = &check.hint
            && check.status != Status::Ok
        {
            let _ = writeln!(out, "  {:<8} {:<width$}  hint: {hint}", "", "");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "result: {}", summary(report));
    out
}

/// One line: the verdict and the counts.
pub fn summary(report: &Report) -> String {
    let counts = format!(
        "{} failure(s), {} warning(s), {} ok",
        report.counts.failure, report.counts.warning, report.counts.ok
    );
    match report.verdict {
        Verdict::Ok => format!("federation works ({counts})"),
        Verdict::Warnings => format!("federation works, with warnings ({counts})"),
        Verdict::Failed if report.federation_ok => {
            format!("federation works, but client discovery fails ({counts})")
        }
        Verdict::Failed => format!("federation does NOT work ({counts})"),
    }
}
