//! argon2id hashing on a bounded pool of blocking threads: at most `workers` hashes run
//! at once, and an attempt that cannot get a worker within the queue timeout fails
//! temporarily instead of piling up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use prometheus::Histogram;
use tokio::sync::Semaphore;

use super::Secret;

/// Why a hash could not be computed or checked. A wrong password is not an error.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("every hash worker stayed busy for {0:?}")]
    Busy(Duration),
    #[error("stored hash is not a valid argon2 PHC string: {0}")]
    CorruptHash(argon2::password_hash::Error),
    #[error("argon2 failed: {0}")]
    Argon2(argon2::password_hash::Error),
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    #[error("hash worker panicked")]
    Worker,
}

/// The bounded argon2id pool.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    workers: Arc<Semaphore>,
    queue_timeout: Duration,
    seconds: Option<Histogram>,
}

impl PasswordHasher {
    /// `workers == 0` means one per core.
    pub fn new(
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        workers: usize,
        queue_timeout: Duration,
    ) -> Result<Self, HashError> {
        let params =
            Params::new(memory_kib, iterations, parallelism, None).map_err(HashError::Params)?;
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            workers
        };
        Ok(Self {
            params,
            workers: Arc::new(Semaphore::new(workers)),
            queue_timeout,
            seconds: None,
        })
    }

    /// Records each hash's duration in `histogram`.
    pub fn with_histogram(mut self, histogram: Histogram) -> Self {
        self.seconds = Some(histogram);
        self
    }

    /// A PHC string for `password` with the configured parameters and a fresh salt.
    pub async fn hash(&self, password: Secret<String>) -> Result<String, HashError> {
        let params = self.params.clone();
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(HashError::Argon2)
        })
        .await
    }

    /// Whether `password` matches `phc`. `Ok(false)` for a wrong password; an error for a
    /// hash that cannot be parsed. The parameters come from the PHC string itself.
    pub async fn verify(&self, password: Secret<String>, phc: String) -> Result<bool, HashError> {
        self.run(move || {
            let parsed = PasswordHash::new(&phc).map_err(HashError::CorruptHash)?;
            if parsed.hash.is_none() || parsed.salt.is_none() {
                return Err(HashError::CorruptHash(
                    argon2::password_hash::Error::PhcStringField,
                ));
            }
            match Argon2::default().verify_password(password.expose().as_bytes(), &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::Password) => Ok(false),
                Err(other) => Err(HashError::Argon2(other)),
            }
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.workers.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy(self.queue_timeout))?
            .map_err(|_| HashError::Worker)?;
        let seconds = self.seconds.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = job();
            if let Some(histogram) = seconds {
                histogram.observe(started.elapsed().as_secs_f64());
            }
            drop(permit);
            result
        })
        .await
        .map_err(|_| HashError::Worker)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap(workers: usize, queue_timeout: Duration) -> PasswordHasher {
        PasswordHasher::new(64, 1, 1, workers, queue_timeout).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_nothing_else() {
        let hasher = cheap(1, Duration::from_secs(5));
        let phc = hasher
            .hash(Secret::new("abcdefghijklmnop".into()))
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(hasher
            .verify(Secret::new("abcdefghijklmnop".into()), phc.clone())
            .await
            .unwrap());
        assert!(!hasher
            .verify(Secret::new("abcdefghijklmnoq".into()), phc)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_corrupt_hash_is_an_error_not_a_wrong_password() {
        let hasher = cheap(1, Duration::from_secs(5));
        let result = hasher
            .verify(Secret::new("x".into()), "$argon2id$garbage".into())
            .await;
        assert!(
            matches!(result, Err(HashError::CorruptHash(_))),
            "{result:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_saturated_pool_fails_fast_instead_of_queueing_forever() {
        let hasher = cheap(1, Duration::from_millis(100));
        let held = hasher.workers.clone().acquire_owned().await.unwrap();
        let result = hasher.hash(Secret::new("abcdefghijklmnop".into())).await;
        assert!(matches!(result, Err(HashError::Busy(_))), "{result:?}");
        drop(held);
        assert!(hasher
            .hash(Secret::new("abcdefghijklmnop".into()))
            .await
            .is_ok());
    }
}
