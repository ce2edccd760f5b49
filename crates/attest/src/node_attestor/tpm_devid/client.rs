//! A TPM 2.0 client for the agent side: the commands `tpm_devid` sends (TCG TPM 2.0 Library,
//! Part 3), marshalled here and sent to a TPM character device (`/dev/tpmrm0`) or to a TPM
//! emulator's Unix socket (swtpm's `--server type=unixio`), which take the same bytes.
//!
//! Authorisation is by password sessions (`TPM_RS_PW`), and by one policy session
//! (`TPM2_PolicySecret` on the endorsement hierarchy) for the endorsement key, whose default
//! template admits no password.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::tpm::{
    ALG_AES, ALG_CFB, ALG_ECC, ALG_NULL, ALG_RSA, ALG_RSASSA, ALG_SHA256, Public, Reader, put_sized,
};

/// `TPM_ST_NO_SESSIONS`.
const ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`.
const ST_SESSIONS: u16 = 0x8002;
/// `TPM_ST_HASHCHECK`.
const ST_HASHCHECK: u16 = 0x8024;

/// `TPM_RS_PW`: the password session.
const RS_PW: u32 = 0x4000_0009;
/// `TPM_RH_OWNER`.
pub const RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RH_NULL`.
const RH_NULL: u32 = 0x4000_0007;
/// `TPM_RH_ENDORSEMENT`.
pub const RH_ENDORSEMENT: u32 = 0x4000_000B;

/// The NV index of the RSA EK certificate (TCG EK Credential Profile).
pub const EK_CERT_INDEX_RSA: u32 = 0x01c0_0002;

const CC_NV_READ: u32 = 0x14E;
const CC_ACTIVATE_CREDENTIAL: u32 = 0x147;
const CC_CERTIFY: u32 = 0x148;
const CC_POLICY_SECRET: u32 = 0x151;
const CC_CREATE: u32 = 0x153;
const CC_LOAD: u32 = 0x157;
const CC_SIGN: u32 = 0x15D;
const CC_FLUSH_CONTEXT: u32 = 0x165;
const CC_NV_READ_PUBLIC: u32 = 0x169;
const CC_READ_PUBLIC: u32 = 0x173;
const CC_START_AUTH_SESSION: u32 = 0x176;
const CC_CREATE_PRIMARY: u32 = 0x131;

/// `TPM_RC_RETRY`, `TPM_RC_YIELDED`, `TPM_RC_TESTING`: the TPM asks to be asked again.
const RC_RETRY: [u32; 3] = [0x922, 0x908, 0x90A];

/// How many times a command the TPM asks to retry is sent (SPIRE's count).
const MAX_ATTEMPTS: u32 = 10;

const ATTR_FIXED_TPM: u32 = 0x2;
const ATTR_FIXED_PARENT: u32 = 0x10;
const ATTR_SENSITIVE_DATA_ORIGIN: u32 = 0x20;
const ATTR_USER_WITH_AUTH: u32 = 0x40;
const ATTR_ADMIN_WITH_POLICY: u32 = 0x80;
const ATTR_NO_DA: u32 = 0x400;
const ATTR_RESTRICTED: u32 = 0x1_0000;
const ATTR_DECRYPT: u32 = 0x2_0000;
const ATTR_SIGN: u32 = 0x4_0000;

/// TPM2_PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the default EK's policy ("policy A").
const EK_POLICY_A: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
];

/// The attributes every key here has: made in and bound to this TPM and this parent.
const ATTR_TPM_BOUND: u32 = ATTR_FIXED_TPM | ATTR_FIXED_PARENT | ATTR_SENSITIVE_DATA_ORIGIN;

