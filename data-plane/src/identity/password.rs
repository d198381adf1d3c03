//! Password hashing: Argon2id with OWASP's recommended parameters (19 MiB of memory, two
//! passes, one lane), stored as PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) so
//! that the parameters travel with each hash: when they change, a hash made with the old
//! ones is still verified, and replaced at the next successful sign-in.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

/// Memory in KiB, passes, lanes.
pub const M_COST: u32 = 19 * 1024;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

/// Shortest password accepted at sign-up and reset (NIST SP 800-63B's minimum).
pub const MIN_LENGTH: usize = 8;
/// Longest: hashing is costly, and no passphrase needs more.
pub const MAX_LENGTH: usize = 256;

fn hasher() -> Argon2<'static> {
    // The constants are valid parameters: a bug is the only way this fails.
    let params = Params::new(M_COST, T_COST, P_COST, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password is refused at sign-up or reset.
pub fn check_strength(password: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err("the password must have at least 8 characters");
    }
    if length > MAX_LENGTH {
        return Err("the password must have at most 256 characters");
    }
    Ok(())
}

/// A new PHC string for `password` (a fresh random salt each time).
pub fn hash(password: &str) -> String {
    hasher()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        // Only the random source can fail; without one no secret can be made at all.
        .expect("the system's random source works")
}

/// What a sign-in learns from a stored hash.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Wrong,
    Right,
    /// Right, and the hash was made with other parameters: store a new one.
    RightButStale,
}

pub fn verify(password: &str, stored: &str) -> Verdict {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verdict::Wrong;
    };
    if hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_err()
    {
        return Verdict::Wrong;
    }
    let current = Params::try_from(&parsed)
        .is_ok_and(|p| p.m_cost() == M_COST && p.t_cost() == T_COST && p.p_cost() == P_COST);
    if current && parsed.algorithm.as_str() == "argon2id" {
        Verdict::Right
    } else {
        Verdict::RightButStale
    }
}

/// Spends the time of a verification when there is no account: a sign-in for an unknown
/// e-mail takes as long as one with a wrong password.
pub fn verify_nothing(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("not a password anyone has"));
    let _ = verify(password, dummy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_old_parameters_ask_for_a_rehash() {
        let stored = hash("correct horse");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert_ne!(stored, hash("correct horse"), "a fresh salt each time");
        assert_eq!(verify("correct horse", &stored), Verdict::Right);
        assert_eq!(verify("correct horsf", &stored), Verdict::Wrong);
        assert_eq!(verify("x", "not a hash"), Verdict::Wrong);
        let weaker = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse")
        .unwrap()
        .to_string();
        assert_eq!(verify("correct horse", &weaker), Verdict::RightButStale);
    }

    #[test]
    fn strength() {
        assert!(check_strength("short").is_err());
        assert!(check_strength("long enough").is_ok());
        assert!(check_strength(&"x".repeat(257)).is_err());
    }
}
