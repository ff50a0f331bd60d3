//! SASL PLAIN (RFC 4616) both ways: decoding what clients send, shared by the pre-auth
//! machines, and encoding what postern sends upstream ([`plain_response`]; with tokens,
//! [`xoauth2_response`] and [`oauthbearer_response`], RFC 7628).
//!
//! Clients send `base64(authzid NUL authcid NUL passwd)`. postern logs in upstream as the
//! authenticated user, so it cannot act for somebody else: an authorization identity that
//! differs from the login is refused. Errors describe what was wrong with the message, never
//! its content.

use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{alphabet, Engine as _};

use crate::auth::Secret;

/// Longest accepted field (authzid, login, password) in bytes. RFC 4616 allows 255; being
/// liberal costs nothing since the whole line is already bounded by the protocol layer.
pub const MAX_FIELD_LEN: usize = 1024;

/// The standard base64 alphabet, with or without padding: clients differ.
const LIBERAL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Credentials carried by a SASL PLAIN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// The authorization identity, `None` when the client left it empty (the usual case).
    /// When present it is equal to `login`, ignoring case.
    pub authzid: Option<String>,
    /// The authentication identity: the user's login.
    pub login: String,
    /// The app password.
    pub password: Secret<String>,
}

/// Why a SASL message was rejected. The text never contains the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The line is not base64 (standard alphabet).
    #[error("SASL response is not valid base64")]
    InvalidBase64,
    /// The PLAIN message does not consist of exactly three NUL-separated fields.
    #[error("SASL PLAIN message does not have exactly three NUL-separated fields")]
    WrongFieldCount,
    /// A field is longer than [`MAX_FIELD_LEN`].
    #[error("SASL PLAIN field is longer than {MAX_FIELD_LEN} bytes")]
    FieldTooLong,
    /// A field is not UTF-8.
    #[error("SASL PLAIN field is not valid UTF-8")]
    InvalidUtf8,
    /// The authentication identity (login) is empty.
    #[error("SASL PLAIN login is empty")]
    EmptyLogin,
    /// The password is empty.
    #[error("SASL PLAIN password is empty")]
    EmptyPassword,
    /// The client asked to act as another user, which postern cannot do. Protocols answer
    /// this like a wrong password.
    #[error("SASL PLAIN authorization identity differs from the login")]
    AuthzidMismatch,
}

/// Decodes one base64 SASL response line (standard alphabet, padding optional).
///
/// Trailing whitespace (including CR LF) is ignored. A lone `=` is the empty response
/// (RFC 4954, RFC 4959).
pub fn decode_base64(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let trimmed = line.trim_ascii_end();
    if trimmed == b"=" {
        return Ok(Vec::new());
    }
    LIBERAL_BASE64
        .decode(trimmed)
        .map_err(|_| SaslError::InvalidBase64)
}

/// Decodes an already base64-decoded SASL PLAIN message: `authzid NUL authcid NUL passwd`.
pub fn decode_plain(message: &[u8]) -> Result<PlainCredentials, SaslError> {
    let fields: Vec<&[u8]> = message.split(|&byte| byte == 0).collect();
    let [authzid, login, password] = fields[..] else {
        return Err(SaslError::WrongFieldCount);
    };
    let authzid = plain_field(authzid)?;
    let login = plain_field(login)?;
    let password = plain_field(password)?;
    if login.is_empty() {
        return Err(SaslError::EmptyLogin);
    }
    if password.is_empty() {
        return Err(SaslError::EmptyPassword);
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    if let Some(authzid) = &authzid {
        if authzid.to_lowercase() != login.to_lowercase() {
            return Err(SaslError::AuthzidMismatch);
        }
    }
    Ok(PlainCredentials {
        authzid,
        login: login.to_owned(),
        password: Secret::new(password.to_owned()),
    })
}

/// One field of a PLAIN message, checked for length and UTF-8.
fn plain_field(bytes: &[u8]) -> Result<&str, SaslError> {
    if bytes.len() > MAX_FIELD_LEN {
        return Err(SaslError::FieldTooLong);
    }
    std::str::from_utf8(bytes).map_err(|_| SaslError::InvalidUtf8)
}

/// The base64 PLAIN response `authzid NUL authcid NUL password` that postern sends
/// upstream; an empty authzid means "as authcid".
pub fn plain_response(authzid: &str, authcid: &str, password: &Secret<String>) -> Secret<String> {
    let mut message =
        Vec::with_capacity(authzid.len() + authcid.len() + password.expose().len() + 2);
    message.extend_from_slice(authzid.as_bytes());
    message.push(0);
    message.extend_from_slice(authcid.as_bytes());
    message.push(0);
    message.extend_from_slice(password.expose().as_bytes());
    let encoded = Secret::new(STANDARD.encode(&message));
    // The message holds the password in clear: it does not linger in freed memory.
    message.fill(0);
    encoded
}

/// SASL XOAUTH2's response (Google's and Microsoft's):
/// `base64("user=" user ^A "auth=Bearer " token ^A ^A)`.
pub fn xoauth2_response(user: &str, token: &Secret<String>) -> Secret<String> {
    encoded(format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        token.expose()
    ))
}

