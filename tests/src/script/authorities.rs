//! Local and upstream authorities, and the logger.

use super::*;

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
pub(super) fn local_authorities(d: &mut Differential) -> anyhow::Result<()> {
    for (kind, label) in [("x509", "X.509"), ("jwt", "JWT")] {
        let active = format!("{kind}_active");
        let prepared = format!("{kind}_prepared");
        let la = |verb: &str| format!("localauthority {kind} {verb}");
        d.run(
            Row::new(&la("show"), &["localauthority", kind, "show"])
                .capture(&active, &format!(r"Active {label} authority:\s+Authority ID: (\S+)")),
        )?;
        row(
            d,
            &format!("{} (json)", la("show")),
            &["localauthority", kind, "show", "-output", "json"],
        )?;
        let active_arg = format!("{{{active}}}");
        let prepared_arg = format!("{{{prepared}}}");
        row(
            d,
            &format!("{}: nothing prepared", la("activate")),
            &["localauthority", kind, "activate", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: active authority", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: active authority", la("revoke")),
            &["localauthority", kind, "revoke", "-authorityID", &active_arg],
        )?;
        d.run(
            Row::new(&la("prepare"), &["localauthority", kind, "prepare"])
                .capture(&prepared, r"Authority ID: (\S+)"),
        )?;
        row(d, &format!("{}: after prepare", la("show")), &["localauthority", kind, "show"])?;
        row(
            d,
            &format!("{}: unknown id", la("activate")),
            &["localauthority", kind, "activate", "-authorityID", "0123456789abcdef"],
        )?;
        row(d, &format!("{}: no id", la("activate")), &["localauthority", kind, "activate"])?;
        row(
            d,
            &format!("{}: active instead of prepared", la("activate")),
            &["localauthority", kind, "activate", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: prepared authority", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", &prepared_arg],
        )?;
        twice(
            d,
            &la("activate"),
            &["localauthority", kind, "activate", "-authorityID", &prepared_arg],
        )?;
        row(d, &format!("{}: after activate", la("show")), &["localauthority", kind, "show"])?;
        row(
            d,
            &format!("{}: old authority not tainted", la("revoke")),
            &["localauthority", kind, "revoke", "-authorityID", &active_arg],
        )?;
        row(
            d,
            &format!("{}: unknown id", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", "0123456789abcdef"],
        )?;
        row(d, &format!("{}: no id", la("taint")), &["localauthority", kind, "taint"])?;
        twice(d, &la("taint"), &["localauthority", kind, "taint", "-authorityID", &active_arg])?;
        row(
            d,
            &format!("{}: again", la("taint")),
            &["localauthority", kind, "taint", "-authorityID", &active_arg],
        )?;
        row(d, &format!("{}: after taint", la("show")), &["localauthority", kind, "show"])?;
        both(d, &format!("bundle show: after {kind} taint"), &["bundle", "show"])?;
        row(
            d,
            &format!("bundle show -format spiffe: after {kind} taint"),
            &["bundle", "show", "-format", "spiffe"],
        )?;
        row(
            d,
            &format!("{}: unknown id", la("revoke")),
            &["localauthority", kind, "revoke", "-authorityID", "0123456789abcdef"],
        )?;
        row(d, &format!("{}: no id", la("revoke")), &["localauthority", kind, "revoke"])?;
        twice(d, &la("revoke"), &["localauthority", kind, "revoke", "-authorityID", &active_arg])?;
        row(d, &format!("{}: after revoke", la("show")), &["localauthority", kind, "show"])?;
        row(
            d,
            &format!("bundle show -format spiffe: after {kind} revoke"),
            &["bundle", "show", "-format", "spiffe"],
        )?;
    }
    row(
        d,
        "upstreamauthority taint",
        &["upstreamauthority", "taint", "-subjectKeyID", "0123456789abcdef"],
    )?;
    row(d, "upstreamauthority taint: no id", &["upstreamauthority", "taint"])?;
    row(
        d,
        "upstreamauthority revoke",
        &["upstreamauthority", "revoke", "-subjectKeyID", "0123456789abcdef"],
    )?;
    row(d, "upstreamauthority revoke: no id", &["upstreamauthority", "revoke"])?;
    Ok(())
}

// The script reads best with each command's words wrapped together, as typed.
#[rustfmt::skip]
pub(super) fn logger(d: &mut Differential) -> anyhow::Result<()> {
    both(d, "logger get", &["logger", "get"])?;
    twice(d, "logger set", &["logger", "set", "-level", "warn"])?;
    row(d, "logger get: after set", &["logger", "get"])?;
    row(d, "logger set: unknown level", &["logger", "set", "-level", "loud"])?;
    row(d, "logger set: no level", &["logger", "set"])?;
    row(d, "logger set: upper case", &["logger", "set", "-level", "ERROR"])?;
    twice(d, "logger reset", &["logger", "reset"])?;
    row(d, "logger get: after reset", &["logger", "get"])?;
    Ok(())
}
