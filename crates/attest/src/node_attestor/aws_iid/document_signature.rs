//! The instance identity document's signatures as SPIRE checks them: the RSA-2048 PKCS#7
//! (`rsa2048`, BER as AWS serves it, read after conversion to DER) and the RSA-1024 PKCS#1
//! v1.5 signature, with Go's texts.

use aws_lc_rs::digest::{self, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
use aws_lc_rs::signature::{self, UnparsedPublicKey};

use super::{OID_RSA, SigningCert, go_base64, refuse, unsigned};
use crate::node_attestor::{Refusal, RefusalCode};

/// RSA PKCS#1 v1.5 with SHA-256 of `message` by `cert`'s key; Go's text when it fails.
fn check_rsa_sha256(cert: &SigningCert, message: &[u8], sig: &[u8]) -> Result<(), String> {
    UnparsedPublicKey::new(
        &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        &cert.public_key,
    )
    .verify(message, sig)
    .map_err(|_| "crypto/rsa: verification error".to_owned())
}

/// SPIRE's `verifyRSASignature`.
pub(super) fn verify_rsa1024(
    cert: &SigningCert,
    document: &str,
    signature: &str,
) -> Result<(), String> {
    let sig =
        go_base64(signature).map_err(|e| format!("failed to decode the IID signature: {e}"))?;
    check_rsa_sha256(cert, document.as_bytes(), &sig)
        .map_err(|e| format!("failed to verify the cryptographic signature: {e}"))
}

pub(super) const OID_SIGNED_DATA: &str = "1.2.840.113549.1.7.2";
pub(super) const OID_MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";
const OID_SHA1: &str = "1.3.14.3.2.26";
pub(super) const OID_SHA256: &str = "2.16.840.1.101.3.4.2.1";
const OID_SHA1_RSA: &str = "1.2.840.113549.1.1.5";
const OID_SHA256_RSA: &str = "1.2.840.113549.1.1.11";

/// SPIRE's `decodeAndParsePKCS7Signature` and `pkcs7.Verify` with `cert` as the only
/// certificate: the SignedData's content, once every signer's signature holds.
pub(super) fn verify_pkcs7(cert: &SigningCert, signature: &str) -> Result<Vec<u8>, Refusal> {
    use cms::content_info::ContentInfo;
    use cms::signed_data::{SignedData, SignerIdentifier};
    use der::{Decode, Encode};
    let invalid = |m: String| refuse(RefusalCode::InvalidArgument, m);
    // pem.Decode of the armoured text: spaces, tabs and line breaks are not base64.
    let body: String =
        signature.chars().filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n')).collect();
    let der_bytes = go_base64(&body).map_err(|_| {
        invalid("failed to decode the instance identity cryptographic signature".to_owned())
    })?;
    let parse_error = |e: String| {
        invalid(format!("failed to parse the instance identity cryptographic signature: {e}"))
    };
    if der_bytes.is_empty() {
        return Err(parse_error("pkcs7: input data is empty".to_owned()));
    }
    let der_bytes = ber_to_der(&der_bytes).map_err(parse_error)?;
    let info = ContentInfo::from_der(&der_bytes).map_err(|e| parse_error(format!("asn1: {e}")))?;
    if info.content_type.to_string() != OID_SIGNED_DATA {
        return Err(parse_error("pkcs7: cannot parse data: unimplemented content type".to_owned()));
    }
    let signed: SignedData =
        info.content.decode_as().map_err(|e| parse_error(format!("asn1: {e}")))?;
    let content = match &signed.encap_content_info.econtent {
        Some(any) => any.value().to_vec(),
        None => Vec::new(),
    };

    let failed = |m: String| {
        invalid(format!("failed verification of instance identity cryptographic signature: {m}"))
    };
    if signed.signer_infos.0.is_empty() {
        return Err(failed("pkcs7: Message has no signers".to_owned()));
    }
    for signer in signed.signer_infos.0.iter() {
        let digest_alg = match signer.digest_alg.oid.to_string().as_str() {
            OID_SHA1 => &SHA1_FOR_LEGACY_USE_ONLY,
            OID_SHA256 => &SHA256,
            _ => {
                return Err(failed(
                    "pkcs7: cannot decrypt data: only RSA, DES, DES-EDE3, AES-256-CBC and \
                     AES-128-GCM supported"
                        .to_owned(),
                ));
            }
        };
        let signed_bytes = match &signer.signed_attrs {
            Some(attrs) if !attrs.is_empty() => {
                let wanted = attrs
                    .iter()
                    .find(|a| a.oid.to_string() == OID_MESSAGE_DIGEST)
                    .and_then(|a| a.values.iter().next())
                    .ok_or_else(|| failed("pkcs7: attribute type not in attributes".to_owned()))?;
                let wanted = wanted
                    .decode_as::<der::asn1::OctetString>()
                    .map_err(|e| failed(format!("asn1: {e}")))?;
                let computed = digest::digest(digest_alg, &content);
                if wanted.as_bytes() != computed.as_ref() {
                    return Err(failed(format!(
                        "pkcs7: Message digest mismatch\n\tExpected: {}\n\tActual  : {}",
                        hex::encode_upper(wanted.as_bytes()),
                        hex::encode_upper(computed.as_ref())
                    )));
                }
                attrs.to_der().map_err(|e| failed(format!("asn1: {e}")))?
            }
            _ => content.clone(),
        };
        let names_cert = match &signer.sid {
            SignerIdentifier::IssuerAndSerialNumber(ias) => {
                ias.issuer.to_der().is_ok_and(|issuer| issuer == cert.raw_issuer)
                    && unsigned(ias.serial_number.as_bytes()) == cert.serial.as_slice()
            }
            SignerIdentifier::SubjectKeyIdentifier(_) => false,
        };
        if !names_cert {
            return Err(failed("pkcs7: No certificate for signer".to_owned()));
        }
        let sha1 = std::ptr::eq(digest_alg, &SHA1_FOR_LEGACY_USE_ONLY);
        match signer.signature_algorithm.oid.to_string().as_str() {
            OID_SHA1_RSA => return Err(failed(insecure_sha1())),
            OID_RSA if sha1 => return Err(failed(insecure_sha1())),
            OID_RSA | OID_SHA256_RSA => {}
            _ => {
                return Err(failed(
                    "x509: cannot verify signature: algorithm unimplemented".to_owned(),
                ));
            }
        }
        check_rsa_sha256(cert, &signed_bytes, signer.signature.as_bytes()).map_err(failed)?;
    }
    Ok(content)
}

fn insecure_sha1() -> String {
    "x509: cannot verify signature: insecure algorithm SHA1-RSA".to_owned()
}

/// How deep BER may nest before [`ber_to_der`] gives up (AWS's signatures nest about 8 deep).
const MAX_BER_DEPTH: usize = 32;

/// BER to DER as the PKCS#7 parser SPIRE uses converts it first (`ber2der`): indefinite
/// lengths become definite, and a constructed OCTET STRING becomes one primitive OCTET STRING
/// holding its pieces. AWS's `rsa2048` signatures use indefinite lengths.
///
/// # Errors
/// A sentence when the input is not one whole BER value.
pub fn ber_to_der(input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let used = ber_value(input, 0, &mut out)?;
    if used != input.len() {
        return Err("asn1: syntax error: trailing data".into());
    }
    Ok(out)
}

const TRUNCATED: &str = "ber2der: BER tag length is more than available data";

/// Converts the value at the start of `input` into `out`; the number of bytes it took.
fn ber_value(input: &[u8], depth: usize, out: &mut Vec<u8>) -> Result<usize, String> {
    if depth > MAX_BER_DEPTH {
        return Err("ber2der: BER nests too deeply".into());
    }
    let first = *input.first().ok_or(TRUNCATED)?;
    let mut at = 1;
    if first & 0x1f == 0x1f {
        loop {
            let b = *input.get(at).ok_or(TRUNCATED)?;
            at += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let tag = input.get(..at).ok_or(TRUNCATED)?;
    let constructed = first & 0x20 != 0;
    let len_byte = *input.get(at).ok_or(TRUNCATED)?;
    at += 1;
    let length = match len_byte {
        0x80 => None,
        b if b < 0x80 => Some(usize::from(b)),
        b => {
            let n = usize::from(b & 0x7f);
            if n > 4 {
                return Err("ber2der: BER tag length too long".into());
            }
            let bytes = input.get(at..at + n).ok_or(TRUNCATED)?;
            at += n;
            Some(bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b)))
        }
    };
    if !constructed {
        let n = length.ok_or("ber2der: indefinite length on a primitive value")?;
        let content = input.get(at..at.checked_add(n).ok_or(TRUNCATED)?).ok_or(TRUNCATED)?;
        out.extend_from_slice(tag);
        der_length(content.len(), out);
        out.extend_from_slice(content);
        return Ok(at + n);
    }
    // The children, converted, until the length is used or the end-of-contents octets.
    let mut children = Vec::new();
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    let end = match length {
        Some(n) => Some(at.checked_add(n).ok_or(TRUNCATED)?),
        None => None,
    };
    if end.is_some_and(|e| e > input.len()) {
        return Err(TRUNCATED.into());
    }
    loop {
        match end {
            Some(e) if at >= e => break,
            None if input.get(at..at + 2) == Some(&[0, 0]) => {
                at += 2;
                break;
            }
            _ => {}
        }
        let rest = match end {
            Some(e) => input.get(at..e).ok_or(TRUNCATED)?,
            None => input.get(at..).ok_or(TRUNCATED)?,
        };
        if rest.is_empty() {
            return Err(TRUNCATED.into());
        }
        let start = children.len();
        at += ber_value(rest, depth + 1, &mut children)?;
        pieces.push((start, children.len()));
    }
    if first == 0x24 {
        // A constructed OCTET STRING: its pieces' contents, in one primitive OCTET STRING.
        let mut joined = Vec::new();
        for (s, e) in pieces {
            let piece = children.get(s..e).ok_or(TRUNCATED)?;
            if piece.first() != Some(&0x04) {
                return Err("ber2der: constructed OCTET STRING holds another type".into());
            }
            joined.extend_from_slice(der_content(piece).ok_or(TRUNCATED)?);
        }
        out.push(0x04);
        der_length(joined.len(), out);
        out.extend_from_slice(&joined);
    } else {
        out.extend_from_slice(tag);
        der_length(children.len(), out);
        out.extend_from_slice(&children);
    }
    Ok(at)
}

/// Appends a DER length.
fn der_length(n: usize, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// The content of one DER value with a one-byte tag (as [`ber_value`] wrote it).
fn der_content(value: &[u8]) -> Option<&[u8]> {
    let len_byte = *value.get(1)?;
    if len_byte < 0x80 {
        return value.get(2..2 + usize::from(len_byte));
    }
    let n = usize::from(len_byte & 0x7f);
    let len = value.get(2..2 + n)?.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    value.get(2 + n..2 + n + len)
}