/// `TPMT_PUBLIC` up to its parameters: type, SHA-256 names, `attributes`, `policy`, then the
/// symmetric algorithm (AES-128-CFB for a storage key, none otherwise) and the scheme
/// (RSASSA/SHA-256 for a signing key, none otherwise).
fn template_head(kind: u16, attributes: u32, policy: &[u8], storage: bool) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(kind.to_be_bytes());
    b.extend(ALG_SHA256.to_be_bytes());
    b.extend(attributes.to_be_bytes());
    put_sized(&mut b, policy);
    if storage {
        b.extend(ALG_AES.to_be_bytes());
        b.extend(128u16.to_be_bytes());
        b.extend(ALG_CFB.to_be_bytes());
        b.extend(ALG_NULL.to_be_bytes());
    } else {
        b.extend(ALG_NULL.to_be_bytes());
        b.extend(ALG_RSASSA.to_be_bytes());
        b.extend(ALG_SHA256.to_be_bytes());
    }
    b
}

/// Appends RSA-2048 parameters (exponent 65537) and `unique` as the modulus.
fn rsa_2048(b: &mut Vec<u8>, unique: &[u8]) {
    b.extend(2048u16.to_be_bytes());
    b.extend(0u32.to_be_bytes());
    put_sized(b, unique);
}

/// A storage parent: restricted decryption key with AES-128-CFB, empty unique (TCG
/// Provisioning Guidance's high-range SRK templates H-1 and H-2, with `noDA`).
pub fn srk_template(ecc: bool) -> Vec<u8> {
    let attributes =
        ATTR_TPM_BOUND | ATTR_USER_WITH_AUTH | ATTR_NO_DA | ATTR_RESTRICTED | ATTR_DECRYPT;
    let mut b = template_head(if ecc { ALG_ECC } else { ALG_RSA }, attributes, &[], true);
    if ecc {
        b.extend(0x0003u16.to_be_bytes()); // TPM_ECC_NIST_P256
        b.extend(ALG_NULL.to_be_bytes()); // kdf
        put_sized(&mut b, &[]);
        put_sized(&mut b, &[]);
    } else {
        rsa_2048(&mut b, &[]);
    }
    b
}

/// The default RSA EK template (TCG EK Credential Profile, template L-1).
pub fn ek_template_rsa() -> Vec<u8> {
    let attributes = ATTR_TPM_BOUND | ATTR_ADMIN_WITH_POLICY | ATTR_RESTRICTED | ATTR_DECRYPT;
    let mut b = template_head(ALG_RSA, attributes, &EK_POLICY_A, true);
    rsa_2048(&mut b, &[0u8; 256]);
    b
}

/// An RSA attestation key: restricted signing, RSASSA with SHA-256.
pub fn ak_template_rsa() -> Vec<u8> {
    let attributes =
        ATTR_TPM_BOUND | ATTR_USER_WITH_AUTH | ATTR_NO_DA | ATTR_RESTRICTED | ATTR_SIGN;
    let mut b = template_head(ALG_RSA, attributes, &[], false);
    rsa_2048(&mut b, &[]);
    b
}

/// A session authorising one handle of a command.
#[derive(Clone)]
pub enum Auth<'a> {
    /// `TPM_RS_PW` with this password.
    Password(&'a [u8]),
    /// A policy session whose policy is already satisfied; the command ends it.
    Policy(u32),
}

/// A connection to a TPM.
enum Link {
    Device(std::fs::File),
    Socket(UnixStream),
}

/// A TPM: commands go out one at a time and their responses come back whole.
pub struct Tpm {
    link: Link,
}

/// A failed TPM command: which command and the TPM's response code or the I/O error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TpmError(pub String);

fn err(s: impl Into<String>) -> TpmError {
    TpmError(s.into())
}

