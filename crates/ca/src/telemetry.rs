//! Counters of what this CA signs, under SPIRE's metric keys (`server_ca.sign.*`). They go to
//! the `metrics` recorder the binary installs; without one they cost nothing.

/// An X509-SVID was signed (workload, agent or server SVID).
pub(crate) fn x509_svid_signed() {
    metrics::counter!("server_ca.sign.x509_svid").increment(1);
}

/// A JWT-SVID was signed.
pub(crate) fn jwt_svid_signed() {
    metrics::counter!("server_ca.sign.jwt_svid").increment(1);
}
