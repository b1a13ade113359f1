//! One policy for poisoned locks: a panic while a lock is held cannot leave Tessera's shared
//! state half-updated (every guarded mutation is a single assignment, an insert or a remove,
//! and no invariant spans two of them), so a poisoned lock is used as it is rather than
//! turning one panic into a failure of every later request. The one exception is the store's
//! group-commit flusher (`store::sled::flush`), which fails closed on a poisoned lock: a write
//! must never be acknowledged by a flusher whose state is in doubt.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locking that follows the policy above.
pub trait Locked<T: ?Sized> {
    type Read<'a>
    where
        Self: 'a;
    type Write<'a>
    where
        Self: 'a;
    /// Shared access (a `Mutex` has only exclusive access).
    fn read_locked(&self) -> Self::Read<'_>;
    /// Exclusive access.
    fn write_locked(&self) -> Self::Write<'_>;
}

impl<T: ?Sized> Locked<T> for Mutex<T> {
    type Read<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    type Write<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    fn read_locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn write_locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> Locked<T> for RwLock<T> {
    type Read<'a>
        = RwLockReadGuard<'a, T>
    where
        T: 'a;
    type Write<'a>
        = RwLockWriteGuard<'a, T>
    where
        T: 'a;
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_used_as_it_is() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.write_locked();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.write_locked() += 1;
        assert_eq!(*m.read_locked(), 2);
    }
}