impl Tpm {
    /// Opens the TPM at `path`: a character device, or a Unix socket of a TPM emulator.
    ///
    /// # Errors
    /// When `path` is neither, or cannot be opened.
    pub fn open(path: &Path) -> Result<Self, TpmError> {
        let kind = std::fs::metadata(path).map_err(|e| err(e.to_string()))?.file_type();
        let link = if kind.is_char_device() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            Link::Device(f)
        } else if kind.is_socket() {
            let s = UnixStream::connect(path).map_err(|e| err(e.to_string()))?;
            s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| err(e.to_string()))?;
            Link::Socket(s)
        } else {
            return Err(err(format!("unsupported TPM file mode {kind:?}")));
        };
        Ok(Self { link })
    }

    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let io = |e: std::io::Error| err(format!("TPM I/O: {e}"));
        match &mut self.link {
            Link::Device(f) => {
                f.write_all(command).map_err(io)?;
                let mut buf = vec![0u8; 8192];
                let n = f.read(&mut buf).map_err(io)?;
                buf.truncate(n);
                Ok(buf)
            }
            Link::Socket(s) => {
                s.write_all(command).map_err(io)?;
                let mut head = [0u8; 10];
                s.read_exact(&mut head).map_err(io)?;
                let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]);
                let size = usize::try_from(size).unwrap_or(0);
                if !(10..=65536).contains(&size) {
                    return Err(err(format!("TPM response of {size} bytes")));
                }
                let mut out = head.to_vec();
                out.resize(size, 0);
                s.read_exact(&mut out[10..]).map_err(io)?;
                Ok(out)
            }
        }
    }

    /// Runs command `cc` with `handles`, the sessions `auths` (one per handle that needs
    /// one, in order) and `params`; returns the response's handles (`out_handles` of them)
    /// and its parameters.
    fn run(
        &mut self,
        name: &str,
        cc: u32,
        handles: &[u32],
        auths: &[Auth<'_>],
        params: &[u8],
        out_handles: usize,
    ) -> Result<(Vec<u32>, Vec<u8>), TpmError> {
        let mut body = Vec::new();
        for h in handles {
            body.extend(h.to_be_bytes());
        }
        if !auths.is_empty() {
            let mut area = Vec::new();
            for a in auths {
                match a {
                    Auth::Password(p) => {
                        area.extend(RS_PW.to_be_bytes());
                        put_sized(&mut area, &[]);
                        area.push(0x01); // continueSession
                        put_sized(&mut area, p);
                    }
                    Auth::Policy(h) => {
                        area.extend(h.to_be_bytes());
                        put_sized(&mut area, &[]);
                        area.push(0x00);
                        put_sized(&mut area, &[]);
                    }
                }
            }
            body.extend(u32::try_from(area.len()).unwrap_or(0).to_be_bytes());
            body.extend(area);
        }
        body.extend_from_slice(params);
        let tag = if auths.is_empty() { ST_NO_SESSIONS } else { ST_SESSIONS };
        let mut cmd = tag.to_be_bytes().to_vec();
        cmd.extend(u32::try_from(body.len() + 10).unwrap_or(0).to_be_bytes());
        cmd.extend(cc.to_be_bytes());
        cmd.extend(body);

        let mut attempt = 1;
        let resp = loop {
            let resp = self.exchange(&cmd)?;
            let mut r = Reader::new(&resp);
            let bad = |e: String| err(format!("{name}: malformed response: {e}"));
            let rtag = r.u16().map_err(bad)?;
            r.u32().map_err(bad)?;
            let rc = r.u32().map_err(bad)?;
            if RC_RETRY.contains(&rc) && attempt < MAX_ATTEMPTS {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            if rc != 0 {
                return Err(err(format!("{name} failed: TPM response code 0x{rc:03x}")));
            }
            break (rtag, r.rest().to_vec());
        };
        let (rtag, rest) = resp;
        let mut r = Reader::new(&rest);
        let bad = |e: String| err(format!("{name}: malformed response: {e}"));
        let mut out = Vec::with_capacity(out_handles);
        for _ in 0..out_handles {
            out.push(r.u32().map_err(bad)?);
        }
        let params = if rtag == ST_SESSIONS {
            let n = r.u32().map_err(bad)?;
            r.bytes(usize::try_from(n).unwrap_or(usize::MAX)).map_err(bad)?.to_vec()
        } else {
            r.rest().to_vec()
        };
        Ok((out, params))
    }

    /// `TPM2_CreatePrimary` under `hierarchy`; the new object's handle and `TPMT_PUBLIC`.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn create_primary(
        &mut self,
        hierarchy: u32,
        hierarchy_auth: &[u8],
        object_auth: &[u8],
        template: &[u8],
    ) -> Result<(u32, Vec<u8>), TpmError> {
        let mut p = sensitive_create(object_auth);
        put_sized(&mut p, template);
        put_sized(&mut p, &[]); // outsideInfo
        p.extend(0u32.to_be_bytes()); // creationPCR
        let (h, resp) = self.run(
            "TPM2_CreatePrimary",
            CC_CREATE_PRIMARY,
            &[hierarchy],
            &[Auth::Password(hierarchy_auth)],
            &p,
            1,
        )?;
        let public = Reader::new(&resp).sized().map_err(err)?.to_vec();
        Ok((h[0], public))
    }

    /// `TPM2_Create` under `parent`; the new object's `TPM2B_PRIVATE` and `TPMT_PUBLIC`
    /// contents.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn create(
        &mut self,
        parent: u32,
        parent_auth: &[u8],
        object_auth: &[u8],
        template: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let mut p = sensitive_create(object_auth);
        put_sized(&mut p, template);
        put_sized(&mut p, &[]);
        p.extend(0u32.to_be_bytes());
        let (_, resp) =
            self.run("TPM2_Create", CC_CREATE, &[parent], &[Auth::Password(parent_auth)], &p, 0)?;
        let mut r = Reader::new(&resp);
        let private = r.sized().map_err(err)?.to_vec();
        let public = r.sized().map_err(err)?.to_vec();
        Ok((private, public))
    }

    /// `TPM2_Load` of a key pair under `parent`; its handle.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn load(
        &mut self,
        parent: u32,
        parent_auth: &[u8],
        private: &[u8],
        public: &[u8],
    ) -> Result<u32, TpmError> {
        let mut p = Vec::new();
        put_sized(&mut p, private);
        put_sized(&mut p, public);
        let (h, _) =
            self.run("TPM2_Load", CC_LOAD, &[parent], &[Auth::Password(parent_auth)], &p, 1)?;
        Ok(h[0])
    }

    /// `TPM2_ReadPublic`: the object's `TPMT_PUBLIC`.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn read_public(&mut self, handle: u32) -> Result<Vec<u8>, TpmError> {
        let (_, resp) = self.run("TPM2_ReadPublic", CC_READ_PUBLIC, &[handle], &[], &[], 0)?;
        Ok(Reader::new(&resp).sized().map_err(err)?.to_vec())
    }

    /// The whole contents of NV index `index`, read with the index's own (empty)
    /// authorisation.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn nv_read(&mut self, index: u32) -> Result<Vec<u8>, TpmError> {
        let (_, resp) = self.run("TPM2_NV_ReadPublic", CC_NV_READ_PUBLIC, &[index], &[], &[], 0)?;
        let mut r = Reader::new(&resp);
        let public = r.sized().map_err(err)?;
        let mut r = Reader::new(public);
        r.bytes(4 + 2 + 4).map_err(err)?;
        r.sized().map_err(err)?;
        let size = r.u16().map_err(err)?;
        let mut out = Vec::with_capacity(usize::from(size));
        let mut offset: u16 = 0;
        while offset < size {
            let chunk = (size - offset).min(512);
            let mut p = chunk.to_be_bytes().to_vec();
            p.extend(offset.to_be_bytes());
            let (_, resp) = self.run(
                "TPM2_NV_Read",
                CC_NV_READ,
                &[index, index],
                &[Auth::Password(&[])],
                &p,
                0,
            )?;
            out.extend_from_slice(Reader::new(&resp).sized().map_err(err)?);
            offset += chunk;
        }
        Ok(out)
    }

    /// `TPM2_Certify` of `object` by `signer` with the signer's scheme: the `TPMS_ATTEST`
    /// and the encoded `TPMT_SIGNATURE`.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn certify(
        &mut self,
        object: u32,
        object_auth: &[u8],
        signer: u32,
        signer_auth: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let mut p = Vec::new();
        put_sized(&mut p, &[]); // qualifyingData
        p.extend(ALG_NULL.to_be_bytes());
        let (_, resp) = self.run(
            "TPM2_Certify",
            CC_CERTIFY,
            &[object, signer],
            &[Auth::Password(object_auth), Auth::Password(signer_auth)],
            &p,
            0,
        )?;
        let mut r = Reader::new(&resp);
        let attest = r.sized().map_err(err)?.to_vec();
        Ok((attest, r.rest().to_vec()))
    }

    /// `TPM2_Sign` of `digest` by the unrestricted key `key` with its own scheme: the encoded
    /// `TPMT_SIGNATURE`.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn sign(&mut self, key: u32, auth: &[u8], digest: &[u8]) -> Result<Vec<u8>, TpmError> {
        let mut p = Vec::new();
        put_sized(&mut p, digest);
        p.extend(ALG_NULL.to_be_bytes());
        p.extend(ST_HASHCHECK.to_be_bytes());
        p.extend(RH_NULL.to_be_bytes());
        put_sized(&mut p, &[]);
        let (_, resp) = self.run("TPM2_Sign", CC_SIGN, &[key], &[Auth::Password(auth)], &p, 0)?;
        Ok(resp)
    }

    /// A policy session (SHA-256, unbound, unsalted) satisfied by `TPM2_PolicySecret` on the
    /// endorsement hierarchy.
    ///
    /// # Errors
    /// The TPM's refusal.
    pub fn endorsement_policy_session(&mut self, endorsement_auth: &[u8]) -> Result<u32, TpmError> {
        let mut p = Vec::new();
        put_sized(&mut p, &[0u8; 16]); // nonceCaller
        put_sized(&mut p, &[]); // encryptedSalt
        p.push(0x01); // TPM_SE_POLICY
        p.extend(ALG_NULL.to_be_bytes());
        p.extend(ALG_SHA256.to_be_bytes());
        let (h, _) = self.run(
            "TPM2_StartAuthSession",
            CC_START_AUTH_SESSION,
            &[RH_NULL, RH_NULL],
            &[],
            &p,
            1,
        )?;
        let session = h[0];
        let mut p = Vec::new();
        put_sized(&mut p, &[]); // nonceTPM
        put_sized(&mut p, &[]); // cpHashA
        put_sized(&mut p, &[]); // policyRef
        p.extend(0u32.to_be_bytes()); // expiration
        if let Err(e) = self.run(
            "TPM2_PolicySecret",
            CC_POLICY_SECRET,
            &[RH_ENDORSEMENT, session],
            &[Auth::Password(endorsement_auth)],
            &p,
            0,
        ) {
            self.flush(session);
            return Err(e);
        }
        Ok(session)
    }

    /// `TPM2_ActivateCredential`: the secret a credential made for `activate` (the AK) and
    /// encrypted to `key` (the EK, authorised by `policy_session`, which the command ends).
    ///
    /// # Errors
    /// The TPM's refusal (the session is flushed then).
    pub fn activate_credential(
        &mut self,
        activate: u32,
        activate_auth: &[u8],
        key: u32,
        policy_session: u32,
        credential: &[u8],
        secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let mut p = Vec::new();
        put_sized(&mut p, credential);
        put_sized(&mut p, secret);
        match self.run(
            "TPM2_ActivateCredential",
            CC_ACTIVATE_CREDENTIAL,
            &[activate, key],
            &[Auth::Password(activate_auth), Auth::Policy(policy_session)],
            &p,
            0,
        ) {
            Ok((_, resp)) => Ok(Reader::new(&resp).sized().map_err(err)?.to_vec()),
            Err(e) => {
                self.flush(policy_session);
                Err(e)
            }
        }
    }

    /// `TPM2_FlushContext`, best effort.
    pub fn flush(&mut self, handle: u32) {
        if let Err(e) =
            self.run("TPM2_FlushContext", CC_FLUSH_CONTEXT, &[], &[], &handle.to_be_bytes(), 0)
        {
            tracing::warn!(handle = format!("0x{handle:08x}"), error = %e, "failed to flush handle");
        }
    }
}

fn sensitive_create(user_auth: &[u8]) -> Vec<u8> {
    let mut inner = Vec::new();
    put_sized(&mut inner, user_auth);
    put_sized(&mut inner, &[]);
    let mut p = Vec::new();
    put_sized(&mut p, &inner);
    p
}

/// Whether a decoded public area is an ECC key (its SRK is the ECC template then).
pub fn is_ecc(public: &Public) -> bool {
    public.kind == ALG_ECC
}
