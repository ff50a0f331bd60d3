//! argon2id hashing on a bounded pool of blocking threads: at most `workers` hashes run
//! at once, and an attempt that cannot get a worker within the queue timeout fails
//! temporarily instead of piling up.
//!
//! Each running hash works in one of at most `workers` memory areas (m KiB each) that are
//! kept and reused, never freed and allocated again. Allocating 19 MiB per hash from
//! whichever blocking thread runs it made glibc keep such areas in every thread's malloc
//! arena: after a burst of logins a gateway with two workers held about 900 MiB. Reused,
//! the hashes' memory is `workers × m` for the life of the process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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
    /// Memory areas of finished hashes, for the next ones; at most one per worker.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
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
            memory: Arc::new(Mutex::new(Vec::with_capacity(workers))),
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
        self.run(move |memory| {
            let salt = SaltString::generate(&mut OsRng);
            let mut salt_bytes = [0u8; 64];
            let salt_bytes = salt
                .decode_b64(&mut salt_bytes)
                .map_err(HashError::Argon2)?;
            let hash = compute(
                Algorithm::Argon2id,
                Version::V0x13,
                params.clone(),
                password.expose().as_bytes(),
                salt_bytes,
                params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN),
                memory,
            )?;
            let phc = PasswordHash {
                algorithm: Algorithm::Argon2id.ident(),
                version: Some(Version::V0x13.into()),
                params: ParamsString::try_from(&params).map_err(HashError::Argon2)?,
                salt: Some(salt.as_salt()),
                hash: Some(hash),
            };
            Ok(phc.to_string())
        })
        .await
    }

    /// Whether `password` matches `phc`. `Ok(false)` for a wrong password; an error for a
    /// hash that cannot be parsed. The parameters come from the PHC string itself.
    pub async fn verify(&self, password: Secret<String>, phc: String) -> Result<bool, HashError> {
        self.run(move |memory| {
            let parsed = PasswordHash::new(&phc).map_err(HashError::CorruptHash)?;
            let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
                return Err(HashError::CorruptHash(
                    argon2::password_hash::Error::PhcStringField,
                ));
            };
            let algorithm =
                Algorithm::try_from(parsed.algorithm).map_err(HashError::CorruptHash)?;
            let version = match parsed.version {
                Some(v) => Version::try_from(v).map_err(|e| HashError::CorruptHash(e.into()))?,
                None => Version::default(),
            };
            let params = Params::try_from(&parsed).map_err(HashError::CorruptHash)?;
            let mut salt_bytes = [0u8; 64];
            let salt_bytes = salt
                .decode_b64(&mut salt_bytes)
                .map_err(HashError::CorruptHash)?;
            let computed = compute(
                algorithm,
                version,
                params,
                password.expose().as_bytes(),
                salt_bytes,
                expected.len(),
                memory,
            )?;
            // Output's equality is constant-time.
            Ok(computed == expected)
        })
        .await
    }

    /// Runs `job` on a blocking thread once a worker is free, with a memory area to hash
    /// in (taken from the kept ones, or new), which is kept again afterwards.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Vec<Block>) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.workers.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy(self.queue_timeout))?
            .map_err(|_| HashError::Worker)?;
        let seconds = self.seconds.clone();
        let kept = self.memory.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut memory = lock(&kept).pop().unwrap_or_default();
            let result = job(&mut memory);
            // Holding its permit, this job is one of at most `workers`: so are the areas.
            lock(&kept).push(memory);
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The argon2 output of `len` bytes, computed in `memory` (grown to the parameters' block
/// count when smaller; argon2 writes every block before it reads it, so what a previous
/// hash left there does not matter).
fn compute(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    len: usize,
    memory: &mut Vec<Block>,
) -> Result<Output, HashError> {
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    Output::init_with(len, |out| {
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut memory[..blocks])
            .map_err(argon2::password_hash::Error::from)
    })
    .map_err(HashError::Argon2)
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

    /// The kept memory areas change nothing: hashes made and checked in areas a previous
    /// hash (of another password, with other parameters) left dirty agree with argon2's
    /// own allocating path, both ways.
    #[tokio::test]
    async fn reused_memory_gives_argon2s_own_answers() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let hasher = PasswordHasher::new(256, 2, 1, 1, Duration::from_secs(5)).unwrap();
        let bigger = PasswordHasher::new(512, 1, 2, 1, Duration::from_secs(5)).unwrap();
        for round in 0..3 {
            let password = format!("abcdefghijklmno{round}");
            // Dirty the area with another password and other parameters first.
            let other = hasher
                .hash(Secret::new("zzzzzzzzzzzzzzzz".into()))
                .await
                .unwrap();
            assert!(!hasher
                .verify(Secret::new(password.clone()), other)
                .await
                .unwrap());
            let ours = hasher.hash(Secret::new(password.clone())).await.unwrap();
            let parsed = PasswordHash::new(&ours).unwrap();
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .expect("argon2 itself accepts our hash");
            let salt = SaltString::generate(&mut OsRng);
            let theirs = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(512, 1, 2, None).unwrap(),
            )
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string();
            assert!(hasher
                .verify(Secret::new(password.clone()), theirs.clone())
                .await
                .unwrap());
            assert!(bigger
                .verify(Secret::new(password.clone()), theirs.clone())
                .await
                .unwrap());
            assert!(!hasher
                .verify(Secret::new(format!("{password}x")), theirs)
                .await
                .unwrap());
        }
        assert_eq!(lock(&hasher.memory).len(), 1, "one worker, one kept area");
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
