//! Time limits on futures, for every task that must not wait forever.

use std::{future::Future, time::Duration};

use glommio::timer::sleep;

/// `future`'s output, or None after `limit`.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}
