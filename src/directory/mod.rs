//! The organisation's directory: who a person is when they sign in to the portal, and
//! whether they are still there. [`ldap`] speaks LDAP (OpenLDAP, Active Directory);
//! [`sync`] disables the postern users whose entry is disabled or gone, and enables them
//! again when they return.

pub mod ldap;
pub mod sync;

/// A person as the directory describes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Their postern login (lowercase).
    pub login: String,
    /// The name postern logs in as upstream on their behalf.
    pub upstream_user: String,
    /// Sender addresses (lowercase, sorted, no duplicates).
    pub addresses: Vec<String>,
    /// The directory says the account is disabled.
    pub disabled: bool,
}

/// What the directory said about a sign-in or a lookup.
#[derive(Debug)]
pub enum Answer<T> {
    Yes(T),
    /// A wrong password, or nobody by that name: the same to the person signing in.
    No,
    /// The directory could not be asked (down, slow, misconfigured): try later.
    Unavailable(String),
}
