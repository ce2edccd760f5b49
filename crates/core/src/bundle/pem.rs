//! X.509 authorities as PEM (`-----BEGIN CERTIFICATE-----` blocks, RFC 7468).
//!
//! This is the `spire-server bundle show` default format and the agent's `trust_bundle_path`
//! format. The reader is strict: only `CERTIFICATE` blocks, only blank lines between them,
//! standard base64 bodies, and each body one complete DER certificate. Lines may end in
//! `\n` or `\r\n`.

use super::{Bundle, X509Authority, parse_certificate};
use crate::spiffe_id::TrustDomain;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

const CERTIFICATE_LABEL: &str = "CERTIFICATE";
const LINE_WIDTH: usize = 64;

/// Why text is not a sequence of PEM certificates.
///
/// `line` numbers start at 1; `block` is the 0-based position of the PEM block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The text holds no PEM block at all.
    #[error("no certificates found")]
    NoCertificates,
    /// A non-blank line stands outside any block (including a stray END line).
    #[error("unexpected text outside a pem block at line {line}")]
    UnexpectedText {
        /// The offending line.
        line: usize,
    },
    /// A block is labelled other than `CERTIFICATE`.
    #[error("pem block {block} has type {label:?}, expected CERTIFICATE")]
    UnexpectedBlockType {
        /// The block.
        block: usize,
        /// Its label.
        label: String,
    },
    /// A block has no END line before the text ends or the next BEGIN line.
    #[error("pem block {block} has no end line")]
    UnterminatedBlock {
        /// The block.
        block: usize,
    },
    /// A block's END line names a different label.
    #[error("pem block {block} ends with a different label")]
    MismatchedEnd {
        /// The block.
        block: usize,
    },
    /// A block's body is not standard base64.
    #[error("pem block {block} body is not base64")]
    InvalidBase64 {
        /// The block.
        block: usize,
    },
    /// A block's body is not one DER certificate.
    #[error("pem block {block} is not a der certificate")]
    InvalidCertificate {
        /// The block.
        block: usize,
    },
}

