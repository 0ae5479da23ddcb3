//! The few CBOR shapes WebAuthn needs from an authenticator: a COSE_Key and a `none` attestation object.
//!
//! Encoding only, canonical (RFC 8949 core deterministic: shortest lengths, map keys in the order CTAP2 sorts them).

fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    match value {
        0..=23 => out.push(m | value as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, value as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        head(out, 0, v as u64);
    } else {
        head(out, 1, (-1 - v) as u64);
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, 2, b.len() as u64);
    out.extend_from_slice(b);
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// COSE_Key of an ES256 (P-256) public key from its affine coordinates.
pub(crate) fn cose_es256_key(x: &[u8; 32], y: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(77);
    head(&mut out, 5, 5);
    int(&mut out, 1); // kty
    int(&mut out, 2); // EC2
    int(&mut out, 3); // alg
    int(&mut out, -7); // ES256
    int(&mut out, -1); // crv
    int(&mut out, 1); // P-256
    int(&mut out, -2);
    bytes(&mut out, x);
    int(&mut out, -3);
    bytes(&mut out, y);
    out
}

/// Attestation object with format `none`: `{"fmt": "none", "attStmt": {}, "authData": ...}`.
pub(crate) fn attestation_object_none(auth_data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(auth_data.len() + 32);
    head(&mut out, 5, 3);
    text(&mut out, "fmt");
    text(&mut out, "none");
    text(&mut out, "attStmt");
    head(&mut out, 5, 0);
    text(&mut out, "authData");
    bytes(&mut out, auth_data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_use_shortest_form() {
        let mut o = Vec::new();
        head(&mut o, 2, 23);
        head(&mut o, 2, 24);
        head(&mut o, 2, 300);
        head(&mut o, 2, 70_000);
        assert_eq!(
            o,
            [0x57, 0x58, 24, 0x59, 0x01, 0x2c, 0x5a, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn negative_ints() {
        let mut o = Vec::new();
        int(&mut o, -7);
        int(&mut o, -1);
        int(&mut o, -3);
        assert_eq!(o, [0x26, 0x20, 0x22]);
    }

    #[test]
    fn attestation_object_shape() {
        let obj = attestation_object_none(&[0xaa; 3]);
        // a3 63 "fmt" 64 "none" 67 "attStmt" a0 68 "authData" 43 aa aa aa
        let mut want = vec![0xa3, 0x63];
        want.extend_from_slice(b"fmt");
        want.push(0x64);
        want.extend_from_slice(b"none");
        want.push(0x67);
        want.extend_from_slice(b"attStmt");
        want.push(0xa0);
        want.push(0x68);
        want.extend_from_slice(b"authData");
        want.extend_from_slice(&[0x43, 0xaa, 0xaa, 0xaa]);
        assert_eq!(obj, want);
    }
}
