//! The one DER writer in ward: the few structures the CA emits (certificates, CSRs) and the
//! public-key encodings of [`crate::jwk`] are all written with it.
//!
//! Nested values are written in place: the tag goes out, the content is written after it,
//! and the length is inserted once the content size is known. Certificates are well under a
//! few kilobytes, so the single shift this costs is negligible.

/// Tag of a SEQUENCE.
pub const SEQUENCE: u8 = 0x30;
/// Tag of a SET.
pub const SET: u8 = 0x31;
/// Tag of an INTEGER.
pub const INTEGER: u8 = 0x02;
/// Tag of a BIT STRING.
pub const BIT_STRING: u8 = 0x03;
/// Tag of an OCTET STRING.
pub const OCTET_STRING: u8 = 0x04;
/// Tag of a NULL.
pub const NULL: u8 = 0x05;
/// Tag of an OBJECT IDENTIFIER.
pub const OID: u8 = 0x06;
/// Tag of a UTF8String.
pub const UTF8_STRING: u8 = 0x0c;
/// Tag of a PrintableString.
pub const PRINTABLE_STRING: u8 = 0x13;
/// Tag of a UTCTime.
pub const UTC_TIME: u8 = 0x17;
/// Tag of a GeneralizedTime.
pub const GENERALIZED_TIME: u8 = 0x18;

/// Appends a DER length.
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    let mut buf = [0u8; 9];
    let n = encode_len(len, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

fn encode_len(len: usize, buf: &mut [u8; 9]) -> usize {
    if len < 0x80 {
        buf[0] = len as u8;
        return 1;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let n = bytes.len() - skip;
    buf[0] = 0x80 | n as u8;
    buf[1..=n].copy_from_slice(&bytes[skip..]);
    n + 1
}

/// Appends a complete TLV with primitive content.
pub fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    write_len(out, content.len());
    out.extend_from_slice(content);
}

/// Appends a constructed value whose content `f` writes.
pub fn nested<R>(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    out.push(tag);
    let start = out.len();
    let r = f(out);
    let len = out.len() - start;
    let mut buf = [0u8; 9];
    let n = encode_len(len, &mut buf);
    out.splice(start..start, buf[..n].iter().copied());
    r
}

/// Appends a non-negative INTEGER from big-endian magnitude bytes, minimally encoded.
pub fn uint(out: &mut Vec<u8>, magnitude: &[u8]) {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let m = &magnitude[skip..];
    out.push(INTEGER);
    match m.first() {
        None => {
            out.extend_from_slice(&[1, 0]);
        }
        Some(first) if first & 0x80 != 0 => {
            write_len(out, m.len() + 1);
            out.push(0);
            out.extend_from_slice(m);
        }
        Some(_) => {
            write_len(out, m.len());
            out.extend_from_slice(m);
        }
    }
}

/// Appends a BIT STRING with no unused bits.
pub fn bit_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(BIT_STRING);
    write_len(out, bytes.len() + 1);
    out.push(0);
    out.extend_from_slice(bytes);
}

fn push2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Appends an X.509 Time for `unix` seconds: UTCTime for 1950-2049, GeneralizedTime
/// otherwise (RFC 5280 §4.1.2.5). Times outside year 0..=9999 are clamped into it.
pub fn time(out: &mut Vec<u8>, unix: i64) {
    // 9999-12-31T23:59:59Z and 0000-01-01T00:00:00Z.
    let unix = unix.clamp(-62_167_219_200, 253_402_300_799);
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    if (1950..2050).contains(&year) {
        out.extend_from_slice(&[UTC_TIME, 13]);
        push2(out, year as u32 % 100);
    } else {
        out.extend_from_slice(&[GENERALIZED_TIME, 15]);
        push2(out, year as u32 / 100);
        push2(out, year as u32 % 100);
    }
    push2(out, month);
    push2(out, day);
    push2(out, secs / 3600);
    push2(out, secs / 60 % 60);
    push2(out, secs % 60);
    out.push(b'Z');
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        let mut v = Vec::new();
        write_len(&mut v, 5);
        write_len(&mut v, 0x80);
        write_len(&mut v, 0x1234);
        assert_eq!(v, [5, 0x81, 0x80, 0x82, 0x12, 0x34]);
    }

    #[test]
    fn nested_inserts_long_lengths() {
        let mut v = vec![0xaa];
        nested(&mut v, SEQUENCE, |o| o.extend_from_slice(&[7u8; 300]));
        assert_eq!(&v[..5], &[0xaa, 0x30, 0x82, 0x01, 0x2c]);
        assert_eq!(v.len(), 5 + 300);
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        let cases: &[(&[u8], &[u8])] = &[
            (&[0, 0, 1], &[2, 1, 1]),
            (&[0x80], &[2, 2, 0, 0x80]),
            (&[0, 0x7f, 0xff], &[2, 2, 0x7f, 0xff]),
            (&[0, 0], &[2, 1, 0]),
        ];
        for (input, want) in cases {
            let mut v = Vec::new();
            uint(&mut v, input);
            assert_eq!(&v, want);
        }
    }

    #[test]
    fn times_match_x509_parser() {
        use x509_parser::prelude::FromDer;
        for unix in [0i64, 1_767_225_600, 2_524_607_999, 2_524_608_000, -631_152_001, 951_782_400] {
            let mut v = Vec::new();
            time(&mut v, unix);
            let (rest, t) = x509_parser::time::ASN1Time::from_der(&v).unwrap();
            assert!(rest.is_empty());
            assert_eq!(t.timestamp(), unix, "unix {unix}");
            let want_tag = if (-631_152_000..2_524_608_000).contains(&unix) {
                UTC_TIME
            } else {
                GENERALIZED_TIME
            };
            assert_eq!(v[0], want_tag, "unix {unix}");
        }
    }
}