/// Writes DER certificates as consecutive `CERTIFICATE` blocks, 64 base64 characters a line.
pub fn encode_certificates<C: AsRef<[u8]>>(ders: &[C]) -> String {
    let mut out = String::new();
    for der in ders {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(der.as_ref());
        // Base64 output is ASCII, so every chunk boundary is a char boundary.
        for chunk in b64.as_bytes().chunks(LINE_WIDTH) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Reads every certificate from PEM text, in order.
///
/// # Errors
/// [`PemError`] naming the first problem found; text with no block is
/// [`PemError::NoCertificates`].
pub fn decode_certificates(pem: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let mut certs = Vec::new();
    // The open block: its index, label and body so far.
    let mut open: Option<(String, String)> = None;
    for (line_index, raw_line) in pem.split('\n').enumerate() {
        let line = raw_line.trim_end_matches('\r').trim();
        let block = certs.len();
        match &mut open {
            None => {
                if line.is_empty() {
                    continue;
                }
                let label = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|l| l.strip_suffix("-----"))
                    .ok_or(PemError::UnexpectedText { line: line_index + 1 })?;
                if label != CERTIFICATE_LABEL {
                    return Err(PemError::UnexpectedBlockType { block, label: label.to_owned() });
                }
                open = Some((label.to_owned(), String::new()));
            }
            Some((label, body)) => {
                if let Some(end) = line.strip_prefix("-----END ") {
                    if end.strip_suffix("-----") != Some(label.as_str()) {
                        return Err(PemError::MismatchedEnd { block });
                    }
                    certs.push(decode_body(block, body)?);
                    open = None;
                } else if line.starts_with("-----BEGIN ") {
                    return Err(PemError::UnterminatedBlock { block });
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if open.is_some() {
        return Err(PemError::UnterminatedBlock { block: certs.len() });
    }
    if certs.is_empty() {
        return Err(PemError::NoCertificates);
    }
    Ok(certs)
}

fn decode_body(block: usize, body: &str) -> Result<Vec<u8>, PemError> {
    let der = STANDARD.decode(body).map_err(|_| PemError::InvalidBase64 { block })?;
    match parse_certificate(&der) {
        Some(_) => Ok(der),
        None => Err(PemError::InvalidCertificate { block }),
    }
}

impl Bundle {
    /// A bundle for `trust_domain` whose X.509 authorities are the PEM certificates, in order.
    ///
    /// # Errors
    /// [`PemError`] as [`decode_certificates`].
    pub fn from_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, PemError> {
        let mut bundle = Bundle::new(trust_domain);
        bundle.x509_authorities =
            decode_certificates(pem)?.into_iter().map(X509Authority::new).collect();
        Ok(bundle)
    }

    /// The X.509 authorities as PEM (empty text when there are none).
    pub fn x509_authorities_to_pem(&self) -> String {
        encode_certificates(&self.x509_authorities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ca_pool;
    use PemError as E;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn pem_round_trips_in_order_with_64_column_lines() {
        let pem = encode_certificates(ca_pool());
        assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----\n").count(), 3);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(decode_certificates(&pem).unwrap(), ca_pool());
        let bundle = Bundle::from_pem(td(), &pem).unwrap();
        assert_eq!(bundle.x509_authorities_to_pem(), pem);
        assert!(bundle.jwt_authorities.is_empty());
    }

    #[test]
    fn accepts_crlf_blank_lines_and_indentation() {
        let pem = encode_certificates(&ca_pool()[..2]).replace('\n', "\r\n");
        let pem = format!(
            "\r\n\r\n{}\n  \n",
            pem.replace("-----\r\n-----BEGIN", "-----\r\n\r\n  -----BEGIN")
        );
        assert_eq!(decode_certificates(&pem).unwrap(), &ca_pool()[..2]);
    }

    #[test]
    fn rejection_table() {
        let one = encode_certificates(&ca_pool()[..1]);
        let body = one.lines().nth(1).unwrap().to_owned();
        let mut trailing = ca_pool()[0].clone();
        trailing.push(0);
        let cases: Vec<(String, PemError)> = vec![
            ("".into(), E::NoCertificates),
            ("\n \r\n".into(), E::NoCertificates),
            ("hello".into(), E::UnexpectedText { line: 1 }),
            (format!("{one}garbage\n"), E::UnexpectedText { line: one.lines().count() + 1 }),
            (format!("subject=CN=x\n{one}"), E::UnexpectedText { line: 1 }),
            ("-----END CERTIFICATE-----\n".into(), E::UnexpectedText { line: 1 }),
            ("-----BEGIN CERTIFICATE\n".into(), E::UnexpectedText { line: 1 }),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                E::UnexpectedBlockType { block: 0, label: "PRIVATE KEY".into() },
            ),
            (
                format!("{one}-----BEGIN X509 CRL-----\n"),
                E::UnexpectedBlockType { block: 1, label: "X509 CRL".into() },
            ),
            (format!("-----BEGIN CERTIFICATE-----\n{body}\n"), E::UnterminatedBlock { block: 0 }),
            (
                format!("-----BEGIN CERTIFICATE-----\n{body}\n{one}"),
                E::UnterminatedBlock { block: 0 },
            ),
            (
                format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END X509 CRL-----\n"),
                E::MismatchedEnd { block: 0 },
            ),
            (
                "-----BEGIN CERTIFICATE-----\nA*AA\n-----END CERTIFICATE-----\n".into(),
                E::InvalidBase64 { block: 0 },
            ),
            (
                "-----BEGIN CERTIFICATE-----\nProc-Type: 4,ENCRYPTED\n-----END CERTIFICATE-----\n"
                    .into(),
                E::InvalidBase64 { block: 0 },
            ),
            (
                "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
                E::InvalidCertificate { block: 0 },
            ),
            (
                format!("{one}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
                E::InvalidCertificate { block: 1 },
            ),
            (encode_certificates(&[trailing]), E::InvalidCertificate { block: 0 }),
        ];
        for (input, want) in cases {
            assert_eq!(decode_certificates(&input).unwrap_err(), want, "input {input:?}");
        }
        assert_eq!(Bundle::from_pem(td(), "x").unwrap_err(), E::UnexpectedText { line: 1 });
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn pem_round_trips(picks in proptest::collection::vec(0..3usize, 1..6)) {
                let ders: Vec<Vec<u8>> = picks.iter().map(|&i| ca_pool()[i].clone()).collect();
                let bundle = Bundle::from_pem(td(), &encode_certificates(&ders)).unwrap();
                let back: Vec<Vec<u8>> = bundle.x509_authorities.iter().map(|a| a.der.clone()).collect();
                prop_assert_eq!(back, ders);
            }

            #[test]
            fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode_certificates(&String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn decode_never_panics_on_pem_like_text(
                s in "(-----(BEGIN|END) (CERTIFICATE|KEY)-----\r?\n|[A-Za-z0-9+/=]{0,70}\r?\n| *\n){0,8}"
            ) {
                let _ = decode_certificates(&s);
            }
        }
    }
}
