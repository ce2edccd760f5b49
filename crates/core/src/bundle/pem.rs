//! X.509 authorities as PEM (`-----BEGIN CERTIFICATE-----` blocks, RFC 7468), through the
//! `pem` crate.
//!
//! This is the `spire-server bundle show` default format and the agent's `trust_bundle_path`
//! format. Reading follows Go's `pem.Decode` as SPIRE uses it: text before, between and after
//! blocks is skipped (so a CA bundle with `# Issuer:` comment lines, as Mozilla's is, reads
//! fine), every block must be a `CERTIFICATE` and each body one complete DER certificate.
//! Lines may end in `\n` or `\r\n`. Writing uses `\n` and 64 base64 characters a line.

use super::{Bundle, X509Authority, parse_certificate};
use crate::spiffe_id::TrustDomain;

const CERTIFICATE_LABEL: &str = "CERTIFICATE";

/// Why text is not a sequence of PEM certificates.
///
/// `block` is the 0-based position of the PEM block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// The text holds no PEM block at all.
    #[error("no certificates found")]
    NoCertificates,
    /// A block is not well formed: an END line naming another label, a body that is not
    /// base64, or a BEGIN line inside a block.
    #[error("malformed pem block: {reason}")]
    Malformed {
        /// What the PEM reader found wrong.
        reason: String,
    },
    /// A block is labelled other than `CERTIFICATE`.
    #[error("pem block {block} has type {label:?}, expected CERTIFICATE")]
    UnexpectedBlockType {
        /// The block.
        block: usize,
        /// Its label.
        label: String,
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
    // Blocks follow each other directly, as Go's pem.Encode writes them (the crate's
    // encode_many would put a blank line between them).
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    ders.iter()
        .map(|der| {
            pem::encode_config(&pem::Pem::new(CERTIFICATE_LABEL, der.as_ref().to_vec()), config)
        })
        .collect()
}

/// Reads every certificate from PEM text, in order.
///
/// # Errors
/// [`PemError`] naming the first problem found; text with no block is
/// [`PemError::NoCertificates`].
pub fn decode_certificates(text: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks =
        pem::parse_many(text).map_err(|e| PemError::Malformed { reason: e.to_string() })?;
    if blocks.is_empty() {
        return Err(PemError::NoCertificates);
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(block, b)| {
            if b.tag() != CERTIFICATE_LABEL {
                return Err(PemError::UnexpectedBlockType { block, label: b.tag().to_owned() });
            }
            let der = b.into_contents();
            match parse_certificate(&der) {
                Some(_) => Ok(der),
                None => Err(PemError::InvalidCertificate { block }),
            }
        })
        .collect()
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
    fn skips_text_between_blocks_like_go() {
        // A Mozilla-style CA bundle: comment lines before each certificate.
        let mut text = String::from("##\n## Bundle of CA Root Certificates\n##\n\n");
        for (i, der) in ca_pool().iter().enumerate() {
            text.push_str(&format!("# Issuer: CN=pool ca {i}\n# Label: \"pool ca {i}\"\n"));
            text.push_str(&encode_certificates(&[der]));
            text.push('\n');
        }
        text.push_str("trailing words\n");
        assert_eq!(decode_certificates(&text).unwrap(), ca_pool());
        // `openssl x509 -text` style output before the block reads too.
        let with_text =
            format!("subject=CN=x\nissuer=CN=x\n{}", encode_certificates(&ca_pool()[..1]));
        assert_eq!(decode_certificates(&with_text).unwrap(), &ca_pool()[..1]);
    }

    #[test]
    fn rejection_table() {
        let one = encode_certificates(&ca_pool()[..1]);
        let body = one.lines().nth(1).unwrap().to_owned();
        let mut trailing = ca_pool()[0].clone();
        trailing.push(0);
        let malformed = |s: &str| matches!(decode_certificates(s), Err(E::Malformed { .. }));
        let cases: Vec<(String, PemError)> = vec![
            ("".into(), E::NoCertificates),
            ("\n \r\n".into(), E::NoCertificates),
            ("hello".into(), E::NoCertificates),
            ("-----END CERTIFICATE-----\n".into(), E::NoCertificates),
            ("-----BEGIN CERTIFICATE\n".into(), E::NoCertificates),
            (format!("-----BEGIN CERTIFICATE-----\n{body}\n"), E::NoCertificates),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
                E::UnexpectedBlockType { block: 0, label: "PRIVATE KEY".into() },
            ),
            (
                format!("{one}-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"),
                E::UnexpectedBlockType { block: 1, label: "X509 CRL".into() },
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
        for bad in [
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END X509 CRL-----\n"),
            "-----BEGIN CERTIFICATE-----\nA*AA\n-----END CERTIFICATE-----\n".into(),
            format!("-----BEGIN CERTIFICATE-----\n{body}\n{one}"),
        ] {
            assert!(malformed(&bad), "input {bad:?}: {:?}", decode_certificates(&bad));
        }
        assert_eq!(Bundle::from_pem(td(), "x").unwrap_err(), E::NoCertificates);
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