/// SASL OAUTHBEARER's response (RFC 7628 3.1): a GS2 header naming the user, then
/// `^A "auth=Bearer " token ^A ^A`. In the user's name `,` and `=` are escaped (RFC 5801).
pub fn oauthbearer_response(user: &str, token: &Secret<String>) -> Secret<String> {
    let name = user.replace('=', "=3D").replace(',', "=2C");
    encoded(format!(
        "n,a={name},\x01auth=Bearer {}\x01\x01",
        token.expose()
    ))
}

/// The decoded text of a bearer mechanism's error challenge (RFC 7628 3.2.2: JSON with
/// `status`, `schemes`, `scope`), shortened and printable for a log line; it carries no
/// secret.
pub fn bearer_challenge_text(challenge: &str) -> String {
    let decoded = LIBERAL_BASE64.decode(challenge.trim()).unwrap_or_default();
    String::from_utf8_lossy(&decoded)
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

/// `text` base64-encoded, the clear text wiped.
fn encoded(text: String) -> Secret<String> {
    let mut bytes = text.into_bytes();
    let encoded = Secret::new(STANDARD.encode(&bytes));
    bytes.fill(0);
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_responses_carry_the_user_and_token() {
        let token = Secret::new("ya29.token".to_string());
        let decode =
            |s: Secret<String>| String::from_utf8(STANDARD.decode(s.expose()).unwrap()).unwrap();
        assert_eq!(
            decode(xoauth2_response("alice@example.com", &token)),
            "user=alice@example.com\x01auth=Bearer ya29.token\x01\x01"
        );
        assert_eq!(
            decode(oauthbearer_response("a,b=c@example.com", &token)),
            "n,a=a=2Cb=3Dc@example.com,\x01auth=Bearer ya29.token\x01\x01"
        );
        let challenge = STANDARD.encode(r#"{"status":"invalid_token","schemes":"bearer"}"#);
        assert_eq!(
            bearer_challenge_text(&challenge),
            r#"{"status":"invalid_token","schemes":"bearer"}"#
        );
    }

    #[test]
    fn plain_without_authzid() {
        let creds = decode_plain(b"\0alice@example.org\0abcd efgh ijkl mnop").unwrap();
        assert_eq!(creds.authzid, None);
        assert_eq!(creds.login, "alice@example.org");
        assert_eq!(creds.password.expose(), "abcd efgh ijkl mnop");
    }

    #[test]
    fn plain_with_equal_authzid_ignoring_case() {
        let creds = decode_plain(b"Alice@Example.org\0alice@example.org\0pw").unwrap();
        assert_eq!(creds.authzid.as_deref(), Some("Alice@Example.org"));
        assert_eq!(creds.login, "alice@example.org");
        assert_eq!(creds.password.expose(), "pw");
    }

    #[test]
    fn plain_with_different_authzid_is_refused() {
        assert_eq!(
            decode_plain(b"bob\0alice\0pw"),
            Err(SaslError::AuthzidMismatch)
        );
    }

    #[test]
    fn plain_missing_nul() {
        assert_eq!(decode_plain(b"alice"), Err(SaslError::WrongFieldCount));
        assert_eq!(decode_plain(b"alice\0pw"), Err(SaslError::WrongFieldCount));
        assert_eq!(decode_plain(b""), Err(SaslError::WrongFieldCount));
    }

    #[test]
    fn plain_with_three_nuls() {
        assert_eq!(
            decode_plain(b"\0alice\0pw\0extra"),
            Err(SaslError::WrongFieldCount)
        );
    }

    #[test]
    fn plain_empty_login_or_password() {
        assert_eq!(decode_plain(b"\0alice\0"), Err(SaslError::EmptyPassword));
        assert_eq!(decode_plain(b"\0\0pw"), Err(SaslError::EmptyLogin));
    }

    #[test]
    fn plain_invalid_utf8() {
        assert_eq!(
            decode_plain(b"\0al\xffice\0pw"),
            Err(SaslError::InvalidUtf8)
        );
        assert_eq!(decode_plain(b"\0alice\0p\xc3"), Err(SaslError::InvalidUtf8));
    }

    #[test]
    fn plain_utf8_password() {
        let creds = decode_plain("\0alice\0pässwörd".as_bytes()).unwrap();
        assert_eq!(creds.password.expose(), "pässwörd");
    }

    #[test]
    fn plain_field_length_limit() {
        let mut message = b"\0alice\0".to_vec();
        message.extend(std::iter::repeat_n(b'x', MAX_FIELD_LEN));
        assert!(decode_plain(&message).is_ok());
        message.push(b'x');
        assert_eq!(decode_plain(&message), Err(SaslError::FieldTooLong));
    }

    #[test]
    fn errors_and_debug_never_show_the_payload() {
        let err = decode_plain(b"mallory\0alice\0hunter2").unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(!err.to_string().contains("mallory"));
        let creds = decode_plain(b"\0alice\0hunter2").unwrap();
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn base64_with_and_without_padding() {
        assert_eq!(decode_base64(b"AGFsaWNlAHB3").unwrap(), b"\0alice\0pw");
        assert_eq!(decode_base64(b"YQ==").unwrap(), b"a");
        assert_eq!(decode_base64(b"YQ").unwrap(), b"a");
    }

    #[test]
    fn base64_trims_trailing_whitespace() {
        assert_eq!(decode_base64(b"YQ==\r\n").unwrap(), b"a");
        assert_eq!(decode_base64(b"YQ== \t\n").unwrap(), b"a");
    }

    #[test]
    fn base64_empty_response() {
        assert_eq!(decode_base64(b"=").unwrap(), b"");
        assert_eq!(decode_base64(b"\r\n").unwrap(), b"");
    }

    #[test]
    fn base64_rejects_other_alphabets_and_garbage() {
        assert_eq!(decode_base64(b"YQ-_"), Err(SaslError::InvalidBase64));
        assert_eq!(decode_base64(b"*"), Err(SaslError::InvalidBase64));
        assert_eq!(decode_base64(b"Y Q=="), Err(SaslError::InvalidBase64));
    }

    #[test]
    fn plain_responses_for_both_login_styles() {
        let password = Secret::new("pw".to_string());
        let authzid = plain_response("alice", "proxy", &password);
        assert_eq!(
            decode_plain(&decode_base64(authzid.expose().as_bytes()).unwrap()),
            Err(SaslError::AuthzidMismatch),
            "a client may not do this; postern does it upstream"
        );
        assert_eq!(
            STANDARD.decode(authzid.expose()).unwrap(),
            b"alice\0proxy\0pw"
        );
        let master = plain_response("", "alice*proxy", &password);
        assert_eq!(
            STANDARD.decode(master.expose()).unwrap(),
            b"\0alice*proxy\0pw"
        );
        assert_eq!(format!("{master:?}"), "[redacted]");
    }
}
